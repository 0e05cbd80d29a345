"""FETCH responses: one message at a time, bodies streamed from the store.

A response is a list of pieces, either bytes or a :class:`BlobSlice` — a byte range of a
stored message that the connection copies out chunk by chunk, so a 20 MB ``BODY[]`` never
sits whole in memory. Parsed structures (ENVELOPE, BODYSTRUCTURE, section offsets) come from
the store's cached analysis, loaded in batches.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mssante.imap.commands.values import FetchItem, Section
from mssante.imap.fieldcache import Key, field_cache
from mssante.imap.mailbox import Entry, MessageTable, SelectedMailbox
from mssante.imap.render import (
    apply_partial,
    body_structure,
    envelope,
    find_part,
    header_fields,
    internaldate,
    section_range,
)
from mssante.imap.snapshots import BLOCK_ROWS, KEEP_SHAPES
from mssante.store.store import MessageStore
from mssante.store.types import MessageGone

Json = dict[str, Any]

# Below this size a section is read in one go; above, it is streamed.
STREAM_THRESHOLD = 256 * 1024

_ALIASES = {"RFC822": Section(), "RFC822.HEADER": Section((), "HEADER"), "RFC822.TEXT": Section((), "TEXT")}


@dataclass(frozen=True)
class BlobSlice:
    blob_id: int
    start: int
    end: int


Piece = bytes | BlobSlice


def needs_meta(items: tuple[FetchItem, ...]) -> bool:
    """Whether the items need the parsed structure (everything but whole-message reads)."""
    for item in items:
        if item.name in ("ENVELOPE", "BODYSTRUCTURE") or (item.name == "BODY" and item.section is None):
            return True
        if item.section is not None and (item.section.part or item.section.text):
            return True
        if item.name in ("RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"):
            return True
    return False


async def message_response(
    store: MessageStore,
    msn: int,
    entry: Entry,
    items: tuple[FetchItem, ...],
    meta: Json | None,
    *,
    utf8: bool = False,
) -> list[Piece]:
    """``* <msn> FETCH (...)`` for one message, as pieces."""
    pieces: list[Piece] = [b"* %d FETCH (" % msn]
    first = True
    for item in items:
        if not first:
            pieces.append(b" ")
        first = False
        pieces.extend(await _item(store, entry, item, meta, utf8))
    pieces.append(b")\r\n")
    return _merge(pieces)


def meta_part(items: tuple[FetchItem, ...]) -> str | None:
    """ "envelope" when ENVELOPE is the only structure the items need, else None (all of it)."""
    needing = [i for i in items if needs_meta((i,))]
    return "envelope" if needing and all(i.name == "ENVELOPE" for i in needing) else None


def has_content(items: tuple[FetchItem, ...]) -> bool:
    """Whether any item reads message content (then responses are built one by one)."""
    return any(item.section is not None or item.name in _ALIASES for item in items)


_COLUMN_ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"})


def column_lines(
    table: MessageTable,
    pairs: list[tuple[int, int]],
    items: tuple[FetchItem, ...],
    *,
    utf8: bool = False,
) -> bytes | None:
    """``* n FETCH (...)`` of many messages at once, when every item is read from the columns
    or from the folder's renderings (``UID FETCH 1:* (FLAGS)``, a warm ``FETCH 1:* ENVELOPE``):
    one format and no object per message. None when some item needs more (the caller then
    renders message by message)."""
    if any(
        i.section is not None or (i.name not in _COLUMN_ITEMS and i.name not in STRUCTURE_ITEMS)
        for i in items
    ):
        return None
    rendered = [table.rendered.items.get(i.name, {}) for i in items if i.name in STRUCTURE_ITEMS]
    if rendered and utf8:
        return None  # UTF-8 renderings are made for the session, never kept
    if any(uid not in found for found in rendered for _, uid in pairs):
        return None
    names = [i.name for i in items]
    pattern = (
        b"* %d FETCH ("
        + b" ".join(b"%s" if name in STRUCTURE_ITEMS else _PATTERNS[name] for name in names)
        + b")\r\n"
    )
    if not pairs:
        return b""
    fast = _contiguous_lines(table, pairs, names, pattern, rendered)
    if fast is not None:
        return fast
    flags = table.flag_bytes
    is_recent = table.is_recent
    lines = []
    columns, at = table.locate(pairs[0][1])
    for n, uid in pairs:
        # In UID order: the next message is usually the next row.
        if at + 1 < len(columns.uid) and columns.uid[at + 1] == uid:
            at += 1
        elif columns.uid[at] != uid:
            columns, at = table.locate(uid)
        values: list[int | bytes] = [n]
        structures = iter(rendered)
        for name in names:
            if name == "UID":
                values.append(uid)
            elif name == "FLAGS":
                values.append(flags(columns.flags[at], is_recent(uid)))
            elif name == "RFC822.SIZE":
                values.append(columns.size[at])
            elif name == "MODSEQ":
                values.append(columns.modseq[at])
            elif name == "INTERNALDATE":
                values.append(internaldate(datetime.fromtimestamp(columns.date[at], UTC)))
            else:
                values.append(next(structures)[uid])
        lines.append(pattern % tuple(values))
    return b"".join(lines)


def _contiguous_lines(
    table: MessageTable,
    pairs: list[tuple[int, int]],
    names: list[str],
    pattern: bytes,
    rendered: list[dict[int, bytes]],
) -> bytes | None:
    """The common case of :func:`column_lines`: the messages are consecutive rows of one
    column set (``1:*`` of a table nobody expunged under), so each item is a slice of its
    column and each line one ``%`` of a zipped row. None otherwise."""
    uids = [uid for _, uid in pairs]
    columns, start = table.locate(uids[0])
    stop = start + len(uids)
    if columns.uid[start:stop].tolist() != uids:
        return None
    values: list[Any] = [[n for n, _ in pairs]]
    structures = iter(rendered)
    for name in names:
        if name == "UID":
            values.append(uids)
        elif name == "FLAGS":
            indexes = columns.flags[start:stop]
            if table.recent or table.recent_range:
                shown = [table.flag_bytes(i, table.is_recent(u)) for i, u in zip(indexes, uids, strict=True)]
            else:
                by_index = {i: table.flag_bytes(i) for i in set(indexes)}
                shown = [by_index[i] for i in indexes]
            values.append(shown)
        elif name == "RFC822.SIZE":
            values.append(columns.size[start:stop])
        elif name == "MODSEQ":
            values.append(columns.modseq[start:stop])
        elif name == "INTERNALDATE":
            values.append([internaldate(datetime.fromtimestamp(d, UTC)) for d in columns.date[start:stop]])
        else:
            found = next(structures)
            values.append([found[uid] for uid in uids])
    return _format(pattern, values, len(uids))


def column_only(items: tuple[FetchItem, ...]) -> bool:
    """Whether every item is read from the message columns (``UID``, ``FLAGS``, ``MODSEQ``...),
    each once (a line then stays short, however many times a client repeats an item)."""
    names = {i.name for i in items}
    return len(names) == len(items) and all(i.section is None and i.name in _COLUMN_ITEMS for i in items)


def column_blocks(
    box: SelectedMailbox, spans: list[tuple[int, int]], items: tuple[FetchItem, ...]
) -> Iterator[bytes]:
    """``* n FETCH (...)`` of the messages at ``spans`` (positions in the session's numbering,
    see :meth:`~mssante.imap.mailbox.SelectedMailbox.spans`) when :func:`column_only`: a block
    of lines at a time, each rendered with one ``%`` over slices of the columns.

    Issue 20: ``UID FETCH 1:* (FLAGS)`` of 50,000 messages built a (number, UID) pair and a
    formatted row per message, every time. Blocks of the shared snapshot's rows are rendered
    once and kept on the snapshot for every session that still shows those rows as the
    snapshot has them (same numbering, flags and MODSEQs, no ``\\Recent`` among them); the
    other rows (a session's own flag changes, messages arrived since, \\Recent ones) are
    rendered for the session.
    """
    names = tuple(i.name for i in items)
    pattern = b"* %d FETCH (" + b" ".join(_PATTERNS[name] for name in names) + b")\r\n"
    table = box.entries
    uids = box.uids
    snapshot = table.unchanged_snapshot()
    kept: dict[int, bytes] | None = None  # the snapshot's blocks of these items, by number
    shared = 0  # positions below this are numbered and shown as in the snapshot
    if snapshot is not None:
        rows = snapshot.columns.uid
        if uids is rows or uids[: len(rows)] == rows:
            shared = len(rows)
        kept = snapshot.lines.get(names)
        if kept is None and len(snapshot.lines) < KEEP_SHAPES:
            kept = snapshot.lines[names] = {}
    for start, stop in spans:
        at = start
        while at < stop:
            block = at // BLOCK_ROWS
            end = min(stop, (block + 1) * BLOCK_ROWS)
            if kept is not None and at < shared:
                whole = min((block + 1) * BLOCK_ROWS, shared)  # the block's rows in the snapshot
                aligned = at == block * BLOCK_ROWS and whole <= stop
                if aligned and not table.any_recent(uids[at], uids[whole - 1]):
                    found = kept.get(block)
                    if found is None:
                        found = kept[block] = _rows(table, uids[at:whole], at + 1, names, pattern)
                    yield found
                    at = whole
                    continue
                end = min(end, shared)
            yield _rows(table, uids[at:end], at + 1, names, pattern)
            at = end


def _rows(table: MessageTable, uids: array[int], first: int, names: tuple[str, ...], pattern: bytes) -> bytes:
    """The lines of consecutive messages numbered from ``first``: from column slices when they
    are consecutive rows of one column set, else row by row."""
    count = len(uids)
    columns, start = table.locate(uids[0])
    stop = start + count
    if columns.uid[start:stop] != uids:
        pairs = list(zip(range(first, first + count), uids, strict=True))
        return column_lines(table, pairs, tuple(FetchItem(name) for name in names)) or b""
    values: list[Sequence[Any]] = [range(first, first + count)]
    for name in names:
        if name == "UID":
            values.append(uids)
        elif name == "FLAGS":
            indexes = columns.flags[start:stop]
            if table.any_recent(uids[0], uids[-1]):
                is_recent = table.is_recent
                values.append([table.flag_bytes(i, is_recent(u)) for i, u in zip(indexes, uids, strict=True)])
            else:
                shown = {i: table.flag_bytes(i) for i in set(indexes)}
                values.append(list(map(shown.__getitem__, indexes)))
        elif name == "RFC822.SIZE":
            values.append(columns.size[start:stop])
        elif name == "MODSEQ":
            values.append(columns.modseq[start:stop])
        else:  # INTERNALDATE
            values.append([internaldate(datetime.fromtimestamp(d, UTC)) for d in columns.date[start:stop]])
    return _format(pattern, values, count)


def _format(pattern: bytes, values: list[Sequence[Any]], count: int) -> bytes:
    """``count`` lines of ``pattern``, the i-th filled from the i-th value of each column: one
    ``%`` over the interleaved columns (the format is parsed in C, no tuple per line)."""
    width = len(values)
    flat: list[Any] = [None] * (width * count)
    for j, column in enumerate(values):
        flat[j::width] = column
    return (pattern * count) % tuple(flat)


_PATTERNS = {
    "UID": b"UID %d",
    "FLAGS": b"FLAGS %s",
    "RFC822.SIZE": b"RFC822.SIZE %d",
    "MODSEQ": b"MODSEQ (%d)",
    "INTERNALDATE": b"INTERNALDATE %s",
}


def metadata_response(
    msn: int, entry: Entry, items: tuple[FetchItem, ...], meta: Json | None, *, utf8: bool = False
) -> bytes:
    """``* <msn> FETCH (...)`` for items that need no content: built without awaiting."""
    return b"* %d FETCH (" % msn + b" ".join(_simple(entry, item, meta, utf8) for item in items) + b")\r\n"


def _simple(entry: Entry, item: FetchItem, meta: Json | None, utf8: bool) -> bytes:
    name = item.name
    if name == "UID":
        return b"UID %d" % entry.uid
    if name == "FLAGS":
        return b"FLAGS " + entry.flag_bytes()
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + internaldate(entry.internaldate)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % entry.size
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % entry.modseq
    if name in STRUCTURE_ITEMS and not utf8:
        cached = entry.rendered(name)
        if cached is not None:
            return cached
    assert meta is not None
    if name == "ENVELOPE":
        rendered = b"ENVELOPE " + envelope(meta["envelope"], utf8=utf8)
    elif name == "BODYSTRUCTURE":
        rendered = b"BODYSTRUCTURE " + body_structure(meta["part"], extended=True)
    elif name == "BODY" and item.section is None:
        rendered = b"BODY " + body_structure(meta["part"], extended=False)
    else:
        raise ValueError(f"{name} needs the message content")
    if not utf8:
        entry.keep_rendered(name, rendered)
    return rendered


STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY"})


def missing_structures(
    table: MessageTable, uids: list[int], items: tuple[FetchItem, ...], *, utf8: bool = False
) -> list[int]:
    """Blobs whose stored structure must still be read: not yet rendered for this folder.

    Renderings are kept per folder incarnation and UID (a UID names one content for the life
    of a UIDVALIDITY), shared by the sessions of the folder; UTF-8 renderings are not kept.
    A warm FETCH looks the UIDs up in the renderings, without a view per message.
    """
    names = [i.name for i in items if i.name in STRUCTURE_ITEMS and i.section is None]
    if not names:
        return []
    if not utf8:
        found = [table.rendered.items.get(name, {}) for name in names]
        uids = [uid for uid in uids if any(uid not in rendered for rendered in found)]
    return [table[uid].blob_id for uid in uids]


async def _item(
    store: MessageStore, entry: Entry, item: FetchItem, meta: Json | None, utf8: bool
) -> list[Piece]:
    name = item.name
    if name in _ALIASES:
        return await _section(store, entry, _ALIASES[name], None, meta, name.encode())
    if item.section is None:
        return [_simple(entry, item, meta, utf8)]
    if name in ("BINARY", "BINARY.SIZE"):
        return await _binary(store, entry, item, meta)
    if item.section.text in FIELD_LISTS:
        return await _fields(store, entry, item, meta)
    return await _section(store, entry, item.section, item.partial, meta, _label(item))


@functools.lru_cache(maxsize=256)
def _label(item: FetchItem) -> bytes:
    """How a content item is named in the response (``BODY[HEADER.FIELDS (DATE FROM …)]``),
    written once per item, not once per message."""
    return item.response_name().encode()


async def _section(
    store: MessageStore,
    entry: Entry,
    section: Section,
    partial: tuple[int, int] | None,
    meta: Json | None,
    label: bytes,
) -> list[Piece]:
    if not section.part and not section.text:
        start, end = 0, entry.size
    else:
        assert meta is not None
        found = section_range(meta["part"], section)
        if found is None:
            return [label + b" NIL"]
        start, end = found.start, found.end
    start, end = apply_partial(start, end, partial)
    size = end - start
    if size == 0:
        return [label + b' ""']
    if size <= STREAM_THRESHOLD:
        data = await store.body(entry.blob_id, start, end)
        return [label + b" {%d}\r\n" % len(data) + data]
    return [label + b" {%d}\r\n" % size, BlobSlice(entry.blob_id, start, end)]


FIELD_LISTS = frozenset({"HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def field_key(blob_id: int, section: Section) -> Key:
    """What a field list's answer is kept under: the content, the part, the list."""
    return (blob_id, section.part, section.fields, section.text == "HEADER.FIELDS.NOT")


async def _fields(store: MessageStore, entry: Entry, item: FetchItem, meta: Json | None) -> list[Piece]:
    """``BODY[…HEADER.FIELDS (…)]``: from the answers kept for every session
    (:mod:`mssante.imap.fieldcache`), else cut out of the header the structure places."""
    section, label = item.section, _label(item)
    assert section is not None
    kept, key = field_cache(store), field_key(entry.blob_id, section)
    data = kept.get(key)
    if data is None:
        if meta is None:  # (it was kept when the command began, and dropped since)
            meta = (await store.meta([entry.blob_id])).get(entry.blob_id)
            if meta is None:
                raise MessageGone(f"message content {entry.blob_id} no longer exists")
        found = section_range(meta["part"], section)
        if found is None:
            return [label + b" NIL"]
        assert found.fields is not None
        block = await store.body(entry.blob_id, found.start, found.end)
        data = header_fields(block, found.fields, exclude=found.exclude)
        kept.put(key, data)
    if item.partial is not None:
        low, high = apply_partial(0, len(data), item.partial)
        data = data[low:high]
    return [label + b" {%d}\r\n" % len(data) + data]


def wanted_structures(
    store: MessageStore, table: MessageTable, uids: list[int], items: tuple[FetchItem, ...], *, utf8: bool
) -> list[int]:
    """The contents whose stored structure a FETCH of ``items`` with content must read: all,
    when an item needs where a part lies; otherwise those with an ENVELOPE, BODY or
    BODYSTRUCTURE not yet rendered for the folder or a header field list not yet kept. A
    webmail's list page (BODYSTRUCTURE and a field list, fifty messages, at every view) then
    decodes no structure at all."""
    blobs = [table[uid].blob_id for uid in uids]
    if any(_places_a_part(item) for item in items):
        return blobs
    wanted = set(missing_structures(table, uids, items, utf8=utf8))
    lists = [item.section for item in items if item.section is not None and item.section.text in FIELD_LISTS]
    if lists:
        kept = field_cache(store)
        wanted.update(b for b in blobs if any(kept.get(field_key(b, s)) is None for s in lists))
    return [b for b in blobs if b in wanted]


def _places_a_part(item: FetchItem) -> bool:
    """Whether the item needs the structure to find its bytes (not a field list, which may be
    kept, nor ENVELOPE/BODY/BODYSTRUCTURE, which may be rendered)."""
    if item.name in STRUCTURE_ITEMS and item.section is None:
        return False
    if item.section is not None and item.section.text in FIELD_LISTS and item.name.startswith("BODY"):
        return False
    return needs_meta((item,))


class UnknownEncoding(Exception):
    """BINARY asked for a part whose Content-Transfer-Encoding cannot be undone (UNKNOWN-CTE)."""


async def _binary(store: MessageStore, entry: Entry, item: FetchItem, meta: Json | None) -> list[Piece]:
    """BINARY[part] and BINARY.SIZE[part] (RFC 3516): the part's content with its transfer
    encoding undone; sent as a literal8 (``~{n}``) when it holds a NUL byte."""
    assert meta is not None and item.section is not None
    label = _label(item)
    numbers = item.section.part
    part = find_part(meta["part"], numbers)
    if part is None:
        return [label + b" NIL"]
    start, end = (0, entry.size) if not numbers else part["body"]
    encoded = bool(numbers) and "parts" not in part and part.get("message") is None
    encoding = part.get("encoding", "7bit") if encoded else "binary"
    if encoding in _IDENTITY and end - start > STREAM_THRESHOLD:
        return await _binary_range(store, entry, item, label, start, end)
    data = await store.body(entry.blob_id, start, end) if end > start else b""
    if encoded:
        data = _decode(data, encoding)
    if item.name == "BINARY.SIZE":
        return [label + b" %d" % len(data)]
    low, high = apply_partial(0, len(data), item.partial)
    data = data[low:high]
    if not data:
        return [label + b' ""']
    return [label + (b" ~{%d}\r\n" if b"\0" in data else b" {%d}\r\n") % len(data) + data]


_IDENTITY = frozenset({"7bit", "8bit", "binary"})


async def _binary_range(
    store: MessageStore, entry: Entry, item: FetchItem, label: bytes, start: int, end: int
) -> list[Piece]:
    """A large BINARY section with nothing to decode: streamed like ``BODY[]``, after a first
    pass that looks for a NUL byte (which makes it a literal8), a chunk at a time."""
    if item.name == "BINARY.SIZE":
        return [label + b" %d" % (end - start)]
    low, high = apply_partial(start, end, item.partial)
    if high <= low:
        return [label + b' ""']
    nul = False
    async for chunk in store.stream(entry.blob_id, low, high):
        if b"\0" in chunk:
            nul = True
            break
    return [
        label + (b" ~{%d}\r\n" if nul else b" {%d}\r\n") % (high - low),
        BlobSlice(entry.blob_id, low, high),
    ]


def _decode(data: bytes, encoding: str) -> bytes:
    if encoding in _IDENTITY:
        return data
    try:
        if encoding == "base64":
            return base64.b64decode(data, validate=False)
        if encoding == "quoted-printable":
            return decode_quoted_printable(data)
    except (binascii.Error, ValueError):
        raise UnknownEncoding(f"The part's {encoding} content is damaged") from None
    raise UnknownEncoding(f"Unknown Content-Transfer-Encoding {encoding}")


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7: trailing white space of a line is not content, ``=`` ending a line
    (white space after it included) joins it to the next, ``=XX`` is a byte; a stray ``=`` is
    kept as written. (``quopri`` keeps trailing white space and misses ``= `` soft breaks.)"""
    out = bytearray()
    lines = data.split(b"\n")
    for index, line in enumerate(lines):
        line = line.rstrip(b"\r").rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out += _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line)
        if not soft and index < len(lines) - 1:
            out += b"\r\n"
    return bytes(out)


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join adjacent byte pieces so the connection writes few, larger buffers."""
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, bytes) and out and isinstance(out[-1], bytes):
            out[-1] = out[-1] + piece
        else:
            out.append(piece)
    return out
