"""Keeping the server's memory proportional to its live connections, and giving it back.

Issue 20: after 1,000 IMAP sessions logged out, the process kept 6.5× the memory it had before
them. Three causes, three remedies, applied by :func:`tune_process` at start-up:

- a closed session is garbage of reference cycles, which the cyclic collector of an idle
  server seldom visits, and glibc keeps freed memory in its heaps until told to give it back
  (and gives each thread that allocates an arena of its own, up to 8 per core):
  :func:`trim_soon` collects and calls ``malloc_trim(0)`` once the connections have closed
  (debounced, so a thousand logouts cost one trim), and the number of arenas is capped
  (``M_ARENA_MAX``) before any thread starts;
- asyncio's TLS transport gives every connection a 256 KiB read buffer, zero-filled (so
  resident) from the start; a TLS record carries at most 16 KiB, so a 16 KiB buffer costs an
  idle connection a sixteenth of that and a bulk upload only more, smaller reads.

Without glibc (musl, macOS) the trims are skipped; nothing else depends on them.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

TLS_READ_BUFFER = 16 * 1024
MALLOC_ARENAS = 2
TRIM_DELAY = 1.0  # seconds without a close before memory is given back...
TRIM_MAX_WAIT = 30.0  # ...or this long into a burst of closes that does not end
_M_ARENA_MAX = -8  # mallopt parameter number (glibc malloc.h)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class _Burst:
    """Closes in progress on one event loop: first and last close, and the pending trim."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.first = self.last = loop.time()
        self.timer = loop.call_later(TRIM_DELAY, _due, loop)


_bursts: dict[asyncio.AbstractEventLoop, _Burst] = {}


def tune_process() -> None:
    """Process-wide settings, before the event loop and any thread start."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def trim_now() -> int:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``); 1 if some
    memory was released. ctypes drops the GIL for the call: it may run in a worker thread."""
    return int(_LIBC.malloc_trim(0)) if _LIBC is not None else 0


def trim_soon() -> None:
    """Give memory back once the burst of closes in progress is over: TRIM_DELAY seconds
    without a close (or TRIM_MAX_WAIT into a burst that does not end).

    A session and its connection refer to each other, so they are freed by the cyclic garbage
    collector, which an idle server seldom runs: a full collection comes first (on the event
    loop, once per burst), then the trim (in a worker thread, it takes milliseconds)."""
    if _LIBC is None:
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
