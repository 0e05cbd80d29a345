"""What SORT and THREAD compare (RFC 5256) of a message, and the compact form sealed with it.

A message's sent date, base subject, first addresses and thread links come from its parsed
structure (:func:`mime.analyse`). Worked out from it at a folder's first SORT, they cost a
decryption and a JSON decoding of each structure, a date parse and the base-subject rules:
at 20,000 messages about half a second, where Dovecot reads its cache file (issue 20). They are
therefore worked out once, at delivery, and sealed beside the message under its data key
(``blobs.sortkeys``, migration 0025) in a small JSON list: a first SORT decrypts and decodes
that alone. Messages stored before, and a stored form of a version this code does not know,
are worked out from their structure, reading only the envelope and the References field
(:func:`keys_from`). IMAP keeps what it read in its per-process cache
(:mod:`mssante.imap.sortkeys`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from mssante.crypto import open_small
from mssante.store.blobs import BlobReader, Reads, envelope_and_field, parse_meta, rows_of
from mssante.store.mime import decode_value

Json = dict[str, Any]

_TRAILER = re.compile(r"(\s*\(fwd\))+\s*$|\s+$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^\s*(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*", re.IGNORECASE)
_LEADING_BLOB = re.compile(rf"^\s*{_BLOB}")
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.IGNORECASE | re.DOTALL)
_MSG_ID = re.compile(r"<[^<>\s]+>")
# The first characters a leader, a leading blob or a [Fwd: ] wrapper can start with, besides
# whitespace (a trailer ends with ")" or whitespace).
_MAY_LEAD = frozenset("[rRfF")

# The Date field as RFC 5322 §3.3 writes it (what nearly every client sends): read directly.
# Anything else (obsolete zones such as "GMT" or "EST", two-digit years, comments) goes to the
# standard library's parser, which the fast reading agrees with (tests/test_imap_sortkeys.py).
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+([1-9]\d{3})\s+"
    r"(\d{2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})\s*"
)


def sent_timestamp(raw: str | None) -> float | None:
    """The Date field as seconds since the epoch (UTC); None when missing or unreadable."""
    if not raw:
        return None
    match = _DATE.fullmatch(raw)
    if match is not None and (month := _MONTHS.get(match[2].lower())) is not None:
        hour, minute, second = int(match[4]), int(match[5]), int(match[6] or 0)
        offset = (int(match[8]) * 60 + int(match[9])) * 60
        if hour < 24 and minute < 60 and second < 60 and offset < 86400:
            try:
                days = date(int(match[3]), month, int(match[1])).toordinal() - _EPOCH_DAY
            except ValueError:
                pass  # an impossible day: as the standard parser judges it
            else:
                local = days * 86400 + hour * 3600 + minute * 60 + second
                return float(local + offset if match[7] == "-" else local - offset)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def base_subject(subject: str | None) -> str:
    """RFC 5256 §2.1: the subject without ``Re:``, ``Fwd:``, ``[list]`` leaders, ``(fwd)``
    trailers and ``[Fwd: …]`` wrappers, whitespace collapsed; compared case-insensitively."""
    return _base_of(_plain(subject))


def _plain(subject: str | None) -> str:
    """The subject decoded (RFC 2047), its whitespace collapsed."""
    return " ".join(decode_value(subject or "").split())


def _base_of(text: str) -> str:
    """:func:`base_subject` of a subject already made :func:`_plain`."""
    first, last = text[:1], text[-1:]
    if not first or (first not in _MAY_LEAD and last != ")" and not first.isspace() and not last.isspace()):
        return text.upper()  # no leader, trailer or wrapper can match: most subjects
    while True:
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        while True:
            stripped = _LEADER.sub("", text, count=1)
            if stripped == text:
                blob = _LEADING_BLOB.match(text)
                if blob and text[blob.end() :].strip():
                    stripped = text[blob.end() :]
            if stripped == text:
                break
            text = stripped
        wrapped = _FWD_WRAP.match(text)
        if not wrapped:
            return text.upper()
        text = wrapped.group(1)


class SortKeys(NamedTuple):
    """One message content's SORT and THREAD keys (a tuple: made for every message of a
    folder at its first SORT, and a tuple of plain values is made fastest and is left alone by
    the cyclic garbage collector)."""

    sent: float | None  # the Date field (epoch seconds); None: the arrival date stands in
    subject: str  # the base subject, upper-cased
    reply: bool  # the subject was a reply or a forward (it differs from its base)
    first_from: str  # each field's first mailbox, upper-cased ("" when none)
    first_to: str
    first_cc: str
    display_from: str  # RFC 5957: each field's first address as shown, upper-cased
    display_to: str
    message_id: str | None  # the first <id> of Message-ID
    # The thread's ancestors, oldest first (References, else In-Reply-To's first id); None when
    # only the envelope was read (SORT needs no more).
    parents: tuple[str, ...] | None


def _first_mailbox(envelope: Json, name: str) -> str:
    # The first address's mailbox part, a group's name included (what Dovecot compares).
    for _name, _adl, mailbox, _host in envelope.get(name) or ():
        return (mailbox or "").upper()
    return ""


def _first_display(envelope: Json, name: str) -> str:
    """RFC 5957 §3: the first address's display name (encoded words decoded) unless empty, else
    its mailbox@host, else its mailbox; "" when the field has none."""
    for display, _adl, mailbox, host in envelope.get(name) or ():
        shown = decode_value(display) if display else ""
        if shown:
            return shown.upper()
        return (f"{mailbox}@{host}" if mailbox and host else mailbox or "").upper()
    return ""


def _header(meta: Json, name: str) -> str | None:
    for key, value in meta.get("headers", []):
        if key.lower() == name:
            return str(value)
    return None


def keys_of(meta: Json | None) -> SortKeys:
    """The keys of a message from its stored structure (the envelope alone, or with its
    header index for the thread links)."""
    meta = meta or {}
    envelope: Json = meta.get("envelope") or {}
    if "headers" not in meta:
        return _keys(envelope, None)
    return _keys(envelope, _parents(envelope, _header(meta, "references")))


def keys_from(data: bytes, *, threads: bool) -> SortKeys:
    """:func:`keys_of` the structure sealed at delivery (decrypted), reading only what the
    keys need: the envelope, and for ``threads`` the ``References`` field, not the whole header
    index and body structure, whose decoding was most of a first THREAD's time."""
    if not threads:
        return keys_of(parse_meta(data, "envelope"))
    found = envelope_and_field(data, "References")
    if found is None:
        return keys_of(parse_meta(data))  # laid out otherwise: read whole
    envelope, references = found
    return _keys(envelope, _parents(envelope, references))


def _parents(envelope: Json, references: str | None) -> tuple[str, ...]:
    """The thread's ancestors: References' ids, else In-Reply-To's first id."""
    refs = _MSG_ID.findall(references or "")
    if not refs:
        refs = _MSG_ID.findall(envelope.get("in_reply_to") or "")[:1]
    return tuple(refs)


def _keys(envelope: Json, parents: tuple[str, ...] | None) -> SortKeys:
    plain = _plain(envelope.get("subject"))
    subject = _base_of(plain)
    ids = _MSG_ID.findall(envelope.get("message_id") or "")
    return SortKeys(
        sent=sent_timestamp(envelope.get("date")),
        subject=subject,
        reply=subject != plain.upper(),
        first_from=_first_mailbox(envelope, "from"),
        first_to=_first_mailbox(envelope, "to"),
        first_cc=_first_mailbox(envelope, "cc"),
        display_from=_first_display(envelope, "from"),
        display_to=_first_display(envelope, "to"),
        message_id=ids[0] if ids else None,
        parents=parents,
    )


# The stored form: a JSON list, this version's mark first, then the keys in SortKeys' order.
# A change of the rules above changes the mark: keys stored by older rules are then worked out
# again from the structure instead of being trusted.
_FORMAT = "k1"
_DECODER = json.JSONDecoder()
_STORED = "SELECT id, key_id, wrapped_key, sortkeys FROM blobs WHERE id IN_IDS AND sortkeys IS NOT NULL"


def stored(keys: SortKeys) -> bytes:
    """The form sealed beside a message at delivery (keys worked out with its thread links)."""
    return json.dumps([_FORMAT, *keys], separators=(",", ":")).encode()


def from_stored(data: bytes) -> SortKeys | None:
    """The keys of a stored form, or None when it is of a format this version does not know."""
    values = _DECODER.decode(data.decode())  # (json.loads would first sniff the bytes' encoding)
    if not isinstance(values, list) or len(values) != len(SortKeys._fields) + 1 or values[0] != _FORMAT:
        return None
    values[-1] = tuple(values[-1]) if values[-1] is not None else None  # the parents
    return SortKeys._make(values[1:])


def read(reader: BlobReader, db: Reads, blob_ids: list[int], *, threads: bool) -> dict[int, SortKeys]:
    """The keys of each message still stored: their sealed form (one query per 500), or for
    those without one, from their structure (``threads``: with the thread links)."""
    out: dict[int, SortKeys] = {}
    for i in range(0, len(blob_ids), 500):
        rows = rows_of(db, *reader.ids_query(_STORED, blob_ids[i : i + 500]))
        for blob_id, key_id, wrapped, sealed in rows:
            keys = from_stored(open_small(reader.data_key(key_id, wrapped), sealed, "sort"))
            if keys is not None:
                out[blob_id] = keys
    rest = [blob_id for blob_id in blob_ids if blob_id not in out]
    if rest:
        out.update(reader.structures(db, rest, lambda data: keys_from(data, threads=threads)))
    return out
