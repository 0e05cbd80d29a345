"""The IMAP command grammar (RFC 3501 §9, with RFC 9051 and the extensions we announce).

:func:`parse_command` takes one complete command as framed by :mod:`mssante.imap.framing`
(literals inline as ``{n}\\r\\n`` + n bytes, final CRLF removed) and returns a
:class:`~mssante.imap.commands.values.Command`, or raises :class:`ParseError`, which the session
answers with ``BAD``. The parser is strict where laxness would make two readings possible,
and bounded: parenthesised lists nest at most ``max_depth`` deep, SEARCH programs hold at
most ``max_search_keys`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

from mssante.imap import mutf7
from mssante.imap.commands.values import (
    AclArgs,
    Append,
    Authenticate,
    Command,
    CopyMove,
    Create,
    Enable,
    Expunge,
    Fetch,
    FetchItem,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    Quota,
    Rename,
    Search,
    SearchKey,
    Section,
    SequenceSet,
    SortThread,
    Status,
    Store,
)
from mssante.imap.framing import command_tag
from mssante.store.spooled import Raw, SpooledMessage

MAX_DEPTH = 16
MAX_SEARCH_KEYS = 1000
_MAX_NUMBER = 4294967295

# atom-specials (RFC 3501 §9): ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\\]\x80-\xff]+")
_ASTRING_CHARS = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\\x80-\xff]+")  # atom + "]"
_LIST_CHARS = re.compile(rb"[^\x00-\x20\x7f(){\"\\\x80-\xff]+")  # atom + % * ]
_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+\x80-\xff]+")
_LITERAL = re.compile(rb"\{([0-9]+)(\+?)\}\r\n")
_LITERAL8 = re.compile(rb"~\{([0-9]+)(\+?)\}\r\n")
# An APPEND message at least this large is handed over in the command's buffer (see message_literal).
TAKE_LITERAL = 256 * 1024
_NUMBER = re.compile(rb"[0-9]+")
_BASE64 = re.compile(rb"=|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")
_DAY = re.compile(rb"[0-9]{1,2}")
_MONTH = re.compile(rb"[A-Za-z]{3}")
_YEAR = re.compile(rb"[0-9]{4}")
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}

SYSTEM_FLAGS = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")}

FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH = {
    "FLAGS",
    "INTERNALDATE",
    "RFC822.SIZE",
    "ENVELOPE",
    "BODY",
    "BODYSTRUCTURE",
    "UID",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.TEXT",
    "MODSEQ",
}

STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "HIGHESTMODSEQ", "DELETED"}

# SEARCH keys by operand shape.
_SEARCH_FLAG_KEYS = {
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
}  # fmt: skip
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_SEARCH_NUMBER_KEYS = {"LARGER", "SMALLER", "OLDER", "YOUNGER"}  # OLDER/YOUNGER: WITHIN (RFC 5032)
_SEARCH_KEYWORD_KEYS = {"KEYWORD", "UNKEYWORD"}
SEARCH_CHARSETS = ("US-ASCII", "UTF-8")


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


class _Reader:
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
        self.search_keys = 0

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
            found = _LITERAL8.match(self.data, self.pos)
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
        return _text(self.astring_bytes())

    def login_astring(self) -> str:
        """LOGIN's user name and password: an astring, where an atom may also hold "*" and "%"
        (Python's imaplib sends ``<BAL>*<login>`` unquoted; Dovecot accepts it too)."""
        if self.peek() in (b'"', b"{", b"~"):
            return _text(self.string())
        return _text(self.match(_LIST_CHARS, "astring"))

    def nstring(self) -> str | None:
        if self.accept_word(b"NIL"):
            return None
        return _text(self.string())

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
                items.append(_text(self.string()))
            else:
                items.append(self.match(_ASTRING_CHARS, "list item").decode("ascii"))
            if self.accept(b")"):
                return tuple(items)
            self.sp()

    # -- FETCH -------------------------------------------------------------------------------
    def fetch_items(self) -> tuple[FetchItem, ...]:
        if self.peek() == b"(":
            self.pos += 1
            items = [self.fetch_item()]
            while self.accept(b" "):
                items.append(self.fetch_item())
            self.expect(b")")
            return tuple(items)
        start = self.pos
        word = self.match(_FETCH_NAME, "fetch attribute").decode().upper()
        if word in FETCH_MACROS and self.peek() not in (b"[", b"<"):
            return tuple(FetchItem(name) for name in FETCH_MACROS[word])
        self.pos = start
        return (self.fetch_item(),)

    def fetch_item(self) -> FetchItem:
        name = self.match(_FETCH_NAME, "fetch attribute").decode().upper()
        if name in ("BODY", "BODY.PEEK") and self.peek() == b"[":
            section = self.section()
            partial = self.partial()
            return FetchItem("BODY", section, partial, peek=name == "BODY.PEEK")
        if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and self.peek() == b"[":
            section = self.section()
            if section.text is not None:
                raise self.error("A BINARY section is a part number only")
            partial = self.partial() if name != "BINARY.SIZE" else None
            item = "BINARY.SIZE" if name == "BINARY.SIZE" else "BINARY"
            return FetchItem(item, section, partial, peek=name == "BINARY.PEEK")
        if name in _SIMPLE_FETCH:
            return FetchItem(name)
        raise self.error(f"Unknown fetch attribute {name}")

    def section(self) -> Section:
        self.expect(b"[")
        if self.accept(b"]"):
            return Section()
        part: list[int] = []
        text: str | None = None
        while self.peek().isdigit():
            part.append(self.number(nonzero=True))
            if not self.accept(b"."):
                break
            if not self.peek().isdigit():
                text = self.match(_SECTION_TEXT, "section text").decode().upper()
                break
        if not part:
            text = self.match(_SECTION_TEXT, "section text").decode().upper()
        fields: tuple[str, ...] = ()
        if text is not None:
            allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
            if part:
                allowed.add("MIME")
            if text not in allowed:
                raise self.error(f"Invalid section {text}")
            if text.startswith("HEADER.FIELDS"):
                self.sp()
                fields = self.header_list()
        self.expect(b"]")
        return Section(tuple(part), text, fields)

    def header_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        names = [self.astring()]
        while self.accept(b" "):
            names.append(self.astring())
        self.expect(b")")
        for name in names:
            if not name or any(ord(c) <= 32 or ord(c) > 126 or c == ":" for c in name):
                raise self.error("Invalid header field name")
        return tuple(names)

    def partial(self) -> tuple[int, int] | None:
        if not self.accept(b"<"):
            return None
        origin = self.number()
        self.expect(b".")
        length = self.number(nonzero=True)
        self.expect(b">")
        return origin, length

    # -- SEARCH ------------------------------------------------------------------------------
    def search_program(self, charset: str | None) -> SearchKey:
        keys = [self.search_key(charset, 0)]
        while self.accept(b" "):
            keys.append(self.search_key(charset, 0))
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))

    def search_key(self, charset: str | None, depth: int) -> SearchKey:
        self.search_keys += 1
        if self.search_keys > MAX_SEARCH_KEYS:
            raise self.error("Search program too long")
        if depth >= self.max_depth:
            raise self.error("Search program nested too deeply")
        nxt = self.peek()
        if nxt == b"(":
            self.pos += 1
            keys = [self.search_key(charset, depth + 1)]
            while self.accept(b" "):
                keys.append(self.search_key(charset, depth + 1))
            self.expect(b")")
            return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
        if nxt in (b"*", b"$") or nxt.isdigit():
            return SearchKey("SEQSET", (self.sequence_set(),))
        word = self.atom().upper()
        if word in _SEARCH_FLAG_KEYS:
            return SearchKey(word)
        if word in _SEARCH_STRING_KEYS:
            self.sp()
            return SearchKey(word, (self._search_string(charset),))
        if word in _SEARCH_DATE_KEYS:
            self.sp()
            return SearchKey(word, (self.date(),))
        if word in _SEARCH_NUMBER_KEYS:
            self.sp()
            return SearchKey(word, (self.number(),))
        if word in _SEARCH_KEYWORD_KEYS:
            self.sp()
            return SearchKey(word, (self.flag(),))
        if word == "HEADER":
            self.sp()
            name = self.astring()
            self.sp()
            return SearchKey(word, (name, self._search_string(charset)))
        if word == "UID":
            self.sp()
            return SearchKey(word, (self.sequence_set(),))
        if word == "MODSEQ":  # RFC 7162: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
            self.sp()
            if self.peek() == b'"':
                self.quoted()
                self.sp()
                self.atom()
                self.sp()
            return SearchKey(word, (self.mod_sequence(),))
        if word == "NOT":
            self.sp()
            return SearchKey(word, (self.search_key(charset, depth + 1),))
        if word == "OR":
            self.sp()
            left = self.search_key(charset, depth + 1)
            self.sp()
            return SearchKey(word, (left, self.search_key(charset, depth + 1)))
        raise self.error(f"Unknown search key {word}")

    def _search_string(self, charset: str | None) -> str:
        raw = self.astring_bytes()
        try:
            return raw.decode("ascii" if charset == "US-ASCII" else "utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"Search string is not valid {charset or 'UTF-8'}") from exc


def parse_sequence_set(text: str) -> SequenceSet:
    """A sequence set given inside a parameter list (QRESYNC known-uids, CHANGEDSINCE...)."""
    reader = _Reader(text.encode("ascii", "replace"), utf8=False, max_depth=MAX_DEPTH)
    sequence = reader.sequence_set()
    reader.end()
    return sequence


def _text(raw: bytes) -> str:
    """Strings are bytes on the wire; we speak UTF-8 and keep stray bytes reversible."""
    return raw.decode("utf-8", errors="surrogateescape")


# --- commands -------------------------------------------------------------------------------

_NO_ARGS = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "EXPUNGE", "UNSELECT",
            "IDLE", "NAMESPACE"}  # fmt: skip
_ONE_MAILBOX = {"DELETE", "SUBSCRIBE", "UNSUBSCRIBE"}
_UID_COMMANDS = {"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD"}
SORT_CRITERIA = {"ARRIVAL", "CC", "DATE", "FROM", "REVERSE", "SIZE", "SUBJECT", "TO"}
THREAD_ALGORITHMS = {"ORDEREDSUBJECT", "REFERENCES"}


def parse_command(
    data: bytes | bytearray,
    *,
    utf8: bool = False,
    max_depth: int = MAX_DEPTH,
    binary: bool = False,
    spooled: Mapping[int, SpooledMessage] | None = None,
) -> Command:
    """Parse one framed command; raise :class:`ParseError` (with the tag when known).

    ``binary``: the session advertises BINARY, so APPEND may send its message as ``~{n}``;
    elsewhere, and always without BINARY, ``~`` is an ordinary atom character. ``spooled``:
    the literals the framer wrote to files (``CommandReady.spooled``)."""
    tag = "*"
    try:
        reader = _Reader(data, utf8=utf8, max_depth=max_depth, binary=binary, spooled=spooled)
        tag = reader.match(_TAG, "tag").decode("ascii")
        reader.sp()
        name = reader.atom().upper()
        uid = False
        if name == "UID":
            reader.sp()
            name = reader.atom().upper()
            if name not in _UID_COMMANDS:
                raise reader.error(f"UID {name} is not a command")
            uid = True
        command = _parse_arguments(reader, tag, name, uid)
        reader.end()
        return command
    except ParseError as exc:
        exc.tag = tag if tag != "*" else command_tag(data)
        raise


def _parse_arguments(r: _Reader, tag: str, name: str, uid: bool) -> Command:
    if name in _NO_ARGS and not (uid and name == "EXPUNGE"):
        return Command(tag, name, Expunge() if name == "EXPUNGE" else None)
    if name == "EXPUNGE":  # UID EXPUNGE
        r.sp()
        return Command(tag, name, Expunge(r.sequence_set()), uid=True)
    if name == "LOGIN":
        r.sp()
        user = r.login_astring()
        r.sp()
        return Command(tag, name, Login(user, r.login_astring()))
    if name == "AUTHENTICATE":
        r.sp()
        mechanism = r.atom().upper()
        initial = None
        if r.accept(b" "):
            initial = r.match(_BASE64, "base64 initial response")
        return Command(tag, name, Authenticate(mechanism, initial))
    if name in ("SELECT", "EXAMINE"):
        r.sp()
        mailbox = r.mailbox()
        params = r.paren_list() if r.accept(b" ") else ()
        return Command(tag, name, MailboxArg(mailbox, params))
    if name in _ONE_MAILBOX:
        r.sp()
        return Command(tag, name, MailboxArg(r.mailbox()))
    if name == "CREATE":
        r.sp()
        mailbox = r.mailbox()
        uses: tuple[str, ...] = ()
        if r.accept(b" "):
            uses = _create_params(r)
        return Command(tag, name, Create(mailbox, uses))
    if name == "RENAME":
        r.sp()
        old = r.mailbox()
        r.sp()
        return Command(tag, name, Rename(old, r.mailbox()))
    if name in ("LIST", "LSUB"):
        return Command(tag, name, _list_args(r, extended=name == "LIST"))
    if name == "STATUS":
        r.sp()
        mailbox = r.mailbox()
        r.sp()
        r.expect(b"(")
        items = [r.atom().upper()]
        while r.accept(b" "):
            items.append(r.atom().upper())
        r.expect(b")")
        unknown = [i for i in items if i not in STATUS_ITEMS]
        if unknown:
            raise r.error(f"Unknown status item {unknown[0]}")
        return Command(tag, name, Status(mailbox, tuple(items)))
    if name == "APPEND":
        r.sp()
        mailbox = r.mailbox()
        messages = [_append_message(r)]
        while r.peek() == b" ":  # MULTIAPPEND (RFC 3502)
            messages.append(_append_message(r))
        binary = r.literal8_seen
        (flags, when, message), *more = messages
        return Command(tag, name, Append(mailbox, flags, when, message, tuple(more), binary))
    if name in ("COPY", "MOVE"):
        r.sp()
        seq = r.sequence_set()
        r.sp()
        return Command(tag, name, CopyMove(seq, r.mailbox()), uid=uid)
    if name == "FETCH":
        r.sp()
        seq = r.sequence_set()
        r.sp()
        fetch_items = r.fetch_items()
        modifiers = r.paren_list() if r.accept(b" ") else ()
        return Command(tag, name, Fetch(seq, fetch_items, modifiers), uid=uid)
    if name == "STORE":
        return Command(tag, name, _store_args(r), uid=uid)
    if name == "SEARCH":
        return Command(tag, name, _search_args(r), uid=uid)
    if name in ("SORT", "THREAD"):
        return Command(tag, name, _sort_thread_args(r, name), uid=uid)
    if name == "ENABLE":
        caps: list[str] = []
        while r.accept(b" "):
            caps.append(r.atom().upper())
        if not caps:
            raise r.error("ENABLE needs at least one capability")
        return Command(tag, name, Enable(tuple(caps)))
    if name == "ID":
        r.sp()
        return Command(tag, name, Id(_id_params(r)))
    if name in _ACL_COMMANDS:
        return Command(tag, name, _acl_args(r, name))
    if name in ("GETQUOTA", "GETQUOTAROOT", "SETQUOTA"):
        return Command(tag, name, _quota_args(r, name))
    raise r.error(f"Unknown command {name}")


_ACL_COMMANDS = {"GETACL", "MYRIGHTS", "SETACL", "DELETEACL", "LISTRIGHTS"}


def _acl_args(r: _Reader, name: str) -> AclArgs:
    """RFC 4314: ``GETACL mailbox``, ``SETACL mailbox identifier rights``, ``DELETEACL mailbox
    identifier``, ``LISTRIGHTS mailbox identifier``, ``MYRIGHTS mailbox``."""
    r.sp()
    mailbox = r.mailbox()
    if name in ("GETACL", "MYRIGHTS"):
        return AclArgs(mailbox)
    r.sp()
    identifier = r.astring()
    if name != "SETACL":
        return AclArgs(mailbox, identifier)
    r.sp()
    return AclArgs(mailbox, identifier, r.astring())


def _append_message(r: _Reader) -> tuple[tuple[str, ...], datetime | None, Raw]:
    """``SP [flag-list SP] [date-time SP] literal`` of APPEND."""
    r.sp()
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.accept(b"UTF8 ("):  # RFC 6855 §4: a message with UTF-8 headers, always a literal8
        if not _LITERAL8.match(r.data, r.pos):
            raise r.error("APPEND UTF8 needs a literal8 (~{n})")
        r.pos += 1
        message = r.message_literal()
        r.expect(b")")
        return flags, when, message
    if r.peek() != b"{" and not (r.binary and r.peek() == b"~"):
        raise r.error("APPEND needs the message as a literal")
    return flags, when, r.message_literal(literal8=True)


def _quota_args(r: _Reader, name: str) -> Quota:
    """RFC 9208: ``GETQUOTA root``, ``GETQUOTAROOT mailbox``, ``SETQUOTA root (STORAGE 512)``."""
    r.sp()
    if name == "GETQUOTAROOT":
        return Quota(r.mailbox())
    root = r.astring()
    if name == "GETQUOTA":
        return Quota(root)
    r.sp()
    raw = list(r.paren_list())
    limits: list[tuple[str, int]] = []
    while raw:
        resource = str(raw.pop(0)).upper()
        if not raw or not str(raw[0]).isdigit():
            raise r.error("SETQUOTA needs resource limit pairs")
        limits.append((resource, int(str(raw.pop(0)))))
    return Quota(root, tuple(limits))


def _create_params(r: _Reader) -> tuple[str, ...]:
    """``CREATE name (USE (\\Drafts))`` (RFC 6154 CREATE-SPECIAL-USE)."""
    r.expect(b"(")
    uses: list[str] = []
    while True:
        word = r.atom().upper()
        r.sp()
        if word != "USE":
            raise r.error(f"Unknown CREATE parameter {word}")
        r.expect(b"(")
        while True:
            r.expect(b"\\")
            uses.append("\\" + r.atom())
            if not r.accept(b" "):
                break
        r.expect(b")")
        if r.accept(b")"):
            return tuple(uses)
        r.sp()


def _list_args(r: _Reader, *, extended: bool) -> ListArgs:
    r.sp()
    selection: tuple[str, ...] = ()
    if extended and r.peek() == b"(":
        selection = tuple(str(s).upper() for s in r.paren_list())
        r.sp()
    reference = r.mailbox()
    r.sp()
    if extended and r.peek() == b"(":
        r.pos += 1
        patterns = [r.list_mailbox()]
        while r.accept(b" "):
            patterns.append(r.list_mailbox())
        r.expect(b")")
    else:
        patterns = [r.list_mailbox()]
    returns: tuple[str, ...] = ()
    if extended and r.accept(b" "):
        if not r.accept_word(b"RETURN"):
            raise r.error("Expected RETURN")
        r.sp()
        options: list[str] = []
        status_items: tuple[str, ...] = ()
        raw = list(r.paren_list())
        while raw:
            option = str(raw.pop(0)).upper()
            if option == "STATUS":
                if not raw or not isinstance(raw[0], tuple) or not raw[0]:
                    raise r.error("RETURN STATUS needs a list of status items")
                listed = raw.pop(0)
                assert isinstance(listed, tuple)
                status_items = tuple(str(i).upper() for i in listed)
                unknown = [i for i in status_items if i not in STATUS_ITEMS]
                if unknown:
                    raise r.error(f"Unknown status item {unknown[0]}")
            options.append(option)
        return ListArgs(reference, tuple(patterns), selection, tuple(options), status_items)
    return ListArgs(reference, tuple(patterns), selection, returns)


def _store_args(r: _Reader) -> Store:
    r.sp()
    seq = r.sequence_set()
    r.sp()
    unchanged_since = None
    if r.accept(b"("):  # store-modifiers: (UNCHANGEDSINCE n) of RFC 7162
        if not r.accept_word(b"UNCHANGEDSINCE"):
            raise r.error("Unknown STORE modifier")
        r.sp()
        unchanged_since = r.mod_sequence()
        r.expect(b")")
        r.sp()
    mode = ""
    if r.accept(b"+"):
        mode = "+"
    elif r.accept(b"-"):
        mode = "-"
    word = r.atom().upper()
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error("Expected FLAGS, +FLAGS or -FLAGS")
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.accept(b" "):
            items.append(r.flag())
        flags = tuple(items)
    return Store(seq, mode, word.endswith(".SILENT"), flags, unchanged_since)


def _sort_thread_args(r: _Reader, name: str) -> SortThread:
    """``SORT (criteria) charset program`` / ``THREAD algorithm charset program`` (RFC 5256)."""
    r.sp()
    criteria: tuple[str, ...] = ()
    algorithm = ""
    if name == "SORT":
        criteria = tuple(str(c).upper() for c in r.paren_list())
        if not criteria or any(c not in SORT_CRITERIA for c in criteria) or criteria[-1] == "REVERSE":
            raise r.error("Invalid sort criteria")
    else:
        algorithm = r.atom().upper()
        if algorithm not in THREAD_ALGORITHMS:
            raise r.error(f"Unknown thread algorithm {algorithm}")
    r.sp()
    charset = r.astring().upper()
    if charset not in SEARCH_CHARSETS:
        raise ParseError(f"Unsupported charset {charset}", status="NO", code="BADCHARSET (US-ASCII UTF-8)")
    r.sp()
    return SortThread(charset, r.search_program(charset), criteria, algorithm)


def _search_args(r: _Reader) -> Search:
    r.sp()
    returns: tuple[str, ...] | None = None
    if r.accept_word(b"RETURN"):
        r.sp()
        returns = tuple(str(s).upper() for s in r.paren_list())
        r.sp()
    charset = None
    if r.accept_word(b"CHARSET"):
        r.sp()
        charset = r.astring().upper()
        r.sp()
        if charset not in SEARCH_CHARSETS:
            raise ParseError(
                f"Unsupported charset {charset}", status="NO", code="BADCHARSET (US-ASCII UTF-8)"
            )
    return Search(charset, r.search_program(charset), returns)


def _id_params(r: _Reader) -> tuple[tuple[str, str | None], ...] | None:
    if r.accept_word(b"NIL"):
        return None
    r.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    if r.accept(b")"):
        return ()
    while True:
        key = _text(r.string())
        r.sp()
        pairs.append((key, r.nstring()))
        if len(pairs) > 30:
            raise r.error("Too many ID fields")
        if r.accept(b")"):
            return tuple(pairs)
        r.sp()
