"""Sealed blobs: encrypt a content once, store it in chunks, read it back by stream or range.

Sealing (CPU) happens before the write transaction, outside the single writer; storing is a
few inserts inside it. Reading unwraps the data key and opens only the chunks asked for,
which is what lets IMAP stream a large body or serve ``BODY[]<start.len>`` cheaply.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from mssante.crypto import KeyRing, SealedKey, new_data_key, open_chunks, open_small, seal_each, seal_small
from mssante.sqlfast import dialect_of, insert_many, run, timestamp
from mssante.store.kept import Kept, fetch_all
from mssante.store.models import Blob, BlobChunk
from mssante.store.spooled import Raw, SpooledMessage

blobs = cast(Table, Blob.__table__)
blob_chunks = cast(Table, BlobChunk.__table__)


# A content at least this large is sealed chunk by chunk as it is stored (in the writer's
# transaction), from its plaintext: sealed whole beforehand it would be held twice.
SEAL_AS_STORED = 1024 * 1024
# Chunks inserted per statement, by total size: small blobs of a group commit go in one.
_CHUNK_BATCH_BYTES = 256 * 1024
_CHUNK_COLUMNS = {"blob_id": "int8", "seq": "int4", "data": "bytea"}

Content = Raw  # in memory, or in a spool file (read a chunk at a time)


@dataclass(frozen=True)
class SealedBlob:
    """A content ready to store: digest for deduplication, wrapped key, sealed chunks and meta.

    A small content is sealed at once (``sealed``); a large one keeps its plaintext pieces
    and data key and is sealed by :meth:`chunks` as the chunks are inserted, so that only a
    chunk of it exists sealed at any time."""

    digest: bytes
    size: int
    key: SealedKey
    chunk_count: int
    chunk_size: int
    meta: bytes | None
    sealed: list[bytes] | None
    plain: tuple[Content, ...] = ()
    data_key: bytes = b""
    search: bytes | None = None  # the header fields SEARCH matches, sealed (headerindex.stored)
    sortkeys: bytes | None = None  # the keys SORT and THREAD compare, sealed (sortkeys.stored)

    def chunks(self) -> Iterator[bytes]:
        if self.sealed is not None:
            return iter(self.sealed)
        return seal_each(self.data_key, _pieces_by_chunk(self.plain, self.chunk_size), self.chunk_count)


def _pieces_by_chunk(pieces: tuple[Content, ...], chunk_size: int) -> Iterator[bytes | memoryview]:
    """The concatenation of ``pieces`` cut in chunks, each a view into its piece when it lies
    in one (no copy), else joined (the chunk that straddles a prefix and the message); a
    spooled piece is read a chunk at a time."""
    carry: list[bytes | memoryview] = []
    carried = 0
    empty = True
    for piece in pieces:
        if not len(piece):
            continue
        empty = False
        for segment in _segments(piece, chunk_size - carried, chunk_size):
            if not carried and len(segment) == chunk_size:
                yield segment
                continue
            carry.append(segment)
            carried += len(segment)
            if carried == chunk_size:
                yield b"".join(carry)
                carry, carried = [], 0
    if carried or empty:
        yield b"".join(carry)


def _segments(piece: Content, first: int, size: int) -> Iterator[bytes | memoryview]:
    """``piece`` in consecutive slices, ``first`` bytes then ``size`` at a time: views into
    it in memory, reads of its file when spooled."""
    if isinstance(piece, SpooledMessage):
        yield from piece.pieces(first, size)
        return
    view = memoryview(piece)
    pos, step = 0, first
    while pos < len(view):
        yield view[pos : pos + step]
        pos, step = pos + step, size


def _digest_input(pieces: tuple[Content, ...]) -> Iterator[bytes | bytearray]:
    for piece in pieces:
        if isinstance(piece, SpooledMessage):
            yield from piece.pieces()
        else:
            yield piece


def seal(
    keyring: KeyRing,
    data: Content,
    meta: dict[str, Any] | None,
    chunk_size: int,
    prefix: bytes = b"",
    search: bytes | None = None,
    sortkeys: bytes | None = None,
) -> SealedBlob:
    """Seal ``prefix + data`` (the prefix, a DKIM-Signature field, is never joined to the data
    by a copy), its parsed structure, the header fields SEARCH matches and the keys SORT
    compares (in the forms :func:`headerindex.stored` and :func:`sortkeys.stored` give) under
    one new data key."""
    data_key = new_data_key()
    pieces = (prefix, data) if prefix else (data,)
    size = len(prefix) + len(data)
    count = max(1, -(-size // chunk_size))
    later = size >= SEAL_AS_STORED
    return SealedBlob(
        digest=keyring.digest(_digest_input(pieces)),
        size=size,
        key=keyring.wrap(data_key),
        chunk_count=count,
        chunk_size=chunk_size,
        meta=seal_small(data_key, json.dumps(meta, separators=(",", ":")).encode())
        if meta is not None
        else None,
        sealed=None if later else list(seal_each(data_key, _pieces_by_chunk(pieces, chunk_size), count)),
        plain=pieces if later else (),
        data_key=data_key if later else b"",
        search=seal_small(data_key, search, "search") if search is not None else None,
        sortkeys=seal_small(data_key, sortkeys, "sort") if sortkeys is not None else None,
    )


def _store_chunks(session: Session, blobs_by_id: Iterable[tuple[int, SealedBlob]]) -> None:
    """Insert the chunks of blobs, a batch of about 256 KiB per statement (a binary ``COPY`` on
    PostgreSQL, see :func:`~mssante.sqlfast.insert_many`), sealing large ones as they go, a
    chunk per statement: a large blob's chunks are large rows already, and a batch of them
    sealed was a quarter of a MiB more in memory while a big message is stored."""
    batch: list[tuple[int, int, bytes]] = []
    size = 0
    for blob_id, blob in blobs_by_id:
        for seq, data in enumerate(blob.chunks()):
            batch.append((blob_id, seq, data))
            size += len(data)
            if size >= _CHUNK_BATCH_BYTES or blob.sealed is None:
                insert_many(session, "blob_chunks", _CHUNK_COLUMNS, batch)
                batch, size = [], 0
    insert_many(session, "blob_chunks", _CHUNK_COLUMNS, batch)


def _high_water_ids(session: Session, count: int) -> int | None:
    """The first of ``count`` new blob ids on SQLite (None on PostgreSQL, whose sequence never
    goes back). SQLite numbers a row after the highest present, so the id of a collected blob
    would come back for the next one, and a session still holding the expunged message (RFC
    2180 §4.1) would read another message under its number: ids come from a high-water mark
    instead — for one blob and for a group commit's (or a MULTIAPPEND's) several alike."""
    if dialect_of(session) != "sqlite":
        return None
    last = run(
        session,
        "UPDATE blob_id_high SET last = max(last, (SELECT coalesce(max(id), 0) FROM blobs)) + :n "
        "WHERE id = 1 RETURNING last",
        {"n": count},
    ).scalar_one()
    return int(last) - count + 1


def put(session: Session, sealed: SealedBlob) -> int:
    """Store the blob unless an identical content is already there; return its id."""
    existing = run(session, "SELECT id FROM blobs WHERE digest = :digest", {"digest": sealed.digest}).scalar()
    if existing is not None:
        return int(existing)
    new_id = _high_water_ids(session, 1)
    blob_id = run(
        session,
        f"INSERT INTO blobs ({'id, ' if new_id is not None else ''}digest, size, key_id, wrapped_key, "
        "chunk_count, chunk_size, meta, search, sortkeys, created_at) "
        f"VALUES ({':id, ' if new_id is not None else ''}"
        ":digest, :size, :key_id, :wrapped, :count, :chunk_size, :meta, :search, :sortkeys, :at) "
        "RETURNING id",
        {
            "id": new_id,
            "digest": sealed.digest,
            "size": sealed.size,
            "key_id": sealed.key.key_id,
            "wrapped": sealed.key.wrapped,
            "count": sealed.chunk_count,
            "chunk_size": sealed.chunk_size,
            "meta": sealed.meta,
            "search": sealed.search,
            "sortkeys": sealed.sortkeys,
            "at": timestamp(datetime.now(UTC), dialect_of(session)),
        },
    ).scalar_one()
    _store_chunks(session, [(int(blob_id), sealed)])
    return int(blob_id)


def put_many(session: Session, sealed: list[SealedBlob]) -> dict[bytes, int]:
    """Store several blobs with three statements whatever their number (look-up of those
    already there, one multi-row insert, the chunks in one batch); returns {digest: id}."""
    if not sealed:
        return {}
    by_digest = {blob.digest: blob for blob in sealed}
    digests = list(by_digest)
    names = ", ".join(f":d{i}" for i in range(len(digests)))
    found = run(
        session,
        f"SELECT digest, id FROM blobs WHERE digest IN ({names})",
        {f"d{i}": digest for i, digest in enumerate(digests)},
    ).all()
    ids = {bytes(digest): int(blob_id) for digest, blob_id in found}
    new = [blob for digest, blob in by_digest.items() if digest not in ids]
    if not new:
        return ids
    at = timestamp(datetime.now(UTC), dialect_of(session))
    # SQLite: ids from the high-water mark (see _high_water_ids); PostgreSQL: its sequence.
    first_id = _high_water_ids(session, len(new))
    columns: tuple[str, ...] = (
        "digest",
        "size",
        "key_id",
        "wrapped",
        "count",
        "chunk_size",
        "meta",
        "search",
        "sortkeys",
    )
    names = "digest, size, key_id, wrapped_key, chunk_count, chunk_size, meta, search, sortkeys, created_at"
    if first_id is not None:
        columns, names = ("id", *columns), f"id, {names}"
    rows = ", ".join("(" + ", ".join(f":{c}{i}" for c in columns) + ", :at)" for i in range(len(new)))
    params: dict[str, Any] = {"at": at}
    for i, blob in enumerate(new):
        values: tuple[Any, ...] = (
            blob.digest,
            blob.size,
            blob.key.key_id,
            blob.key.wrapped,
            blob.chunk_count,
            blob.chunk_size,
            blob.meta,
            blob.search,
            blob.sortkeys,
        )
        if first_id is not None:
            values = (first_id + i, *values)
        params.update({f"{c}{i}": v for c, v in zip(columns, values, strict=True)})
    inserted = run(session, f"INSERT INTO blobs ({names}) VALUES {rows} RETURNING digest, id", params).all()
    ids.update((bytes(digest), int(blob_id)) for digest, blob_id in inserted)
    _store_chunks(session, ((ids[blob.digest], blob) for blob in new))
    return ids


@dataclass(frozen=True)
class BlobHeader:
    id: int
    size: int
    chunk_count: int
    chunk_size: int
    data_key: bytes
    meta: bytes | None


_DECODER = json.JSONDecoder()


def parse_meta(data: bytes, only: str | None = None) -> dict[str, Any]:
    """A stored structure, or only its first key's value when ``only`` names it: ENVELOPE needs
    the envelope alone, written first, and the header index after it is most of the text. Any
    other layout is parsed whole."""
    if only is not None:
        head = b'{"' + only.encode() + b'":'
        if data.startswith(head):
            value, _ = _DECODER.raw_decode(data.decode(), len(head))
            return {only: value}
    return cast(dict[str, Any], json.loads(data))


def meta_parser(only: str | None = None) -> Callable[[bytes], dict[str, Any]]:
    """:func:`parse_meta` with ``only`` (for :meth:`BlobReader.structures`)."""
    return lambda data: parse_meta(data, only)


# The layout delivery writes (``mime.analyse``): the envelope, then the header index as
# ``[["Name","value"],…]``, then the body structure. Inside a JSON string every '"' is escaped,
# so the two marks below and a pair's '["' can only be the structure's own.
_ENVELOPE_HEAD = '{"envelope":'
_HEADERS_HEAD = ',"headers":['
_HEADERS_END = '],"part":'


def envelope_and_field(data: bytes, name: str) -> tuple[dict[str, Any], str | None] | None:
    """The envelope and the first value of header field ``name`` (None when absent) from a
    stored structure, without decoding the rest: THREAD needs ``References`` alone of a header
    index that is most of the text, and decoding all of it was most of a first THREAD's time
    (issue 20). None when the structure is not laid out as delivery writes it."""
    text = data.decode()
    if not text.startswith(_ENVELOPE_HEAD):
        return None
    try:
        envelope, end = _DECODER.raw_decode(text, len(_ENVELOPE_HEAD))
        if not isinstance(envelope, dict) or not text.startswith(_HEADERS_HEAD, end):
            return None
        start = end + len(_HEADERS_HEAD)
        stop = text.find(_HEADERS_END, start)
        if stop == -1:
            return None
        pair = _field_pattern(name).search(text, start, stop)
        if pair is None:
            return envelope, None
        value, _ = _DECODER.raw_decode(text, pair.end())
    except json.JSONDecodeError:
        return None  # written with blanks, or otherwise: the caller decodes it whole
    return envelope, str(value)


@functools.lru_cache(maxsize=8)
def _field_pattern(name: str) -> re.Pattern[str]:
    # A pair's start with that name in any case, as the header index's readers compare it.
    return re.compile(r"\[" + re.escape(json.dumps(name)) + ",", re.IGNORECASE | re.ASCII)


Parsed = TypeVar("Parsed")


# Where reads run: an ORM session, or a connection the store keeps for small reads (see
# ``MessageStore.read``).
Reads = Session | Kept


def rows_of(db: Reads, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    """All rows of a driver-SQL query as plain tuples, from the driver's own cursor inside the
    session's transaction (no result-row objects: a SELECT reads 10,000 rows); fetched whole,
    so no statement stays open on SQLite."""
    if isinstance(db, Session):
        conn = db.connection()
        driver: Any = conn.connection.driver_connection
        return fetch_all(driver, conn.dialect.name, sql, params)
    return db.rows(sql, params)


def rows_iter(db: Reads, sql: str, params: dict[str, Any] | None = None) -> Iterable[Any]:
    """The rows of a query with a large result (a whole folder's messages): streamed from a
    kept connection (:meth:`~mssante.store.kept.Kept.stream`), fetched whole in a session."""
    if isinstance(db, Session):
        return rows_of(db, sql, params)
    return db.stream(sql, params)


def id_list(ids: Iterable[int]) -> str:
    """Blob ids inlined in an ``IN (...)`` list: integers only, so nothing can be injected, and
    the SQL text stays the driver's own (no per-call statement building)."""
    return ",".join(str(int(i)) for i in ids) or "NULL"


# One statement for a read: the header and the chunks that overlap [start, stop). The chunk
# range is computed by the database from the blob's own chunk size (integer division in both
# SQLite and PostgreSQL); the LEFT JOIN keeps the header row when no chunk overlaps.
READ = (
    "SELECT b.size, b.chunk_count, b.chunk_size, b.key_id, b.wrapped_key, c.seq, c.data "
    "FROM blobs b LEFT JOIN blob_chunks c ON c.blob_id = b.id "
    "AND c.seq >= :start / b.chunk_size AND c.seq <= (:stop - 1) / b.chunk_size "
    "WHERE b.id = :id ORDER BY c.seq"
)
_NO_END = 1 << 62
HEADER = "SELECT size, chunk_count, chunk_size, key_id, wrapped_key, meta FROM blobs WHERE id = :id"
_META = "SELECT id, key_id, wrapped_key, meta FROM blobs WHERE id IN_IDS AND meta IS NOT NULL"
# The first chunks of several blobs. The condition on ``c.blob_id`` lets PostgreSQL find them in
# the chunks' primary key (blob_id, seq); with only the join to go by, it read every chunk row of
# the database (a hash join on ``seq = 0``) for each group of a SEARCH.
_PREFIXES = (
    "SELECT b.id, b.chunk_count, b.key_id, b.wrapped_key, c.data FROM blobs b "
    "JOIN blob_chunks c ON c.blob_id = b.id AND c.seq = 0 WHERE b.id IN_IDS AND c.blob_id IN_IDS"
)


def read_params(blob_id: int, start: int, end: int | None) -> dict[str, Any]:
    """The parameters of :data:`READ` for ``[start, end)`` of a blob."""
    return {"id": blob_id, "start": start, "stop": _NO_END if end is None else end}


class BlobReader:
    """Reads sealed blobs with driver SQL (a read is one statement, a few µs of SQL work);
    data keys are cached (they are small and unwrapping costs a decrypt)."""

    def __init__(self, engine: Engine, keyring: KeyRing, cache_size: int = 65536) -> None:
        self.engine = engine
        self.keyring = keyring
        self._keys: dict[tuple[str, bytes], bytes] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def data_key(self, key_id: str, wrapped: bytes) -> bytes:
        """A blob's data key, unwrapped (cached): for a companion value read by another module."""
        return self._data_key(key_id, wrapped)

    def _data_key(self, key_id: str, wrapped: bytes) -> bytes:
        # Keyed by the wrapped key itself (unique per blob, random nonce): blob ids may be reused
        # after a blob is collected, a stale entry would then open nothing.
        wrapped = bytes(wrapped)
        cached = self._keys.get((key_id, wrapped))
        if cached is None:
            cached = self.keyring.unwrap(SealedKey(key_id, wrapped))
            with self._lock:  # readers run in several worker threads
                if len(self._keys) >= self._cache_size:
                    self._keys.pop(next(iter(self._keys)), None)
                self._keys[(key_id, wrapped)] = cached
        return cached

    def header(self, session: Reads, blob_id: int) -> BlobHeader:
        return self.header_of(blob_id, rows_of(session, HEADER, {"id": blob_id}))

    def header_of(self, blob_id: int, found: list[Any]) -> BlobHeader:
        """The header from the rows of :data:`HEADER` (so that the statement can run anywhere:
        a session, a kept connection, an asynchronous one)."""
        if not found:
            raise NoResultFound(f"no blob {blob_id}")
        row = found[0]
        key = self._data_key(row[3], row[4])
        return BlobHeader(blob_id, row[0], row[1], row[2], key, row[5])

    def ids_query(self, sql: str, blob_ids: list[int]) -> tuple[str, dict[str, Any]]:
        """A statement about several blobs, ``IN_IDS`` standing for "is one of them". PostgreSQL gets
        the ids as one array parameter: the statement's text never changes, so it is prepared
        once per connection (an inlined list is a new text, parsed and planned, at every
        call). SQLite gets them inlined (integers only: nothing can be injected)."""
        if self.engine.dialect.name == "postgresql":
            return sql.replace("IN_IDS", "= ANY(:ids)"), {"ids": list(blob_ids)}
        return sql.replace("IN_IDS", f"IN ({id_list(blob_ids)})"), {}

    def meta_query(self, blob_ids: list[int]) -> tuple[str, dict[str, Any]]:
        """The statement reading the sealed structures of ``blob_ids``."""
        return self.ids_query(_META, blob_ids)

    def meta(self, session: Reads, blob_ids: list[int], only: str | None = None) -> dict[int, dict[str, Any]]:
        """Parsed structures of several blobs, decrypted (one query per 500); with ``only``,
        just that key of each when it can be parsed alone (see :func:`parse_meta`)."""
        return self.structures(session, blob_ids, meta_parser(only))

    def structures(
        self, session: Reads, blob_ids: list[int], parse: Callable[[bytes], Parsed]
    ) -> dict[int, Parsed]:
        """``parse`` of each blob's decrypted structure (one query per 500): what a caller
        needs of it, read without decoding the rest (:func:`envelope_and_field`)."""
        out: dict[int, Parsed] = {}
        for i in range(0, len(blob_ids), 500):
            out.update(self.open_meta(rows_of(session, *self.meta_query(blob_ids[i : i + 500])), parse))
        return out

    def open_meta(self, rows: Iterable[Any], parse: Callable[[bytes], Parsed]) -> dict[int, Parsed]:
        """{blob id: ``parse`` of its structure} from the rows of :meth:`meta_query`."""
        return {
            blob_id: parse(open_small(self._data_key(key_id, wrapped), sealed))
            for blob_id, key_id, wrapped, sealed in rows
        }

    def iter_chunks(
        self, session: Reads, blob_id: int, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext of ``[start, end)`` chunk by chunk, opening only the chunks that overlap it."""
        if start >= (_NO_END if end is None else end):
            return
        rows = rows_of(session, READ, read_params(blob_id, start, end))
        yield from self.chunks_of(blob_id, rows, start, end)

    def chunks_of(self, blob_id: int, rows: list[Any], start: int, end: int | None) -> Iterator[bytes]:
        """Plaintext of ``[start, end)`` from the rows of :data:`READ`."""
        stop = _NO_END if end is None else end
        if start >= stop:
            return
        if not rows:
            raise NoResultFound(f"no blob {blob_id}")
        size, count, chunk_size, key_id, wrapped = rows[0][:5]
        if rows[0][5] is None:  # nothing of the blob overlaps the range
            return
        key = self._data_key(key_id, wrapped)
        stop = min(stop, size)
        chunks = [(r[5], r[6]) for r in rows]
        for (seq, _), plain in zip(chunks, open_chunks(key, chunks, count), strict=True):
            base = seq * chunk_size
            lo, hi = max(start - base, 0), min(stop - base, len(plain))
            yield plain[lo:hi]

    def read(self, session: Reads, blob_id: int, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.iter_chunks(session, blob_id, start, end))

    def prefixes(self, session: Reads, blob_ids: list[int]) -> dict[int, Prefix]:
        """Each blob's first chunk (one query for all), decrypted when first looked at: the start
        of a scan that reads further chunks only if asked (:meth:`Prefix.grow`)."""
        return self._prefixes_of(session, rows_of(session, *self.ids_query(_PREFIXES, blob_ids)))

    def prefix_groups(
        self, session: Reads, groups: list[list[int]]
    ) -> Generator[dict[int, Prefix], None, None]:
        """:meth:`prefixes` of each group in turn. On a kept PostgreSQL connection the next
        group's statement is sent before the current group is handed over (pipeline mode):
        the server reads those chunks while the caller decrypts and scans these. Issue 20: one
        after the other, a body search of 50,000 messages kept the server idle for a quarter
        of its time, waiting for PostgreSQL, which had worked for a third of it."""
        if not isinstance(session, Kept) or not groups:
            for blob_ids in groups:
                yield self.prefixes(session, blob_ids)
            return
        with session.pipeline():
            pending = session.send(*self.ids_query(_PREFIXES, groups[0]))
            for following in [*groups[1:], None]:
                rows = pending()
                if following is not None:
                    pending = session.send(*self.ids_query(_PREFIXES, following))
                yield self._prefixes_of(session, rows)

    def _prefixes_of(self, session: Reads, rows: Iterable[Any]) -> dict[int, Prefix]:
        return {
            blob_id: Prefix(session, blob_id, self._data_key(key_id, wrapped), count, data)
            for blob_id, count, key_id, wrapped, data in rows
        }


class Prefix:
    """The plaintext of a blob read from its start, a few chunks at a time: a scan (SEARCH BODY)
    stops at its first hit without decrypting the rest of a large message."""

    def __init__(self, session: Reads, blob_id: int, key: bytes, count: int, sealed: bytes) -> None:
        self._session = session
        self._blob_id = blob_id
        self._key = key
        self._count = count
        self._read = 1
        self._sealed: bytes | None = sealed
        self._data = b""

    @property
    def data(self) -> bytes:
        if self._sealed is not None:
            (self._data,) = open_chunks(self._key, [(0, self._sealed)], self._count)
            self._sealed = None
        return self._data

    @property
    def complete(self) -> bool:
        return self._read >= self._count

    def grow(self) -> bool:
        """Read as many more chunks as are held (total work stays under twice one full read);
        False when the blob was already complete."""
        if self.complete:
            return False
        upto = min(self._read * 2, self._count)
        rows = rows_of(
            self._session,
            "SELECT seq, data FROM blob_chunks WHERE blob_id = :id AND seq >= :lo AND seq < :hi ORDER BY seq",
            {"id": self._blob_id, "lo": self._read, "hi": upto},
        )
        self._data = self.data + b"".join(open_chunks(self._key, ((r[0], r[1]) for r in rows), self._count))
        self._read = upto
        return True


def rewrap_all(engine: Engine, keyring: KeyRing, batch: int = 1000) -> int:
    """Re-wrap every data key not under the active key (after ``keys rotate``); returns the count.

    Works in small transactions so the server keeps running: each blob stays readable under
    either key throughout, because the server re-reads the ring on unknown key ids.
    """
    count = 0
    while True:
        with Session(engine) as session, session.begin():
            rows = session.execute(
                select(blobs.c.id, blobs.c.key_id, blobs.c.wrapped_key)
                .where(blobs.c.key_id != keyring.active)
                .limit(batch)
            ).all()
            for row in rows:
                sealed = keyring.wrap(keyring.unwrap(SealedKey(row.key_id, row.wrapped_key)))
                session.execute(
                    update(blobs)
                    .where(blobs.c.id == row.id)
                    .values(key_id=sealed.key_id, wrapped_key=sealed.wrapped)
                )
            count += len(rows)
        if len(rows) < batch:
            return count
