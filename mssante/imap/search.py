"""SEARCH evaluation (RFC 3501 §6.4.4) over a session's messages.

Flags, sizes, dates, UIDs and numbers come from the session's own state; header keys
(SUBJECT, FROM…, HEADER, SENT*) from each message's header fields, decoded RFC 2047 values
(:mod:`mssante.store.headerindex`: sealed at delivery, cached per process; a program made of
such keys alone is built once into one test per search); only BODY and TEXT
need the message itself, which is then decrypted, and its text parts decoded from their
transfer encoding and charset, so that a search for ``ordonnance`` finds it in a base64 or
quoted-printable body. Matching is case-insensitive substring matching, as the RFC asks.

A search that needs bodies runs in one of the store's worker threads a batch at a time: the
first chunk of a group of messages is read in one query, a body is decrypted only when the
program reaches a BODY or TEXT key for it (TEXT tries the cached headers first), and a large
body is read further only while the needle has not been found.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import quopri
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from mssante.imap.commands.values import SearchKey
from mssante.imap.mailbox import Entry
from mssante.store import headerindex
from mssante.store.blobs import Prefix, Reads
from mssante.store.core import INLINE_READ_META
from mssante.store.headerindex import (
    EMPTY,
    Fields,
    HeaderIndex,
    Test,
    address_test,
    header_test,
    sent_test,
)
from mssante.store.store import MessageStore

Json = dict[str, Any]

FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_ENCODED = ("base64", "quoted-printable")
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_ADDRESS_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "TO": "to"}
_FIELD_KEYS = (*_HEADER_KEYS, "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE")


# A group of messages whose first chunks are read together: at most BODY_READ_AHEAD messages
# and BODY_READ_AHEAD_BYTES bytes (a single larger message makes a group of its own).
BODY_READ_AHEAD = 64
BODY_READ_AHEAD_BYTES = 8 * 1024 * 1024


@dataclass
class Candidate:
    """One message under test; ``meta``, ``raw`` and ``fields`` are loaded only when the
    program needs them.

    ``raw`` is the whole message, or a :class:`Prefix` read further only as matching needs;
    ``fields`` are the header fields header keys match (:mod:`mssante.store.headerindex`)."""

    msn: int
    entry: Entry
    largest_msn: int
    largest_uid: int
    meta: Json | None = None
    raw: bytes | Prefix | None = None
    fields: Fields = EMPTY


def read_ahead_groups(batch: list[tuple[int, Entry]]) -> list[list[tuple[int, Entry]]]:
    groups: list[list[tuple[int, Entry]]] = []
    current: list[tuple[int, Entry]] = []
    size = 0
    for item in batch:
        if current and (len(current) >= BODY_READ_AHEAD or size + item[1].size > BODY_READ_AHEAD_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item[1].size
    if current:
        groups.append(current)
    return groups


async def select(
    store: MessageStore,
    key: SearchKey,
    batch: list[tuple[int, Entry]],
    largest_msn: int,
    largest_uid: int,
) -> list[tuple[int, Entry]]:
    """The (message number, entry) pairs of ``batch`` that ``key`` matches."""
    want_fields, want_body = needs(key)
    index = headerindex.index_of(store)
    if not want_body:
        if not want_fields:
            return [(n, e) for n, e in batch if matches(key, Candidate(n, e, largest_msn, largest_uid))]
        ids = [e.blob_id for _, e in batch]
        cached = index.cached(ids)
        fields = cached if cached is not None else await _read_fields(store, index, ids)
        test = fields_program(key)
        if test is not None:
            return [
                item for item, blob_id in zip(batch, ids, strict=True) if test(fields.get(blob_id, EMPTY))
            ]
        return [
            (n, e)
            for (n, e), blob_id in zip(batch, ids, strict=True)
            if matches(key, Candidate(n, e, largest_msn, largest_uid, fields=fields.get(blob_id, EMPTY)))
        ]

    def scan(session: Reads) -> list[tuple[int, Entry]]:
        ids = [e.blob_id for _, e in batch]
        metas = store.reader.meta(session, ids)
        fields = index.fields(store.reader, session, ids, metas) if want_fields else {}
        found: list[tuple[int, Entry]] = []
        groups = read_ahead_groups(batch)
        every_prefix = store.reader.prefix_groups(session, [[e.blob_id for _, e in g] for g in groups])
        with contextlib.closing(every_prefix):  # a failed match ends the pipeline at once
            for group, bodies in zip(groups, every_prefix, strict=True):
                for n, e in group:
                    candidate = Candidate(
                        n,
                        e,
                        largest_msn,
                        largest_uid,
                        metas.get(e.blob_id),
                        bodies.get(e.blob_id),
                        fields.get(e.blob_id, EMPTY),
                    )
                    if matches(key, candidate):
                        found.append((n, e))
        return found

    return await store.read(scan, kept=True)  # type: ignore[no-any-return]


async def _read_fields(store: MessageStore, index: HeaderIndex, ids: list[int]) -> dict[int, Fields]:
    return await store.read(  # type: ignore[no-any-return]
        lambda s: index.fields(store.reader, s, ids), small=len(ids) <= INLINE_READ_META
    )


def needs(key: SearchKey) -> tuple[bool, bool]:
    """(needs the header fields, needs the body) for a search program."""
    if key.name in ("AND", "OR", "NOT"):
        meta = body = False
        for child in key.args:
            assert isinstance(child, SearchKey)
            m, b = needs(child)
            meta, body = meta or m, body or b
        return meta, body
    if key.name in ("BODY", "TEXT"):
        return False, True  # the structure (read with the body), not the header fields
    return key.name in _FIELD_KEYS, False


def matches(key: SearchKey, c: Candidate) -> bool:
    name, args = key.name, key.args
    entry = c.entry
    if name == "AND":
        return all(matches(k, c) for k in args if isinstance(k, SearchKey))
    if name == "OR":
        left, right = args
        assert isinstance(left, SearchKey) and isinstance(right, SearchKey)
        return matches(left, c) or matches(right, c)
    if name == "NOT":
        (child,) = args
        assert isinstance(child, SearchKey)
        return not matches(child, c)
    if name == "ALL":
        return True
    if name == "RECENT":
        return entry.recent
    if name == "OLD":
        return not entry.recent
    if name == "NEW":
        return entry.recent and "\\Seen" not in entry.flags
    if name in FLAG_KEYS:
        flag, present = FLAG_KEYS[name]
        return (flag in entry.flags) is present
    if name in ("KEYWORD", "UNKEYWORD"):
        wanted = str(args[0]).lower()
        has = any(f.lower() == wanted for f in entry.flags)
        return has is (name == "KEYWORD")
    if name in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032): seconds before now, by INTERNALDATE
        age = (datetime.now(UTC) - entry.internaldate).total_seconds()
        return age >= int(str(args[0])) if name == "OLDER" else age <= int(str(args[0]))
    if name == "LARGER":
        return entry.size > int(str(args[0]))
    if name == "SMALLER":
        return entry.size < int(str(args[0]))
    if name == "SEQSET":
        return args[0].contains(c.msn, c.largest_msn)  # type: ignore[attr-defined,no-any-return]
    if name == "MODSEQ":
        return entry.modseq >= int(str(args[0]))
    if name == "UID":
        return args[0].contains(entry.uid, c.largest_uid)  # type: ignore[attr-defined,no-any-return]
    if name in ("BEFORE", "ON", "SINCE"):
        return _compare(name, entry.internaldate.date(), args[0])  # type: ignore[arg-type]
    if name in _FIELD_KEYS:
        return field_test(key)(c.fields)
    if name == "BODY":
        return _body_contains(c, str(args[0]))
    if name == "TEXT":
        needle = str(args[0])
        headers = "\n".join(f"{n}: {v}" for n, v in (c.meta or {}).get("headers", []))
        return _contains(headers, needle) or _body_contains(c, needle)
    raise ValueError(f"unknown search key {name}")


def field_test(key: SearchKey) -> Test:
    """A header-field key (SUBJECT, FROM…, HEADER, SENT*) as a test of a message's fields."""
    name, args = key.name, key.args
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return sent_test(name[4:], args[0])  # type: ignore[arg-type]
    if name in _ADDRESS_KEYS:
        return address_test(_ADDRESS_KEYS[name], str(args[0]))
    if name == "HEADER":
        return header_test(str(args[0]), str(args[1]))
    return header_test(_HEADER_KEYS[name], str(args[0]))


def fields_program(key: SearchKey) -> Test | None:
    """The program as one test of header fields, built once per search, when it uses nothing
    else (SUBJECT x, OR FROM a TO a, NOT HEADER…): no per-message dispatch. None otherwise."""
    name, args = key.name, key.args
    if name in _FIELD_KEYS:
        return field_test(key)
    if name == "ALL":
        return lambda f: True
    if name not in ("AND", "OR", "NOT"):
        return None
    parts = [fields_program(k) if isinstance(k, SearchKey) else None for k in args]
    tests = [p for p in parts if p is not None]
    if len(tests) != len(parts):
        return None
    if name == "AND":
        return lambda f: all(t(f) for t in tests)
    if name == "OR":
        left, right = tests
        return lambda f: left(f) or right(f)
    (child,) = tests
    return lambda f: not child(f)


def _compare(op: str, value: date, wanted: date) -> bool:
    if op == "BEFORE":
        return value < wanted
    if op == "ON":
        return value == wanted
    return value >= wanted  # SINCE


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _body_contains(c: Candidate, needle: str) -> bool:
    """Whether the decoded text parts hold ``needle``, reading a partial body further only
    until it is found: a hit in a prefix is a hit in the whole (see :func:`body_text`)."""
    body = c.raw
    if not isinstance(body, Prefix):
        return _contains(body_text(body, c.meta), needle)
    while True:
        if _contains(body_text(body.data, c.meta, complete=body.complete), needle):
            return True
        if not body.grow():
            return False


def body_text(raw: bytes | None, meta: Json | None, *, complete: bool = True) -> str:
    """The text parts of a message, decoded, joined: what BODY searches.

    Of an incomplete message (``raw`` is only its start), a part cut short is kept only when
    its bytes are its text (7bit, 8bit, binary): what is returned is then part of the whole
    message's text, never text it does not have."""
    if raw is None or meta is None:
        return ""
    pieces: list[str] = []
    _collect(raw, meta["part"], pieces, complete or len(raw))
    return "\n".join(pieces)


def _collect(raw: bytes, part: Json, pieces: list[str], complete: bool | int) -> None:
    # ``complete`` is True, or the length of the prefix held.
    if "parts" in part:
        for child in part["parts"]:
            _collect(raw, child, pieces, complete)
        return
    message = part.get("message")
    if message is not None:
        start, end = message["part"]["header"]
        if complete is not True and start >= complete:
            return  # not read yet: no piece, not even an empty one and its separator
        pieces.append(raw[start:end].decode("utf-8", "replace"))
        _collect(raw, message["part"], pieces, complete)
        return
    if part["type"] != "text":
        return
    start, end = part["body"]
    encoding = part.get("encoding", "7bit")
    if complete is not True and (start >= complete or (end > complete and encoding in _ENCODED)):
        return  # not read yet, or cut short and decoded only once whole
    data = raw[start:end]
    try:
        if encoding == "base64":
            data = base64.b64decode(data, validate=False)
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    charset = dict((k, v) for k, v in part.get("params", [])).get("charset", "utf-8")
    try:
        pieces.append(data.decode(charset, "replace"))
    except LookupError:
        pieces.append(data.decode("utf-8", "replace"))
