"""The message of a DATA command, received into one buffer that is also what the store seals.

The buffer starts with free room (:data:`HEADROOM`) for the fields this server writes on top
(``Received:``, ``Authentication-Results:``, ``Sender:``, ``Message-ID:``): they are written
into it and the room left in front is given up without moving the message (CPython advances
a ``bytearray``'s start when its head is deleted), so a 20 MiB message exists once, from its
first line read to its commit, and is never joined to its trace fields by a copy.

A message that grows past ``smtp.spool_threshold`` moves to a file (:class:`Spooled`, a
:class:`~mssante.store.spooled.SpooledMessage`): what was received so far is written out and
the buffer let go, the lines that follow go to the file, and only the header block comes
back into memory once DATA is over. Small messages, nearly all mail, never touch the disk.
"""

from __future__ import annotations

from pathlib import Path

from mssante.store.spooled import SpooledMessage

HEADROOM = 8 * 1024


class Received:
    """DATA content as received: ``buffer[start:]``, lines ended by CRLF and dots unstuffed."""

    def __init__(self) -> None:
        self.buffer = bytearray(HEADROOM)
        self.start = HEADROOM

    def __len__(self) -> int:
        return len(self.buffer) - self.start

    def extend(self, lines: bytes | memoryview) -> None:
        self.buffer += lines

    def drop_fields(self, name: str) -> None:
        """Remove the header fields called ``name`` (with their continuation lines): the header
        lines before each one move down by its length, the body stays where it is."""
        self.start = _drop_fields(self.buffer, self.start, name)

    def to_file(self, directory: Path) -> Spooled:
        """The content so far written to a new spool file, which receives the rest; this
        object is spent (its buffer let go)."""
        spooled = Spooled(directory)
        spooled.extend(memoryview(self.buffer)[self.start :])
        self.buffer = bytearray()
        return spooled

    def received(self) -> None:
        """DATA is over (nothing to do: the message is all in memory)."""

    def close(self) -> None:
        """The content is dropped (refused, client gone)."""
        self.buffer = bytearray()

    def finish(self, prefix: bytes) -> bytearray:
        """The message with ``prefix`` on top, as one ``bytearray``; this object is spent."""
        buffer = self.buffer
        if len(prefix) <= self.start:
            at = self.start - len(prefix)
            buffer[at : self.start] = prefix
            del buffer[:at]
        else:  # more trace than room (never with our fields): one copy
            del buffer[: self.start]
            buffer[0:0] = prefix
        self.buffer = bytearray()
        return buffer


class Spooled:
    """DATA content received into a spool file, with the interface of :class:`Received`;
    ``buffer`` is the message itself, read in place by windows (``start`` is 0)."""

    start = 0

    def __init__(self, directory: Path) -> None:
        self.buffer = SpooledMessage(directory)

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, lines: bytes | memoryview) -> None:
        self.buffer.append(lines)

    def received(self) -> None:
        """DATA is over: the header block comes into memory, where the handlers edit it."""
        self.buffer.hold_header()

    def close(self) -> None:
        """The content is dropped (refused, client gone) before any handler saw it: the file
        is closed at once."""
        self.buffer.close()

    def drop_fields(self, name: str) -> None:
        head = self.buffer.head
        del head[: _drop_fields(head, 0, name)]

    def finish(self, prefix: bytes) -> SpooledMessage:
        """The message with ``prefix`` on top (in front of the header block in memory)."""
        self.buffer.head[0:0] = prefix
        return self.buffer


def _drop_fields(buffer: bytearray, start: int, name: str) -> int:
    """Remove the header fields called ``name`` of the message at ``buffer[start:]`` by moving
    the header lines before each one down by its length; returns the message's new start."""
    wanted = name.lower().encode() + b":"
    end = buffer.find(b"\r\n\r\n", start)
    end = len(buffer) if end == -1 else end + 2
    pos = start
    while pos < end:
        line_end = _next_line(buffer, pos, end)
        if buffer[pos : pos + len(wanted)].lower() != wanted:
            pos = line_end
            continue
        while line_end < end and buffer[line_end] in (0x20, 0x09):  # continuation lines
            line_end = _next_line(buffer, line_end, end)
        size = line_end - pos
        buffer[start + size : line_end] = buffer[start:pos]
        start += size
        pos = line_end
    return start


def _next_line(buffer: bytearray, pos: int, end: int) -> int:
    found = buffer.find(b"\r\n", pos, end)
    return end if found == -1 else found + 2
