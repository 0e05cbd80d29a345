"""The IMAP command grammar (RFC 3501 §9, with RFC 9051 and the extensions we announce).

:func:`parse_command` takes one complete command as framed by :mod:`mssante.imap.framing`
(literals inline as ``{n}\\r\\n`` + n bytes, final CRLF removed) and returns a
:class:`~mssante.imap.commands.values.Command`, or raises :class:`ParseError`, which the session
answers with ``BAD``. The tokens (atoms, strings, literals, sequence sets, flags, dates) are
read by :class:`~mssante.imap.reader.Reader`; here are the commands' arguments, FETCH items and
SEARCH keys. The parser is strict where laxness would make two readings possible, and
bounded: parenthesised lists nest at most ``max_depth`` deep, SEARCH programs hold at most
``MAX_SEARCH_KEYS`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

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
    SortThread,
    Status,
    Store,
)
from mssante.imap.framing import command_tag
from mssante.imap.reader import LITERAL8, MAX_DEPTH, ParseError, Reader, text
from mssante.imap.threading import SORT_KEYS
from mssante.store.spooled import Raw, SpooledMessage

MAX_SEARCH_KEYS = 1000

_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+\x80-\xff]+")
_BASE64 = re.compile(rb"=|(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")

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


# --- FETCH items ----------------------------------------------------------------------------------
def _fetch_items(r: Reader) -> tuple[FetchItem, ...]:
    if r.peek() == b"(":
        r.pos += 1
        items = [_fetch_item(r)]
        while r.accept(b" "):
            items.append(_fetch_item(r))
        r.expect(b")")
        return tuple(items)
    start = r.pos
    word = r.match(_FETCH_NAME, "fetch attribute").decode().upper()
    if word in FETCH_MACROS and r.peek() not in (b"[", b"<"):
        return tuple(FetchItem(name) for name in FETCH_MACROS[word])
    r.pos = start
    return (_fetch_item(r),)


def _fetch_item(r: Reader) -> FetchItem:
    name = r.match(_FETCH_NAME, "fetch attribute").decode().upper()
    if name in ("BODY", "BODY.PEEK") and r.peek() == b"[":
        section = _section(r)
        partial = _partial(r)
        return FetchItem("BODY", section, partial, peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and r.peek() == b"[":
        section = _section(r)
        if section.text is not None:
            raise r.error("A BINARY section is a part number only")
        partial = _partial(r) if name != "BINARY.SIZE" else None
        item = "BINARY.SIZE" if name == "BINARY.SIZE" else "BINARY"
        return FetchItem(item, section, partial, peek=name == "BINARY.PEEK")
    if name in _SIMPLE_FETCH:
        return FetchItem(name)
    raise r.error(f"Unknown fetch attribute {name}")


def _section(r: Reader) -> Section:
    r.expect(b"[")
    if r.accept(b"]"):
        return Section()
    part: list[int] = []
    text: str | None = None
    while r.peek().isdigit():
        part.append(r.number(nonzero=True))
        if not r.accept(b"."):
            break
        if not r.peek().isdigit():
            text = r.match(_SECTION_TEXT, "section text").decode().upper()
            break
    if not part:
        text = r.match(_SECTION_TEXT, "section text").decode().upper()
    fields: tuple[str, ...] = ()
    if text is not None:
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if part:
            allowed.add("MIME")
        if text not in allowed:
            raise r.error(f"Invalid section {text}")
        if text.startswith("HEADER.FIELDS"):
            r.sp()
            fields = _header_list(r)
    r.expect(b"]")
    return Section(tuple(part), text, fields)


def _header_list(r: Reader) -> tuple[str, ...]:
    r.expect(b"(")
    names = [r.astring()]
    while r.accept(b" "):
        names.append(r.astring())
    r.expect(b")")
    for name in names:
        if not name or any(ord(c) <= 32 or ord(c) > 126 or c == ":" for c in name):
            raise r.error("Invalid header field name")
    return tuple(names)


def _partial(r: Reader) -> tuple[int, int] | None:
    if not r.accept(b"<"):
        return None
    origin = r.number()
    r.expect(b".")
    length = r.number(nonzero=True)
    r.expect(b">")
    return origin, length


# --- SEARCH keys ----------------------------------------------------------------------------------
def _search_program(r: Reader, charset: str | None) -> SearchKey:
    keys = [_search_key(r, charset, 0)]
    while r.accept(b" "):
        keys.append(_search_key(r, charset, 0))
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def _search_key(r: Reader, charset: str | None, depth: int) -> SearchKey:
    r.search_keys += 1
    if r.search_keys > MAX_SEARCH_KEYS:
        raise r.error("Search program too long")
    if depth >= r.max_depth:
        raise r.error("Search program nested too deeply")
    nxt = r.peek()
    if nxt == b"(":
        r.pos += 1
        keys = [_search_key(r, charset, depth + 1)]
        while r.accept(b" "):
            keys.append(_search_key(r, charset, depth + 1))
        r.expect(b")")
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if nxt in (b"*", b"$") or nxt.isdigit():
        return SearchKey("SEQSET", (r.sequence_set(),))
    word = r.atom().upper()
    if word in _SEARCH_FLAG_KEYS:
        return SearchKey(word)
    if word in _SEARCH_STRING_KEYS:
        r.sp()
        return SearchKey(word, (_search_string(r, charset),))
    if word in _SEARCH_DATE_KEYS:
        r.sp()
        return SearchKey(word, (r.date(),))
    if word in _SEARCH_NUMBER_KEYS:
        r.sp()
        return SearchKey(word, (r.number(),))
    if word in _SEARCH_KEYWORD_KEYS:
        r.sp()
        return SearchKey(word, (r.flag(),))
    if word == "HEADER":
        r.sp()
        name = r.astring()
        r.sp()
        return SearchKey(word, (name, _search_string(r, charset)))
    if word == "UID":
        r.sp()
        return SearchKey(word, (r.sequence_set(),))
    if word == "MODSEQ":  # RFC 7162: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        r.sp()
        if r.peek() == b'"':
            r.quoted()
            r.sp()
            r.atom()
            r.sp()
        return SearchKey(word, (r.mod_sequence(),))
    if word == "NOT":
        r.sp()
        return SearchKey(word, (_search_key(r, charset, depth + 1),))
    if word == "OR":
        r.sp()
        left = _search_key(r, charset, depth + 1)
        r.sp()
        return SearchKey(word, (left, _search_key(r, charset, depth + 1)))
    raise r.error(f"Unknown search key {word}")


def _search_string(r: Reader, charset: str | None) -> str:
    raw = r.astring_bytes()
    try:
        return raw.decode("ascii" if charset == "US-ASCII" else "utf-8")
    except UnicodeDecodeError as exc:
        raise r.error(f"Search string is not valid {charset or 'UTF-8'}") from exc


# --- commands -------------------------------------------------------------------------------

_NO_ARGS = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "EXPUNGE", "UNSELECT",
            "IDLE", "NAMESPACE"}  # fmt: skip
_ONE_MAILBOX = {"DELETE", "SUBSCRIBE", "UNSUBSCRIBE"}
_UID_COMMANDS = {"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE", "SORT", "THREAD"}
SORT_CRITERIA = SORT_KEYS | {"REVERSE"}
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
        reader = Reader(data, utf8=utf8, max_depth=max_depth, binary=binary, spooled=spooled)
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


def _parse_arguments(r: Reader, tag: str, name: str, uid: bool) -> Command:
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
        fetch_items = _fetch_items(r)
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


def _acl_args(r: Reader, name: str) -> AclArgs:
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


def _append_message(r: Reader) -> tuple[tuple[str, ...], datetime | None, Raw]:
    """``SP [flag-list SP] [date-time SP] literal`` of APPEND."""
    r.sp()
    # imapclient's MULTIAPPEND writes two spaces before each message after the first (a space
    # after the literal, then " {n+}"); Dovecot's parser skips runs of spaces between arguments,
    # so that client works there unchanged: here too, before a message.
    while r.accept(b" "):
        pass
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.accept(b"UTF8 ("):  # RFC 6855 §4: a message with UTF-8 headers, always a literal8
        if not LITERAL8.match(r.data, r.pos):
            raise r.error("APPEND UTF8 needs a literal8 (~{n})")
        r.pos += 1
        message = r.message_literal()
        r.expect(b")")
        return flags, when, message
    if r.peek() != b"{" and not (r.binary and r.peek() == b"~"):
        raise r.error("APPEND needs the message as a literal")
    return flags, when, r.message_literal(literal8=True)


def _quota_args(r: Reader, name: str) -> Quota:
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


def _create_params(r: Reader) -> tuple[str, ...]:
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


def _list_args(r: Reader, *, extended: bool) -> ListArgs:
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


def _store_args(r: Reader) -> Store:
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


def _sort_thread_args(r: Reader, name: str) -> SortThread:
    """``SORT [RETURN (options)] (criteria) charset program`` (RFC 5256, ESORT of RFC 5267) /
    ``THREAD algorithm charset program``."""
    r.sp()
    criteria: tuple[str, ...] = ()
    algorithm = ""
    returns: tuple[str, ...] | None = None
    if name == "SORT" and r.accept_word(b"RETURN"):
        r.sp()
        returns = tuple(str(s).upper() for s in r.paren_list())
        r.sp()
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
    return SortThread(charset, _search_program(r, charset), criteria, algorithm, returns)


def _search_args(r: Reader) -> Search:
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
    return Search(charset, _search_program(r, charset), returns)


def _id_params(r: Reader) -> tuple[tuple[str, str | None], ...] | None:
    if r.accept_word(b"NIL"):
        return None
    r.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    if r.accept(b")"):
        return ()
    while True:
        key = text(r.string())
        r.sp()
        pairs.append((key, r.nstring()))
        if len(pairs) > 30:
            raise r.error("Too many ID fields")
        if r.accept(b")"):
            return tuple(pairs)
        r.sp()
