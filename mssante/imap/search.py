"""SEARCH evaluation (RFC 3501 §6.4.4) over a session's messages.

Flags, sizes, dates, UIDs and numbers come from the session's own state; header keys from
the header index the store cached at delivery (decoded RFC 2047 values); only BODY and TEXT
need the message itself, which is then decrypted, and its text parts decoded from their
transfer encoding and charset, so that a search for ``ordonnance`` finds it in a base64 or
quoted-printable body. Matching is case-insensitive substring matching, as the RFC asks.
"""

from __future__ import annotations

import base64
import binascii
import quopri
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_to_datetime
from typing import Any

from mssante.imap.commands import SearchKey
from mssante.imap.mailbox import Entry

Json = dict[str, Any]

_FLAG_KEYS = {
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
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}


@dataclass
class Candidate:
    """One message under test; ``meta`` and ``raw`` are loaded only when the program needs them."""

    msn: int
    entry: Entry
    largest_msn: int
    largest_uid: int
    meta: Json | None = None
    raw: bytes | None = None


def needs(key: SearchKey) -> tuple[bool, bool]:
    """(needs the header index, needs the body) for a search program."""
    if key.name in ("AND", "OR", "NOT"):
        meta = body = False
        for child in key.args:
            assert isinstance(child, SearchKey)
            m, b = needs(child)
            meta, body = meta or m, body or b
        return meta, body
    if key.name in ("BODY", "TEXT"):
        return True, True
    return key.name in (*_HEADER_KEYS, "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE"), False


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
    if name in ("ALL", "OLD"):  # \Recent is never set (RFC 9051 dropped it), so OLD is ALL
        return True
    if name in ("NEW", "RECENT"):
        return False
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return (flag in entry.flags) is present
    if name in ("KEYWORD", "UNKEYWORD"):
        wanted = str(args[0]).lower()
        has = any(f.lower() == wanted for f in entry.flags)
        return has is (name == "KEYWORD")
    if name == "LARGER":
        return entry.size > int(str(args[0]))
    if name == "SMALLER":
        return entry.size < int(str(args[0]))
    if name == "SEQSET":
        return args[0].contains(c.msn, c.largest_msn)  # type: ignore[attr-defined,no-any-return]
    if name == "UID":
        return args[0].contains(entry.uid, c.largest_uid)  # type: ignore[attr-defined,no-any-return]
    if name in ("BEFORE", "ON", "SINCE"):
        return _compare(name, entry.internaldate.date(), args[0])  # type: ignore[arg-type]
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = _sent_date(c.meta)
        return sent is not None and _compare(name[4:], sent, args[0])  # type: ignore[arg-type]
    if name in _HEADER_KEYS:
        return _header_contains(c.meta, _HEADER_KEYS[name], str(args[0]))
    if name == "HEADER":
        return _header_contains(c.meta, str(args[0]), str(args[1]))
    if name == "BODY":
        return _contains(body_text(c.raw, c.meta), str(args[0]))
    if name == "TEXT":
        needle = str(args[0])
        headers = "\n".join(f"{n}: {v}" for n, v in (c.meta or {}).get("headers", []))
        return _contains(headers, needle) or _contains(body_text(c.raw, c.meta), needle)
    raise ValueError(f"unknown search key {name}")


def _compare(op: str, value: date, wanted: date) -> bool:
    if op == "BEFORE":
        return value < wanted
    if op == "ON":
        return value == wanted
    return value >= wanted  # SINCE


def _sent_date(meta: Json | None) -> date | None:
    raw = (meta or {}).get("envelope", {}).get("date")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw).date()
    except (TypeError, ValueError, IndexError):
        return None


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _header_contains(meta: Json | None, field: str, needle: str) -> bool:
    wanted = field.lower()
    for name, value in (meta or {}).get("headers", []):
        if name.lower() == wanted and _contains(value, needle):
            return True
    return False


def body_text(raw: bytes | None, meta: Json | None) -> str:
    """The text parts of a message, decoded, joined: what BODY searches."""
    if raw is None or meta is None:
        return ""
    pieces: list[str] = []
    _collect(raw, meta["part"], pieces)
    return "\n".join(pieces)


def _collect(raw: bytes, part: Json, pieces: list[str]) -> None:
    if "parts" in part:
        for child in part["parts"]:
            _collect(raw, child, pieces)
        return
    message = part.get("message")
    if message is not None:
        start, end = message["part"]["header"]
        pieces.append(raw[start:end].decode("utf-8", "replace"))
        _collect(raw, message["part"], pieces)
        return
    if part["type"] != "text":
        return
    start, end = part["body"]
    data = raw[start:end]
    encoding = part.get("encoding", "7bit")
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
