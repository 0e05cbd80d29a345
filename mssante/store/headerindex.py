"""What header SEARCH matches of each message, in a compact form: sealed at delivery, kept
decoded in a bounded per-process cache.

A header SEARCH (SUBJECT, FROM, HEADER, SENTSINCE…) used to decrypt and JSON-decode each
candidate's whole parsed structure (envelope, header index, body structure) on every search:
about 30 times Dovecot's time, almost all of it in ``json``. What it needs is now one casefolded
string per message, its header index and the searchable forms of its From/To/Cc/Bcc addresses,
and the day of its ``Date:`` (:class:`Fields`). Delivery seals that form beside the structure,
under the same data key (``blobs.search``, migration 0022), so a first search decrypts a short
text and splits it, no JSON; blobs stored earlier are matched from their structure.

A message's content never changes and a blob id is never reused (migration 0021), so what was
read once is kept: the cache is per process, shared by every session of the store, bounded by
:data:`CACHE_BYTES` (oldest entries out first) and never written anywhere; the health data it
holds is in memory only, as the decrypted messages a FETCH handles are. Matching is a substring
test on the string, which rejects most messages at C speed, then a look at the field itself.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_to_datetime
from typing import Any

from mssante.crypto import open_small
from mssante.store import addresses
from mssante.store.blobs import BlobReader, Reads, id_list, rows_of
from mssante.store.mime import decode_value

# Separators inside the string: records, name from value, and the mark of an address record
# (header names are printable ASCII, so neither can occur in them).
RECORD, VALUE, ADDRESS = "\x1e", "\x1f", "\x1d"
_SEPARATORS = (RECORD, VALUE, ADDRESS)

CACHE_BYTES = 64 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # the entry's objects and its dict slot, roughly, beside its text


@dataclass(frozen=True, slots=True)
class Fields:
    """The searchable header fields of one message.

    ``text`` is ``\\x1ename\\x1fvalue`` per header (name lower-cased, value RFC 2047-decoded as
    in the header index) and ``\\x1e\\x1dfield\\x1fname <local@domain>, …`` per address field,
    all casefolded. A message whose values hold one of the separators keeps its
    records as a tuple instead (``records``), so that no needle can match across them."""

    text: str
    sent: int  # date.toordinal() of the Date: header, 0 when absent or unparsable
    records: tuple[tuple[str, str], ...] | None = None


EMPTY = Fields("", 0)


def fields_of(meta: dict[str, Any]) -> Fields:
    """The searchable fields of a message from its parsed structure (:func:`mime.analyse`)."""
    records = [(str(name).lower(), str(value).casefold()) for name, value in meta.get("headers", [])]
    envelope = meta.get("envelope") or {}
    for field in ("from", "to", "cc", "bcc"):
        parsed = envelope.get(field)
        if parsed:
            records.append((ADDRESS + field, _decoded(addresses.searchable(parsed)).casefold()))
    sent = _sent(envelope.get("date"))
    held = "".join(("" if name.startswith(ADDRESS) else name) + value for name, value in records)
    if RECORD in held or VALUE in held or ADDRESS in held:
        return Fields("", sent, tuple(records))
    return Fields("".join(f"{RECORD}{name}{VALUE}{value}" for name, value in records), sent)


_FORMAT = "1"  # of the stored form: version, sent day and text, separated by _STORED
_STORED = "\x1c"


def stored(fields: Fields) -> bytes | None:
    """The form sealed beside a message at delivery (UTF-8 text, nothing to parse but a split);
    None for the rare message whose values hold a separator, then matched from its structure."""
    if fields.records is not None:
        return None
    return f"{_FORMAT}{_STORED}{fields.sent}{_STORED}{fields.text}".encode("utf-8", "surrogatepass")


def from_stored(data: bytes) -> Fields | None:
    """The fields of a stored form, or None when it is of a format this version does not know."""
    version, _, rest = data.decode("utf-8", "surrogatepass").partition(_STORED)
    if version != _FORMAT:
        return None
    sent, _, text = rest.partition(_STORED)
    return Fields(text, int(sent))


def _decoded(value: str) -> str:
    # decode_value() returns a value without an encoded word (``=?charset?q?…?=``) unchanged:
    # skipping it then spares most of the cost of building this index.
    return decode_value(value) if "=?" in value else value


def _sent(raw: str | None) -> int:
    if not raw:
        return 0
    try:
        return parsedate_to_datetime(raw).date().toordinal()
    except Exception:  # whatever the parser refuses is no date; delivery must not fail on it
        return 0


Test = Callable[[Fields], bool]


def header_test(name: str, needle: str) -> Test:
    """Whether a header called ``name`` holds ``needle``, both compared case-insensitively; built
    once per search program, so that the needle is folded once, not once per message."""
    wanted = name.lower()
    if any(s in wanted for s in _SEPARATORS):
        return _never  # no header is called so (and address records must not answer)
    return _field_test(wanted, needle.casefold())


def address_test(field: str, needle: str) -> Test:
    """Whether the parsed addresses of From/To/Cc/Bcc (``field`` in lower case) hold ``needle``;
    an empty needle asks whether the header is there at all, as for any header key."""
    return _field_test(ADDRESS + field, needle.casefold()) if needle else _field_test(field, "")


def sent_test(op: str, day: date) -> Test:
    """SENTBEFORE/SENTON/SENTSINCE (``op`` without SENT): a message without a date matches none."""
    wanted = day.toordinal()  # >= 1: a message without a date (0) is never ON or SINCE
    if op == "BEFORE":
        return lambda f: 0 < f.sent < wanted
    if op == "ON":
        return lambda f: f.sent == wanted
    return lambda f: f.sent >= wanted


def _never(fields: Fields) -> bool:
    return False


def _field_test(wanted: str, folded: str) -> Test:
    marker = RECORD + wanted + VALUE

    def test(fields: Fields) -> bool:
        if fields.records is not None:
            return any(n == wanted and folded in v for n, v in fields.records)
        text = fields.text
        if folded not in text:
            return False  # most messages: one scan at C speed
        at = text.find(marker)
        while at != -1:
            start = at + len(marker)
            end = text.find(RECORD, start)
            if end == -1:
                return text.find(folded, start) != -1
            if text.find(folded, start, end) != -1:
                return True
            at = text.find(marker, end)
        return False

    return test


class HeaderIndex:
    """The per-process cache of :class:`Fields` by blob id, for one store's database."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self._items: dict[int, Fields] = {}
        self._bytes = 0
        self._budget = budget
        self._lock = threading.Lock()  # filled from the store's reader threads

    def cached(self, blob_ids: list[int]) -> dict[int, Fields] | None:
        """The fields of every message when all are held (no read needed), else None."""
        items = self._items
        out: dict[int, Fields] = {}
        for blob_id in blob_ids:
            found = items.get(blob_id)
            if found is None:
                return None
            out[blob_id] = found
        return out

    def fields(
        self,
        reader: BlobReader,
        db: Reads,
        blob_ids: list[int],
        metas: dict[int, dict[str, Any]] | None = None,
    ) -> dict[int, Fields]:
        """The fields of each message, from the cache or derived from its structure (taken
        from ``metas`` when the caller already read them, read here otherwise)."""
        items = self._items
        out: dict[int, Fields] = {}
        missing: list[int] = []
        for blob_id in blob_ids:
            found = items.get(blob_id)
            if found is None:
                missing.append(blob_id)
            else:
                out[blob_id] = found
        if not missing:
            return out
        new: dict[int, Fields] = {}
        if metas is None:
            new = _read_stored(reader, db, missing)
            missing = [b for b in missing if b not in new]
        if missing:
            if metas is None or any(b not in metas for b in missing):
                metas = reader.meta(db, missing)
            new.update((b, fields_of(metas[b])) for b in missing if b in metas)
        out.update(new)
        self._keep(new)
        return out

    def _keep(self, new: dict[int, Fields]) -> None:
        with self._lock:
            for blob_id, fields in new.items():
                if blob_id in self._items:
                    continue
                self._items[blob_id] = fields
                self._bytes += _cost(fields)
            while self._bytes > self._budget and self._items:
                oldest = next(iter(self._items))
                self._bytes -= _cost(self._items.pop(oldest))


def _read_stored(reader: BlobReader, db: Reads, blob_ids: list[int]) -> dict[int, Fields]:
    """The stored forms of the messages that have one (delivered since migration 0022)."""
    out: dict[int, Fields] = {}
    for i in range(0, len(blob_ids), 500):
        rows = rows_of(
            db,
            "SELECT id, key_id, wrapped_key, search FROM blobs "
            f"WHERE id IN ({id_list(blob_ids[i : i + 500])}) AND search IS NOT NULL",
        )
        for blob_id, key_id, wrapped, sealed in rows:
            fields = from_stored(open_small(reader.data_key(key_id, wrapped), sealed, "search"))
            if fields is not None:
                out[blob_id] = fields
    return out


def _cost(fields: Fields) -> int:
    held = len(fields.text) if fields.records is None else sum(len(n) + len(v) for n, v in fields.records)
    return held + _ENTRY_OVERHEAD


_INDEXES: weakref.WeakKeyDictionary[object, HeaderIndex] = weakref.WeakKeyDictionary()
_INDEXES_LOCK = threading.Lock()


def index_of(store: object) -> HeaderIndex:
    """The cache of a store (blob ids are per database: each store has its own)."""
    with _INDEXES_LOCK:
        index = _INDEXES.get(store)
        if index is None:
            index = _INDEXES[store] = HeaderIndex()
        return index
