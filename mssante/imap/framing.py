"""Sans-I/O framing of the IMAP client stream into whole commands (RFC 3501 §2.2, RFC 7888).

A command is one or more lines, each but the last ending with a literal announcement
``{n}`` (synchronising: the server must answer ``+`` before the client sends the bytes) or
``{n+}`` (LITERAL+: the bytes follow at once). The framer only finds where a command ends;
:mod:`mssante.imap.parser` reads its grammar. Memory stays bounded whatever the client sends:

* a line longer than ``max_line`` is dropped as it arrives and the command answered ``BAD``;
* a literal larger than the limit for its command is refused *before* it is read: a
  synchronising one is answered at once (no ``+`` is sent, so the client never sends it), a
  non-synchronising one is counted off and discarded, then answered;
* a whole command is bounded by ``max_command`` bytes;
* before login (``preauth_literal`` set) only LOGIN and ID take literals, of at most that size,
  and a whole command is bounded by a line and two such literals; a non-synchronising literal
  beyond it ends the connection (RFC 7888 §4: the client sends it whatever the answer);
* after login, an APPEND literal larger than ``spool_threshold`` is written to a spool file
  (:class:`~mssante.store.spooled.SpooledMessage`) as it arrives, not to the command's buffer
  (``CommandReady.spooled``): a big message is not held in memory at all.

The connection layer feeds bytes with :meth:`Framer.feed` and drains :meth:`Framer.next_event`;
for IDLE's ``DONE`` and SASL exchanges it reads single lines with :meth:`Framer.next_line`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from mssante.store.spooled import SpooledMessage

_LITERAL_AT_END = re.compile(rb"~?\{([0-9]+)(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+]+")
_COMMAND_NAME = re.compile(rb"[ ]+(?:UID[ ]+)?([A-Za-z]+)")
_MAX_NUMBER = 4294967295  # number = 32-bit unsigned (RFC 3501 §9)
_NO_ROOM = "NO [SERVERBUG] No room to receive the message, try again later"  # a full disk
_PREAUTH_LITERALS = frozenset({"LOGIN", "ID"})  # the commands before login whose grammar has literals


@dataclass(frozen=True)
class CommandReady:
    """A complete command: its bytes with literals inline, the final CRLF removed; assembled
    in one buffer as its bytes arrive, so an APPEND's message is held once (never joined).
    A spooled literal is not inline: ``spooled`` maps the offset right after its announcement
    (``{n}`` and CRLF, followed directly by the rest of the command) to its file."""

    data: bytearray
    spooled: dict[int, SpooledMessage] = field(default_factory=dict)


@dataclass(frozen=True)
class NeedContinuation:
    """The client announced a synchronising literal that fits: send ``+ ...`` now."""


@dataclass(frozen=True)
class Rejected:
    """The command was refused by the framer; answer ``<tag> <response>`` (tag may be ``*``),
    then end the connection when ``close`` (the client is sending what was refused)."""

    tag: str
    response: str
    close: bool = False


FramerEvent = CommandReady | NeedContinuation | Rejected


def command_tag(first_line: bytes | bytearray) -> str:
    """The tag of a command line, or ``*`` when it has none worth echoing."""
    match = _TAG.match(first_line)
    if not match or len(match.group()) > 64:
        return "*"
    return match.group().decode("ascii", "replace")


def command_name(first_line: bytes) -> str:
    """The command word (after an optional ``UID``), upper-cased, for choosing the literal limit."""
    tag = _TAG.match(first_line)
    if not tag:
        return ""
    match = _COMMAND_NAME.match(first_line, tag.end())
    return match.group(1).decode("ascii").upper() if match else ""


class Framer:
    """Splits the byte stream into commands; see the module docstring for the bounds."""

    def __init__(
        self,
        *,
        max_line: int = 64 * 1024,
        max_literal: int = 64 * 1024,
        max_append: int = 25 * 1024 * 1024,
        max_command: int | None = None,
        literal_limit: Callable[[str], int] | None = None,
        preauth_literal: int | None = None,
        spool: Callable[[], SpooledMessage] | None = None,
        spool_threshold: int = 0,
    ) -> None:
        self.max_line = max_line
        self.spool = spool if spool_threshold > 0 else None  # a new spool file
        self.spool_threshold = spool_threshold
        self.preauth_literal = preauth_literal
        self.max_literal = max_literal
        self.max_append = max_append
        self.max_command = max_command if max_command is not None else max_append + 2 * max_line
        self._limit = literal_limit or self._default_limit
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for LF in _buf
        self._reset()

    def _default_limit(self, name: str) -> int:
        return self.max_append if name == "APPEND" else self.max_literal

    def logged_in(self) -> None:
        """The session authenticated: the full limits apply from the next command on."""
        self.preauth_literal = None

    def _literal_bound(self, name: str) -> int:
        if self.preauth_literal is None:
            return self._limit(name)
        return self.preauth_literal if name in _PREAUTH_LITERALS else 0

    def _command_bound(self) -> int:
        if self.preauth_literal is None:
            return self.max_command
        return min(self.max_command, self.max_line + 2 * self.preauth_literal)

    def _too_big(self, name: str) -> str:
        if self.preauth_literal is not None:
            if name not in _PREAUTH_LITERALS:
                return "BAD No literal is accepted for this command before login"
            return f"BAD Literal too large before login (at most {self.preauth_literal} bytes)"
        return "NO [TOOBIG] Message too large" if name == "APPEND" else "BAD Literal too large"

    def _reset(self) -> None:
        self._drop_data()
        self._first: bytes | None = None
        self._literal_left = 0
        self._discard: str | None = None  # the BAD/NO text to send once the command ends
        self._long_line = False  # dropping the rest of an over-long line

    def close(self) -> None:
        """The connection is over: a command cut short closes its spool files now."""
        for spooled in self._spooled.values():
            spooled.close()
        self._reset()

    def _drop_data(self) -> None:
        """Let go of the command assembled so far (its spool files with it)."""
        self._data = bytearray()
        self._size = 0
        self._spooled: dict[int, SpooledMessage] = {}
        self._into: SpooledMessage | None = None  # the literal being read goes to this file

    @property
    def buffered(self) -> int:
        """Bytes held for the command being assembled (for tests of the memory bound)."""
        return len(self._buf) + len(self._data)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def _take_line(self) -> bytes | None:
        idx = self._buf.find(b"\n", self._scan)
        if idx == -1:
            self._scan = len(self._buf)
            return None
        line = bytes(self._buf[: idx + 1])
        del self._buf[: idx + 1]
        self._scan = 0
        return line

    def next_line(self) -> bytes | None:
        """A single raw line without its line break (IDLE ``DONE``, SASL responses), or None.

        A line longer than ``max_line`` raises :class:`LineTooLong`; its bytes are dropped.
        """
        line = self._take_line()
        if line is None:
            if len(self._buf) > self.max_line:
                self._buf.clear()
                self._scan = 0
                raise LineTooLong()
            return None
        if len(line) > self.max_line + 2:
            raise LineTooLong()
        return line.rstrip(b"\n").removesuffix(b"\r")

    def next_event(self) -> FramerEvent | None:
        """The next framing event, or None when more bytes are needed."""
        while True:
            if self._literal_left:
                take = min(len(self._buf), self._literal_left)
                if not take:
                    return None
                if self._discard is None:
                    self._keep_literal(take)
                del self._buf[:take]
                self._scan = 0
                self._literal_left -= take
                if self._literal_left:
                    return None
                self._into = None
                continue
            line = self._take_line()
            if line is None:
                if len(self._buf) > self.max_line:
                    self._start_long_line()
                return None
            if self._long_line:
                self._long_line = False
                event = self._line_end(self._keep_tail(line), complete_line=False)
            else:
                event = self._line_end(line, complete_line=True)
            if event is not None:
                return event

    def _keep_literal(self, take: int) -> None:
        """The next ``take`` bytes of a literal into the command, or into its spool file; a
        file that cannot take them (a full disk) refuses the command once it has arrived."""
        if self._into is None:
            self._data += memoryview(self._buf)[:take]
        else:
            try:
                self._into.append(memoryview(self._buf)[:take])
            except OSError:
                self._drop_data()
                self._discard = _NO_ROOM
                return
        self._size += take

    def _keep_tail(self, line: bytes) -> bytes:
        # Only the end of an over-long line matters: it may still announce a literal.
        return line[-32:]

    def _start_long_line(self) -> None:
        if self._first is None:
            self._first = bytes(self._buf[:256])
        if self._discard is None:
            self._discard = "BAD Command line too long"
            self._drop_data()
        self._long_line = True
        tail = bytes(self._buf[-32:])
        self._buf.clear()
        self._buf += tail
        self._scan = 0

    def _line_end(self, line: bytes, *, complete_line: bool) -> FramerEvent | None:
        if self._first is None:
            self._first = line
        tag = command_tag(self._first)
        if complete_line and self._discard is None and len(line) > self.max_line + 2:
            self._discard = "BAD Command line too long"
        match = _LITERAL_AT_END.search(line)
        if match is None:
            return self._finish(line, tag)
        digits, plus = match.group(1), match.group(2) == b"+"
        size = int(digits) if len(digits) <= 10 else _MAX_NUMBER + 1
        name = command_name(self._first)
        if self._discard is not None:
            if not plus:
                # Never invite a literal we would throw away: end the command here.
                return self._finish(b"", tag)
            if self.preauth_literal is not None and size > self.preauth_literal:
                response = self._discard
                self._reset()
                return Rejected(tag, response, close=True)
            self._literal_left = size
            return None
        limit = min(self._literal_bound(name), _MAX_NUMBER)
        if size > limit or self._size + len(line) + size > self._command_bound():
            too_big = self._too_big(name)
            if not plus:
                self._reset()
                return Rejected(tag, too_big)
            if self.preauth_literal is not None:
                self._reset()
                return Rejected(tag, too_big, close=True)
            self._discard = too_big
            self._drop_data()
            self._literal_left = size
            return None
        self._append(line[: match.start()] + line[match.start() : match.end()].rstrip(b"\r\n") + b"\r\n")
        self._literal_left = size
        if name == "APPEND" and self.spool is not None and size > self.spool_threshold:
            try:
                self._into = self._spooled[len(self._data)] = self.spool()
            except OSError:
                if not plus:
                    self._reset()
                    return Rejected(tag, _NO_ROOM)
                self._drop_data()
                self._discard = _NO_ROOM
        return None if plus else NeedContinuation()

    def _append(self, chunk: bytes) -> None:
        self._data += chunk
        self._size += len(chunk)

    def _finish(self, line: bytes, tag: str) -> FramerEvent:
        if self._discard is not None:
            response = self._discard
            self._reset()
            return Rejected(tag, response)
        body = line.rstrip(b"\n").removesuffix(b"\r")
        if self._size + len(body) > self._command_bound():
            self._reset()
            return Rejected(tag, "BAD Command too long")
        self._data += body
        data, spooled = self._data, self._spooled
        self._reset()
        return CommandReady(data, spooled)


class LineTooLong(ValueError):
    """A single-line read (IDLE, SASL) exceeded the line bound."""
