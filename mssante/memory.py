"""Memory given back: after a large message, after sessions close; small per-connection buffers.

glibc's allocator, told to give big buffers back. By default it serves a request of 128 KiB or
more with its own ``mmap`` (returned to the system at ``free``), but raises that threshold to
the size of each such block freed, up to 32 MiB: after the first 20 MiB message the next ones
come from the heaps, and a heap returns only what lies above its last block in use. Worker
threads each get an arena of their own (up to 8 per core), each keeping its free space. Fixing
the threshold keeps message buffers in ``mmap`` for good; few arenas and a ``malloc_trim``
after a large message (:func:`give_back`) return the smaller pieces (64 KiB chunks sealed,
read, copied) the threads left behind.

Sessions (issue 20: after 1,000 IMAP sessions logged out, the process kept 6.5× the memory it
had before them): a closed session is garbage of reference cycles, which the cyclic collector
of an idle server seldom visits, and its freed memory stays in glibc's heaps.
:func:`trim_soon` collects and trims once a burst of closes is over (a thousand logouts cost
one trim). And asyncio's TLS transport gives every connection a 256 KiB read buffer,
zero-filled (so resident) from the start; a TLS record carries at most 16 KiB, so
:func:`tune` makes it 16 KiB (a bulk upload only makes more, smaller reads), and one buffer per
event loop thread, shared by all its connections: the buffer only carries the bytes of one
``recv_into`` to that connection's TLS input (a copy, in the same callback), so no connection
needs its own between two reads. An idle TLS session then holds no read buffer at all (it was
16 KiB of the 47 KiB an idle IMAP session cost).

What the trim cannot give back (measured after 1,000 TLS sessions on a 20,000-message INBOX
logged out: 1.08-1.12× the RSS before them; 1.075-1.09× the RSS once one session had opened
the INBOX, whose first SELECT leaves 1-5 MiB) is not Python objects, which are back to their
count and bytes from before, but the high-water mark of CPython's small-object allocator.
Objects of 512 bytes or less (a session holds some 12 KB of them: asyncio's streams,
transports, futures and handles, its own sets and tables) come from 1 MiB arenas, and an
arena goes back to the system only once all of its pools are empty. The arenas a burst adds
(12 here, their empty pools 10.7 MB resident) keep from a handful to a few hundred objects
each, made during the burst and outliving it (metric values, dead cursor weakrefs kept by
sqlite3's connections, statements of pool connections opened mid-burst, timer handles), so
they stay mapped; the next burst reuses them (a second 1,000 sessions: +1 MiB).
``PYTHONMALLOC=malloc`` would let the trim return that memory too (1.06×), at up to 10-15 %
more server CPU for logins and APPENDs and 40-47 % for FETCH-heavy sessions: not done.

``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment win: nothing is changed
then. On another C library the allocator calls do nothing.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from typing import Any

log = logging.getLogger("mssante.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
# Free space at the top of the main heap kept for reuse before it is returned on its own (the
# trim after a large message returns it anyway): below a few MiB, ordinary traffic would give
# pages back and fault them in again all the time.
TRIM_THRESHOLD = 4 * 1024 * 1024
ARENA_MAX = 2
# A message at least this large is followed by a trim (well above ordinary mail: a trim walks
# every arena, some 100 µs).
TRIM_AFTER = 1024 * 1024
TLS_READ_BUFFER = 16 * 1024
TRIM_DELAY = 1.0  # seconds without a close before memory is given back...
TRIM_MAX_WAIT = 30.0  # ...or this long into a burst of closes that does not end

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            return None
        _libc = libc
    return _libc


class _ReadBuffer(threading.local):
    """The TLS read buffer of the event loop running in this thread."""

    def __init__(self) -> None:
        self.buffer = bytearray(TLS_READ_BUFFER)
        self.view = memoryview(self.buffer)


_read_buffer = _ReadBuffer()
_ssl_protocol_init = asyncio.sslproto.SSLProtocol.__init__


def _ssl_protocol_sharing_the_read_buffer(self: Any, *args: Any, **kwargs: Any) -> None:
    """asyncio's SSLProtocol, reading into its thread's buffer: ``get_buffer`` hands it to the
    socket's ``recv_into`` and ``buffer_updated`` copies the bytes received from it into the
    connection's TLS input, one right after the other in one callback of the loop
    (``_read_ready__get_buffer``), which is never entered for two connections at once."""
    _ssl_protocol_init(self, *args, **kwargs)
    self._ssl_buffer, self._ssl_buffer_view = _read_buffer.buffer, _read_buffer.view


def tune() -> None:
    """At server start, before the worker threads exist (idempotent)."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    asyncio.sslproto.SSLProtocol.__init__ = _ssl_protocol_sharing_the_read_buffer  # type: ignore[method-assign]
    libc = _glibc()
    if libc is None:
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # also ends the dynamic raising
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, ARENA_MAX)


def give_back(size: int) -> None:
    """After a message of ``size`` bytes is done with: free heap pages go back to the system."""
    if size >= TRIM_AFTER:
        trim_now()


def trim_now() -> int:
    """Give the heap's free pages back to the system (``malloc_trim``); 1 if some memory was
    released. ctypes drops the GIL for the call: it may run in a worker thread."""
    libc = _glibc()
    return int(libc.malloc_trim(0)) if libc is not None else 0


class _Burst:
    """Closes in progress on one event loop: first and last close, and the pending trim."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.first = self.last = loop.time()
        self.timer = loop.call_later(TRIM_DELAY, _due, loop)


_bursts: dict[asyncio.AbstractEventLoop, _Burst] = {}


def trim_soon() -> None:
    """Give memory back once the burst of closes in progress is over: TRIM_DELAY seconds
    without a close (or TRIM_MAX_WAIT into a burst that does not end). A full collection
    first (on the event loop, once per burst), then the trim (in a worker thread: on a large
    heap it takes milliseconds)."""
    if _glibc() is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for closed in [other for other in _bursts if other.is_closed()]:
        del _bursts[closed]
    burst = _bursts.get(loop)
    if burst is None:
        _bursts[loop] = _Burst(loop)
    else:
        burst.last = loop.time()


def _due(loop: asyncio.AbstractEventLoop) -> None:
    burst = _bursts.get(loop)
    if burst is None:
        return
    now = loop.time()
    if now - burst.last < TRIM_DELAY and now - burst.first < TRIM_MAX_WAIT:
        burst.timer = loop.call_at(burst.last + TRIM_DELAY, _due, loop)
        return
    del _bursts[loop]
    gc.collect()
    loop.run_in_executor(None, trim_now)
