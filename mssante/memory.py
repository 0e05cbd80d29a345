"""glibc's allocator, told to give big buffers back: memory after a large message returns to
what it was before.

By default glibc serves a request of 128 KiB or more with its own ``mmap`` (returned to the
system at ``free``), but raises that threshold to the size of each such block freed, up to
32 MiB: after the first 20 MiB message the next ones come from the heaps, and a heap returns
only what lies above its last block in use. Worker threads each get an arena of their own
(up to 8 per core), each keeping its free space. Fixing the threshold keeps message buffers
in ``mmap`` for good; few arenas and a ``malloc_trim`` after a large message return the
smaller pieces (64 KiB chunks sealed, read, copied) the threads left behind.

``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment win: nothing is changed
then. On another C library these calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

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


def tune() -> None:
    """At server start, before the worker threads exist."""
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
    if size >= TRIM_AFTER and (libc := _glibc()) is not None:
        libc.malloc_trim(0)
