"""The IMAP grammar's tokens (RFC 3501 §9, RFC 9051): atoms, strings and literals, numbers,
mailbox names, sequence sets, flags and dates.

:class:`Reader` is a cursor over one framed command with one method per token production;
:mod:`mssante.imap.parser` builds the commands, their FETCH items and SEARCH keys from them.
It is strict where laxness would make two readings possible and bounded: a number fits in 32
bits, parenthesised lists nest at most ``max_depth`` deep, and a literal is taken where the
framer left it (inline, or spooled to a file for a large APPEND).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

from mssante.imap import mutf7
from mssante.imap.commands.values import SequenceSet
from mssante.store.spooled import Raw, SpooledMessage

MAX_DEPTH = 16
_MAX_NUMBER = 4294967295

# atom-specials (RFC 3501 §9): ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\\]\x80-\xff]+")
_ASTRING_CHARS = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\\x80-\xff]+")  # atom + "]"
_LIST_CHARS = re.compile(rb"[^\x00-\x20\x7f(){\"\\\x80-\xff]+")  # atom + % * ]
_LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}\r\n")
LITERAL8 = re.compile(rb"~\{([0-9]+)(\+?)\}\r\n")
# An APPEND message at least this large is handed over in the command's buffer (see message_literal).
TAKE_LITERAL = 256 * 1024
_NUMBER = re.compile(rb"[0-9]+")
_DAY = re.compile(rb"[0-9]{1,2}")
_MONTH = re.compile(rb"[A-Za-z]{3}")
_YEAR = re.compile(rb"[0-9]{4}")
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}

SYSTEM_FLAGS = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}


class ParseError(ValueError):
    """The command is syntactically wrong: answer ``<tag> BAD <message>``."""

    def __init__(self, message: str, tag: str = "*", *, status: str = "BAD", code: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.status = status  # "NO" for the few refusals the grammar itself decides (BADCHARSET)
        self.code = code  # response code, e.g. "BADCHARSET (US-ASCII UTF-8)"

    def response(self) -> str:
        """The tagged response line without its CRLF."""
        code = f"[{self.code}] " if self.code else ""
        return f"{self.tag} {self.status} {code}{self}"


class Reader:
    """A cursor over the command bytes, with one method per grammar production."""

    def __init__(
        self,
        data: bytes | bytearray,
        *,
        utf8: bool,
        max_depth: int,
        binary: bool = False,
        spooled: Mapping[int, SpooledMessage] | None = None,
    ) -> None:
        self.data = data
        self.spooled = spooled or {}  # literals not inline, by the offset where they would be
        self.pos = 0
        self.utf8 = utf8
        self.binary = binary  # ``~{n}`` (literal8, RFC 3516) is read only where BINARY allows it
        self.literal8_seen = False
        self.max_depth = max_depth
        self.search_keys = 0  # SEARCH keys read so far in this command (the parser bounds them)

    # -- low level --------------------------------------------------------------------------
    def error(self, message: str) -> ParseError:
        return ParseError(message)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self, n: int = 1) -> bytes:
        return bytes(self.data[self.pos : self.pos + n])

    def expect(self, token: bytes, what: str | None = None) -> None:
        if self.data[self.pos : self.pos + len(token)] != token:
            raise self.error(f"Expected {what or token.decode()!r}")
        self.pos += len(token)

    def sp(self) -> None:
        self.expect(b" ", "space")

    def accept(self, token: bytes) -> bool:
        if self.data[self.pos : self.pos + len(token)] == token:
            self.pos += len(token)
            return True
        return False

    def accept_word(self, word: bytes) -> bool:
        """Case-insensitive keyword followed by a delimiter (so ``ALLX`` is not ``ALL``)."""
        end = self.pos + len(word)
        if self.data[self.pos : end].upper() != word:
            return False
        nxt = self.data[end : end + 1]
        if nxt and _ATOM.match(nxt):
            return False
        self.pos = end
        return True

    def end(self) -> None:
        if not self.at_end():
            raise self.error("Unexpected characters at end of command")

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        found = pattern.match(self.data, self.pos)
        if not found or not found.group():
            raise self.error(f"Expected {what}")
        self.pos = found.end()
        return bytes(found.group())

    # -- basic tokens ----------------------------------------------------------------------
    def atom(self) -> str:
        return self.match(_ATOM, "atom").decode("ascii")

    def number(self, *, nonzero: bool = False) -> int:
        digits = self.match(_NUMBER, "number")
        if nonzero and digits.startswith(b"0"):
            raise self.error("Expected a non-zero number")
        if len(digits) > 10 or int(digits) > _MAX_NUMBER:
            raise self.error("Number out of range")
        return int(digits)

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.error("Unterminated quoted string")
            char = data[self.pos]
            self.pos += 1
            if char == 0x22:
                return bytes(out)
            if char == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in b'"\\':
                    raise self.error("Invalid escape in quoted string")
                out.append(data[self.pos])
                self.pos += 1
            elif char in (0x0D, 0x0A, 0x00):  # 8-bit is UTF-8 as in RFC 9051; names still check
                raise self.error("Invalid character in quoted string")
            else:
                out.append(char)

    def literal(self, *, literal8: bool = False) -> bytes:
        start, self.pos = self._literal_span(literal8)
        if start in self.spooled:
            return bytes(self.spooled[start])
        return bytes(self.data[start : self.pos])

    def message_literal(self, *, literal8: bool = False) -> Raw:
        """An APPEND's message: its spool file when the framer wrote it to one; when it ends
        the command, the command's own buffer, handed over with the bytes before the message
        dropped (no copy of a message of 20 MiB)."""
        start, end = self._literal_span(literal8)
        if start in self.spooled:
            self.pos = end
            return self.spooled[start]
        if isinstance(self.data, bytearray) and end == len(self.data) and end - start >= TAKE_LITERAL:
            taken = self.data
            del taken[:start]  # CPython moves the buffer's start: nothing is copied
            self.data, self.pos = b"", 0
            return taken
        self.pos = end
        return bytes(self.data[start:end])

    def _literal_span(self, literal8: bool) -> tuple[int, int]:
        found = _LITERAL.match(self.data, self.pos)
        if not found and literal8 and self.binary:
            found = LITERAL8.match(self.data, self.pos)
            self.literal8_seen = self.literal8_seen or found is not None
        if not found:
            raise self.error("Expected literal")
        size = int(found.group(1))
        start = found.end()
        if start in self.spooled:  # the bytes are in a file: the command goes on right here
            if len(self.spooled[start]) != size:
                raise self.error("Truncated literal")
            return start, start
        if start + size > len(self.data):
            raise self.error("Truncated literal")
        return start, start + size

    def string(self) -> bytes:
        nxt = self.peek()
        if nxt == b'"':
            return self.quoted()
        if nxt == b"{":
            return self.literal()
        raise self.error("Expected string")

    def astring_bytes(self) -> bytes:
        if self.peek() in (b'"', b"{"):
            return self.string()
        return self.match(_ASTRING_CHARS, "astring")

    def astring(self) -> str:
        return text(self.astring_bytes())

    def login_astring(self) -> str:
        """LOGIN's user name and password: an astring, where an atom may also hold "*" and "%"
        (Python's imaplib sends ``<BAL>*<login>`` unquoted; Dovecot accepts it too)."""
        if self.peek() in (b'"', b"{", b"~"):
            return text(self.string())
        return text(self.match(_LIST_CHARS, "astring"))

    def nstring(self) -> str | None:
        if self.accept_word(b"NIL"):
            return None
        return text(self.string())

    # -- IMAP productions ------------------------------------------------------------------
    def mailbox(self) -> str:
        """``mailbox = "INBOX" / astring``; INBOX in any case is INBOX; mUTF-7 decoded."""
        raw = self.astring_bytes()
        return self._mailbox_name(raw)

    def _mailbox_name(self, raw: bytes) -> str:
        if raw.upper() == b"INBOX":
            return "INBOX"
        try:
            text = raw.decode("ascii") if not self.utf8 else raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error("Mailbox name is not valid modified UTF-7") from exc
        if self.utf8:
            return text
        try:
            name = mutf7.decode(text)
        except mutf7.MUTF7Error as exc:
            # Well-formed syntax naming no possible mailbox: NO, as Dovecot answers, not BAD.
            raise ParseError(f"Mailbox name: {exc}", status="NO", code="CANNOT") from exc
        if name.upper().startswith("INBOX/"):
            name = "INBOX" + name[5:]
        return name

    def list_mailbox(self) -> str:
        quoted = self.peek() in (b'"', b"{")
        raw = self.string() if quoted else self.match(_LIST_CHARS, "list-mailbox")
        if raw == b"":
            return ""
        if raw.upper() == b"INBOX":
            return "INBOX"
        try:
            return raw.decode("utf-8") if self.utf8 else mutf7.decode(raw.decode("ascii"))
        except mutf7.MUTF7Error:
            return raw.decode("ascii")  # a pattern no mailbox name can match: LIST finds nothing
        except UnicodeDecodeError as exc:
            raise self.error(f"Mailbox pattern: {exc}") from exc

    def sequence_set(self) -> SequenceSet:
        if self.accept(b"$"):
            return SequenceSet((), saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            start = self._seq_number()
            end = self._seq_number() if self.accept(b":") else start
            ranges.append((start, end))
            if len(ranges) > 100_000:
                raise self.error("Sequence set too long")
            if not self.accept(b","):
                return SequenceSet(tuple(ranges))

    def mod_sequence(self) -> int:
        """``mod-sequence-valzer`` (RFC 7162): 0 to 2^63-1."""
        digits = self.match(_NUMBER, "mod-sequence")
        if len(digits) > 19 or int(digits) > 2**63 - 1:
            raise self.error("Mod-sequence out of range")
        return int(digits)

    def _seq_number(self) -> int | None:
        if self.accept(b"*"):
            return None
        return self.number(nonzero=True)

    def flag(self, *, allow_recent: bool = False) -> str:
        if self.accept(b"\\"):
            if self.accept(b"*"):
                raise self.error("\\* is not a message flag")
            name = "\\" + self.atom()
            upper = name.upper()
            if upper in SYSTEM_FLAGS:
                return SYSTEM_FLAGS[upper]
            if upper == "\\RECENT" and allow_recent:
                return "\\Recent"
            raise self.error(f"Unknown system flag {name}")
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        flags: list[str] = []
        if not self.accept(b")"):
            flags.append(self.flag())
            while self.accept(b" "):
                flags.append(self.flag())
            self.expect(b")")
        return tuple(flags)

    def date(self) -> date:
        quoted = self.accept(b'"')
        day = self.match(_DAY, "day")
        self.expect(b"-")
        month = _MONTH_NUMBER.get(self.match(_MONTH, "month").decode().upper())
        self.expect(b"-")
        year = self.match(_YEAR, "year")
        if quoted:
            self.expect(b'"')
        if month is None:
            raise self.error("Invalid month")
        try:
            return date(int(year), month, int(day))
        except ValueError as exc:
            raise self.error("Invalid date") from exc

    def date_time(self) -> datetime:
        found = _DATE_TIME.match(self.data, self.pos)
        if not found:
            raise self.error("Expected date-time")
        self.pos = found.end()
        day, mon, year, hh, mm, ss, sign, zh, zm = (g.decode() for g in found.groups())
        month = _MONTH_NUMBER.get(mon.upper())
        if month is None:
            raise self.error("Invalid month")
        offset = timedelta(hours=int(zh), minutes=int(zm)) * (-1 if sign == "-" else 1)
        try:
            return datetime(
                int(year), month, int(day.strip()), int(hh), int(mm), int(ss), tzinfo=timezone(offset)
            )
        except ValueError as exc:
            raise self.error("Invalid date-time") from exc

    def paren_list(self, depth: int = 0) -> tuple[object, ...]:
        """A generic parenthesised list of atoms, strings and lists (ID, SELECT params...)."""
        if depth >= self.max_depth:
            raise self.error("Lists nested too deeply")
        self.expect(b"(")
        items: list[object] = []
        if self.accept(b")"):
            return ()
        while True:
            nxt = self.peek()
            if nxt == b"(":
                items.append(self.paren_list(depth + 1))
            elif nxt in (b'"', b"{"):
                items.append(text(self.string()))
            else:
                items.append(self.match(_ASTRING_CHARS, "list item").decode("ascii"))
            if self.accept(b")"):
                return tuple(items)
            self.sp()


def parse_sequence_set(text: str) -> SequenceSet:
    """A sequence set given inside a parameter list (QRESYNC known-uids, CHANGEDSINCE...)."""
    reader = Reader(text.encode("ascii", "replace"), utf8=False, max_depth=MAX_DEPTH)
    sequence = reader.sequence_set()
    reader.end()
    return sequence


def text(raw: bytes) -> str:
    """Strings are bytes on the wire; we speak UTF-8 and keep stray bytes reversible."""
    return raw.decode("utf-8", errors="surrogateescape")
