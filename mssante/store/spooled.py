"""A message kept in a file instead of memory: a big message, from DATA to its commit.

Above ``smtp.spool_threshold`` the SMTP session writes DATA to a file of ``<data_dir>/spool``
(as Postfix keeps its queue files on disk) and what comes after it reads that file a window
at a time: the header checks, the MIME analysis (:func:`~mssante.store.mime.analyse`), the
DKIM body hash, the digest and the sealing of the chunks as they are stored. The heap then
holds the header block and a window or two, whatever the message's size.

The file never has a name (``O_TMPFILE``; elsewhere a name unlinked as soon as it is
opened), is 0600 in a 0700 directory, and its descriptor is closed when the last reference
to the message goes: accepted, refused, client gone, nothing is left on disk, and a crash
leaves nothing either. It is closed by reference count, never explicitly, because the
writer thread may still seal from it after the session that received it has gone away: a
descriptor closed under it could be reused by another file and sealed in its place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

SPOOL_DIR = "spool"
# Reads of the file: a heap allocation (under the 256 KiB ``mmap`` threshold of
# :mod:`mssante.memory`), reused from one read to the next; 320 reads per 20 MiB pass.
WINDOW = 64 * 1024
_PREFIX = "spool-"
_STALE_SECONDS = 60.0  # a named spool file lives for microseconds (see open_unlinked)


def spool_dir(data_dir: Path) -> Path:
    """``<data_dir>/spool``, created 0700, left-overs of a crash removed (:func:`sweep`)."""
    directory = data_dir / SPOOL_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    sweep(directory)
    return directory


def sweep(directory: Path) -> None:
    """Remove named spool files older than a minute: only a crash between the creation and
    the unlinking of one (where ``O_TMPFILE`` is missing) leaves any."""
    limit = time.time() - _STALE_SECONDS
    for path in directory.glob(_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < limit:
                path.unlink()


def open_unlinked(directory: Path) -> int:
    """A new empty file in ``directory``, readable and writable by this process only, with
    no name: it disappears with its last descriptor."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(directory, os.O_RDWR | os.O_CLOEXEC | tmpfile, 0o600)
        except OSError as exc:  # a file system without O_TMPFILE
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, name = tempfile.mkstemp(prefix=_PREFIX, dir=directory)  # 0600
    os.unlink(name)
    return fd


class SpooledMessage:
    """The message ``head + file[body_at:]``: ``head`` (in memory) is what is written on top
    and the header block once DATA is over, the rest is read from the file when asked.

    Offers what the readers of a message buffer use (``len``, slices, ``find``, ``rfind``,
    ``count``, ``startswith``, with the semantics of ``bytes``), each scanning windows of
    :data:`WINDOW` bytes, so that they read it in place as they read a ``bytearray``.
    """

    def __init__(self, directory: Path) -> None:
        fd = open_unlinked(directory)
        self._fd = fd
        self._closing = weakref.finalize(self, os.close, fd)
        self.head = bytearray()
        self.body_at = 0
        self.file_size = 0

    def close(self) -> None:
        """Close the file now, for its owner alone (the session whose DATA is refused or cut
        short): otherwise it closes with the last reference."""
        self._closing()

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the end of the file (received lines)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self.file_size)
            self.file_size += written
            view = view[written:]

    def hold_header(self) -> None:
        """Once DATA is over: move the header block (with the empty line after it) from the
        file into ``head``; a message without an empty line is all header, and held whole."""
        assert not self.head and not self.body_at
        end = self.find(b"\r\n\r\n")
        stop = len(self) if end == -1 else end + 4
        self.head = bytearray(self.read(0, stop))
        self.body_at = stop

    def __len__(self) -> int:
        return len(self.head) + self.file_size - self.body_at

    def read(self, start: int, stop: int) -> bytes:
        """The bytes ``[start, stop)`` of the message."""
        stop = min(stop, len(self))
        if start >= stop:
            return b""
        held = len(self.head)
        if stop <= held:
            return bytes(self.head[start:stop])
        at = max(start, held)
        tail = self._pread(self.body_at + at - held, stop - at)
        return bytes(self.head[start:held]) + tail if start < held else tail

    def _pread(self, offset: int, size: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        while len(data) < size:  # a regular file reads short only at its end
            more = os.pread(self._fd, size - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, "spool file shorter than the message")
            data += more
        return data

    def pieces(self, first: int = WINDOW, size: int = WINDOW) -> Iterator[bytes]:
        """The whole message in consecutive reads: ``first`` bytes, then ``size`` at a time."""
        pos, step, total = 0, first, len(self)
        while pos < total:
            stop = min(pos + step, total)
            yield self.read(pos, stop)
            pos, step = stop, size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous slices of a spooled message")
        return self.read(start, stop)

    def __bytes__(self) -> bytes:
        return self.read(0, len(self))

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(len(self))
        pos = start
        while end - pos >= len(sub):
            stop = min(pos + WINDOW, end)
            found = self.read(pos, stop).find(sub)
            if found != -1:
                return pos + found
            if stop == end:
                break
            pos = stop - len(sub) + 1  # a match across the windows' edge is in the next one
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(len(self))
        stop = end
        while stop - start >= len(sub):
            lo = max(start, stop - WINDOW)
            found = self.read(lo, stop).rfind(sub)
            if found != -1:
                return lo + found
            if lo == start:
                break
            stop = lo + len(sub) - 1
        return -1

    def count(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(len(self))
        if len(sub) == 1:
            return sum(self.read(pos, min(pos + WINDOW, end)).count(sub) for pos in range(start, end, WINDOW))
        found, pos = 0, start
        while (at := self.find(sub, pos, end)) != -1:
            found, pos = found + 1, at + max(len(sub), 1)
        return found

    def startswith(self, prefix: bytes, start: int = 0) -> bool:
        start = slice(start, None).indices(len(self))[0]
        return self.read(start, start + len(prefix)) == prefix


Raw = bytes | bytearray | SpooledMessage
"""A message as the store and the checks read it: in memory, or spooled."""
