"""What SORT and THREAD compare (RFC 5256), worked out once per message content.

A message's sent date, base subject, first addresses and thread links come from the structure
the store sealed at delivery; reading them back costs a decryption, a parse and, per message, a
date parse and the base-subject rules. Webmail asks the same ``SORT`` at every page, over the
whole folder: at 20,000 messages each one cost most of a second, where Dovecot answers from its
cache file in tens of milliseconds (issue 20). A message's content never changes, so its keys
are kept by content id in a bounded :class:`KeyCache`, one per store, that every session of the
process shares; evicted keys are simply worked out again.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, date
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from mssante.imap.perstore import PerStore
from mssante.store.blobs import envelope_and_field, parse_meta
from mssante.store.mime import decode_value

Json = dict[str, Any]

# The memory the kept keys may take, estimated (:func:`footprint`): about 500 bytes a message,
# 900 with a References field of five ids; 60,000 messages or so sort from memory, and a folder
# larger than that reads again, at each SORT, the share that no longer fits.
KEPT_BYTES = 32 * 2**20

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


def footprint(keys: SortKeys) -> int:
    """Bytes the keys take in memory, as measured with ``tracemalloc`` (within 10 %): a long
    References field is what makes a message's keys large."""
    addresses = (keys.first_from, keys.first_to, keys.first_cc, keys.display_from, keys.display_to)
    text = len(keys.subject) + sum(len(a) for a in addresses)
    parents = keys.parents or ()
    return 340 + text + len(keys.message_id or "") + sum(60 + len(p) for p in parents)


class KeyCache:
    """Keys by message content id (never reused within a database), the least recently used
    dropped beyond ``limit`` bytes (:func:`footprint`). Used from the event loop's thread only."""

    def __init__(self, limit: int = KEPT_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._kept: OrderedDict[int, SortKeys] = OrderedDict()

    def lookup(self, blob_ids: Iterable[int], *, threads: bool) -> dict[int, SortKeys]:
        """The keys kept of ``blob_ids`` (``threads``: only those with their thread links)."""
        kept, found = self._kept, {}
        for blob_id in blob_ids:
            keys = kept.get(blob_id)
            if keys is not None and not (threads and keys.parents is None):
                kept.move_to_end(blob_id)
                found[blob_id] = keys
        return found

    def add(self, blob_id: int, keys: SortKeys) -> None:
        replaced = self._kept.pop(blob_id, None)
        if replaced is not None:
            self.size -= footprint(replaced)
        self._kept[blob_id] = keys
        self.size += footprint(keys)
        while self.size > self.limit and self._kept:
            _evicted, old = self._kept.popitem(last=False)
            self.size -= footprint(old)

    def __len__(self) -> int:
        return len(self._kept)


key_cache = PerStore(KeyCache)  # the keys kept for each store
