"""What a parsed IMAP command is: plain, immutable values the session acts upon.

The parser builds these; the session and the renderer read them. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from mssante.store.spooled import Raw


@dataclass(frozen=True)
class SequenceSet:
    """``1:3,7,9:*`` — ranges of message numbers or UIDs; ``None`` stands for ``*``.

    A range is unordered (``5:2`` is ``2:5``) and ``*`` means the largest number in use, so
    ``10:*`` on a mailbox whose largest UID is 5 still matches 5 (RFC 3501 §6.4.8).
    """

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False  # ``$``: the result a SEARCH RETURN (SAVE) kept (SEARCHRES, RFC 5182)

    def bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        """Each range as ordered (low, high) with ``*`` replaced by ``largest``."""
        for start, end in self.ranges:
            low = largest if start is None else start
            high = largest if end is None else end
            yield (low, high) if low <= high else (high, low)

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.bounds(largest))

    def numbers(self, largest: int) -> list[int]:
        """Sorted distinct numbers of the set, clipped to ``1..largest`` (message numbers)."""
        out: set[int] = set()
        for low, high in self.bounds(largest):
            out.update(range(max(low, 1), min(high, largest) + 1))
        return sorted(out)

    def __str__(self) -> str:
        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        if self.saved:
            return "$"
        return ",".join(one(s) if s == e else f"{one(s)}:{one(e)}" for s, e in self.ranges)


@dataclass(frozen=True)
class Section:
    """``[1.2.HEADER.FIELDS (Subject)]``: a part path and what to take from it."""

    part: tuple[int, ...] = ()
    text: str | None = None  # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        spec = ".".join(str(n) for n in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            spec += " (" + " ".join(_astring(f) for f in self.fields) + ")"
        return spec


def _astring(value: str) -> str:
    if value and all(c.isalnum() or c in "-_." for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute: ``FLAGS``, ``ENVELOPE``, ``BODY.PEEK[TEXT]<0.100>``...

    ``name`` is one of FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE, UID,
    RFC822, RFC822.HEADER, RFC822.TEXT, MODSEQ, BINARY, BINARY.SIZE; ``section`` is set for
    ``BODY[...]`` and the BINARY forms (RFC 3516: part numbers only).
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (origin, length)
    peek: bool = False

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this implicitly sets ``\\Seen`` (RFC 3501 §6.4.5)."""
        if self.name == "BINARY.SIZE":
            return False
        return (self.section is not None and not self.peek) or self.name in ("RFC822", "RFC822.TEXT")

    def response_name(self) -> str:
        """How the item is named in the FETCH response (a partial shows only its origin)."""
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


@dataclass(frozen=True)
class SearchKey:
    """A node of a SEARCH program: ``name`` is the key, ``args`` its operands.

    ``AND`` (a parenthesised list or the top level) and ``OR`` hold child keys, ``NOT`` one;
    ``SEQSET`` and ``UID`` hold a :class:`SequenceSet`; dates are :class:`datetime.date`.
    """

    name: str
    args: tuple[object, ...] = ()


# --- command arguments -------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True)
class Authenticate:
    mechanism: str
    initial: bytes | None  # SASL-IR: base64 text as sent, b"=" for an empty response


@dataclass(frozen=True)
class MailboxArg:
    """SELECT, EXAMINE, DELETE, SUBSCRIBE, UNSUBSCRIBE: one mailbox (and optional params)."""

    mailbox: str
    params: tuple[object, ...] = ()


@dataclass(frozen=True)
class Create:
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class ListArgs:
    """LIST and LSUB, with the LIST-EXTENDED shape (RFC 5258) where the client uses it."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()  # RETURN (STATUS (...)) of LIST-STATUS (RFC 5819)


@dataclass(frozen=True)
class AclArgs:
    """GETACL/MYRIGHTS (mailbox), DELETEACL/LISTRIGHTS (+ identifier), SETACL (+ rights)."""

    mailbox: str
    identifier: str | None = None
    rights: str | None = None


@dataclass(frozen=True)
class Quota:
    """GETQUOTA root, GETQUOTAROOT mailbox, SETQUOTA root (resources) — RFC 9208."""

    name: str  # the quota root, or the mailbox of GETQUOTAROOT
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append:
    mailbox: str
    flags: tuple[str, ...]
    internaldate: datetime | None
    message: Raw  # the command's buffer when large, a spool file when larger (see message_literal)
    # MULTIAPPEND (RFC 3502): the further messages, each with its flags and date.
    more: tuple[tuple[tuple[str, ...], datetime | None, Raw], ...] = ()
    binary: bool = False  # a message came as a literal8 (BINARY, RFC 3516)


@dataclass(frozen=True)
class Fetch:
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    modifiers: tuple[object, ...] = ()


@dataclass(frozen=True)
class Store:
    sequence: SequenceSet
    mode: str  # "" (replace), "+" (add), "-" (remove)
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None  # CONDSTORE (RFC 7162 §3.1.3)


@dataclass(frozen=True)
class Search:
    charset: str | None
    key: SearchKey
    returns: tuple[str, ...] | None = None  # ESEARCH RETURN options when given


@dataclass(frozen=True)
class SortThread:
    """SORT (criteria) and THREAD algorithm (RFC 5256), each with a search program."""

    charset: str
    key: SearchKey
    criteria: tuple[str, ...] = ()  # SORT
    algorithm: str = ""  # THREAD
    returns: tuple[str, ...] | None = None  # ESORT's RETURN options (RFC 5267) when given


@dataclass(frozen=True)
class CopyMove:
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE with the UIDs it is limited to (UIDPLUS)."""

    uids: SequenceSet | None = None


@dataclass(frozen=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id:
    params: tuple[tuple[str, str | None], ...] | None


Arguments = (
    Login
    | Authenticate
    | MailboxArg
    | Create
    | Rename
    | ListArgs
    | Status
    | Append
    | Fetch
    | Store
    | Search
    | CopyMove
    | Expunge
    | Enable
    | Id
    | AclArgs
    | Quota
    | SortThread
    | None
)


@dataclass(frozen=True)
class Command:
    """A parsed command: ``name`` upper-cased; ``uid`` for the UID forms."""

    tag: str
    name: str
    args: Arguments = None
    uid: bool = False
