"""The message of a DATA command, received into one buffer that is also what the store seals.

The buffer starts with free room (:data:`HEADROOM`) for the fields this server writes on top
(``Received:``, ``Authentication-Results:``, ``Sender:``, ``Message-ID:``): they are written
into it and the room left in front is given up without moving the message (CPython advances
a ``bytearray``'s start when its head is deleted), so a 20 MiB message exists once, from its
first line read to its commit, and is never joined to its trace fields by a copy.
"""

from __future__ import annotations

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
        wanted = name.lower().encode() + b":"
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n", self.start)
        end = len(buffer) if end == -1 else end + 2
        pos = self.start
        while pos < end:
            line_end = _next_line(buffer, pos, end)
            if buffer[pos : pos + len(wanted)].lower() != wanted:
                pos = line_end
                continue
            while line_end < end and buffer[line_end] in (0x20, 0x09):  # continuation lines
                line_end = _next_line(buffer, line_end, end)
            size = line_end - pos
            buffer[self.start + size : line_end] = buffer[self.start : pos]
            self.start += size
            pos = line_end

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


def _next_line(buffer: bytearray, pos: int, end: int) -> int:
    found = buffer.find(b"\r\n", pos, end)
    return end if found == -1 else found + 2
