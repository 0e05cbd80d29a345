"""Sealed blobs: encrypt a content once, store it in chunks, read it back by stream or range.

Sealing (CPU) happens before the write transaction, outside the single writer; storing is a
few inserts inside it. Reading unwraps the data key and opens only the chunks asked for,
which is what lets IMAP stream a large body or serve ``BODY[]<start.len>`` cheaply.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.orm import Session

from mssante.crypto import KeyRing, SealedKey, new_data_key, open_chunks, open_small, seal_chunks, seal_small
from mssante.sqlfast import dialect_of, run, timestamp
from mssante.store.models import Blob, BlobChunk

blobs = cast(Table, Blob.__table__)
blob_chunks = cast(Table, BlobChunk.__table__)


@dataclass(frozen=True)
class SealedBlob:
    """A content ready to store: digest for deduplication, wrapped key, sealed chunks and meta."""

    digest: bytes
    size: int
    key: SealedKey
    chunks: list[bytes]
    chunk_size: int
    meta: bytes | None


def seal(keyring: KeyRing, data: bytes, meta: dict[str, Any] | None, chunk_size: int) -> SealedBlob:
    data_key = new_data_key()
    return SealedBlob(
        digest=keyring.digest(data),
        size=len(data),
        key=keyring.wrap(data_key),
        chunks=seal_chunks(data_key, data, chunk_size),
        chunk_size=chunk_size,
        meta=seal_small(data_key, json.dumps(meta, separators=(",", ":")).encode())
        if meta is not None
        else None,
    )


def put(session: Session, sealed: SealedBlob) -> int:
    """Store the blob unless an identical content is already there; return its id."""
    existing = run(session, "SELECT id FROM blobs WHERE digest = :digest", {"digest": sealed.digest}).scalar()
    if existing is not None:
        return int(existing)
    blob_id = run(
        session,
        "INSERT INTO blobs (digest, size, key_id, wrapped_key, chunk_count, chunk_size, meta, created_at) "
        "VALUES (:digest, :size, :key_id, :wrapped, :count, :chunk_size, :meta, :at) RETURNING id",
        {
            "digest": sealed.digest,
            "size": sealed.size,
            "key_id": sealed.key.key_id,
            "wrapped": sealed.key.wrapped,
            "count": len(sealed.chunks),
            "chunk_size": sealed.chunk_size,
            "meta": sealed.meta,
            "at": timestamp(datetime.now(UTC), dialect_of(session)),
        },
    ).scalar_one()
    run(
        session,
        "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (:blob_id, :seq, :data)",
        [{"blob_id": blob_id, "seq": i, "data": c} for i, c in enumerate(sealed.chunks)],
    )
    return int(blob_id)


@dataclass(frozen=True)
class BlobHeader:
    id: int
    size: int
    chunk_count: int
    chunk_size: int
    data_key: bytes
    meta: bytes | None


class BlobReader:
    """Reads sealed blobs; data keys are cached (they are small and unwrapping costs a decrypt)."""

    def __init__(self, engine: Engine, keyring: KeyRing, cache_size: int = 65536) -> None:
        self.engine = engine
        self.keyring = keyring
        self._keys: dict[tuple[str, bytes], bytes] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _data_key(self, key_id: str, wrapped: bytes) -> bytes:
        # Keyed by the wrapped key itself (unique per blob, random nonce): blob ids may be reused
        # after a blob is collected, a stale entry would then open nothing.
        cached = self._keys.get((key_id, wrapped))
        if cached is None:
            cached = self.keyring.unwrap(SealedKey(key_id, wrapped))
            with self._lock:  # readers run in several worker threads
                if len(self._keys) >= self._cache_size:
                    self._keys.pop(next(iter(self._keys)), None)
                self._keys[(key_id, wrapped)] = cached
        return cached

    def header(self, session: Session, blob_id: int) -> BlobHeader:
        row = session.execute(
            select(
                blobs.c.size,
                blobs.c.chunk_count,
                blobs.c.chunk_size,
                blobs.c.key_id,
                blobs.c.wrapped_key,
                blobs.c.meta,
            ).where(blobs.c.id == blob_id)
        ).one()
        key = self._data_key(row.key_id, row.wrapped_key)
        return BlobHeader(blob_id, row.size, row.chunk_count, row.chunk_size, key, row.meta)

    def meta(self, session: Session, blob_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Parsed structures of several blobs, decrypted (one query)."""
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(blob_ids), 500):
            rows = session.execute(
                select(blobs.c.id, blobs.c.key_id, blobs.c.wrapped_key, blobs.c.meta).where(
                    blobs.c.id.in_(blob_ids[i : i + 500])
                )
            )
            for row in rows:
                if row.meta is not None:
                    key = self._data_key(row.key_id, row.wrapped_key)
                    out[row.id] = json.loads(open_small(key, row.meta))
        return out

    def iter_chunks(
        self, session: Session, blob_id: int, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Plaintext of ``[start, end)`` chunk by chunk, opening only the chunks that overlap it."""
        head = self.header(session, blob_id)
        end = head.size if end is None else min(end, head.size)
        if start >= end:
            return
        first, last = start // head.chunk_size, (end - 1) // head.chunk_size
        rows = session.execute(
            select(blob_chunks.c.seq, blob_chunks.c.data)
            .where(blob_chunks.c.blob_id == blob_id, blob_chunks.c.seq.between(first, last))
            .order_by(blob_chunks.c.seq)
        )
        for seq_plain, plain in zip(
            range(first, last + 1),
            open_chunks(head.data_key, ((r.seq, r.data) for r in rows), head.chunk_count),
            strict=True,
        ):
            base = seq_plain * head.chunk_size
            lo, hi = max(start - base, 0), min(end - base, len(plain))
            yield plain[lo:hi]

    def read(self, session: Session, blob_id: int, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.iter_chunks(session, blob_id, start, end))


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
