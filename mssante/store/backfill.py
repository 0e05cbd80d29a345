"""The sealed forms that messages stored by an earlier version lack, added while the server runs.

Since migration 0022 delivery seals beside each message the header fields SEARCH matches
(``blobs.search``), and since 0025 the keys SORT and THREAD compare (``blobs.sortkeys``).
Messages stored before keep NULL: they are still searched and sorted, from their whole parsed
structure, which costs several times more at a folder's first SEARCH or SORT in each process
(about 0.5 s at 20,000 messages). ``mssante db backfill`` works their forms out from that
structure and seals them under each message's own data key, a batch of messages at a time: the
server keeps running and serves every message throughout, and a backfill stopped halfway
resumes where it left off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from mssante.crypto import KeyRing, open_small, seal_small
from mssante.db import transaction
from mssante.sqlfast import run
from mssante.store import headerindex, sortkeys
from mssante.store.blobs import BlobReader, parse_meta, rows_of

# Blobs lacking a form, in id order after a given id (ids only grow: the walk ends).
_LACKING = (
    "SELECT id, key_id, wrapped_key, meta, search IS NULL, sortkeys IS NULL FROM blobs "
    "WHERE id > :after AND meta IS NOT NULL AND (search IS NULL OR sortkeys IS NULL) "
    "ORDER BY id LIMIT :batch"
)
# Each form only where it is still missing: delivery never writes a blob twice, but a second
# backfill run beside this one must not matter either.
_SEAL = (
    "UPDATE blobs SET search = COALESCE(search, :search), sortkeys = COALESCE(sortkeys, :sortkeys) "
    "WHERE id = :id"
)


@dataclass
class Backfilled:
    """What a backfill did: messages looked at, forms sealed (a message whose header values
    hold one of the search form's separators has none: it is matched from its structure)."""

    messages: int = 0
    search: int = 0
    sortkeys: int = 0

    def as_json(self) -> dict[str, int]:
        return {"messages": self.messages, "search": self.search, "sortkeys": self.sortkeys}


def backfill(engine: Engine, keyring: KeyRing, batch: int = 200) -> Backfilled:
    """Seal the missing SEARCH and SORT forms of every stored message. Each batch is read and
    worked out outside any write transaction; its forms are then written in one short
    transaction in the writers' turn (:func:`mssante.db.transaction`), so the server's
    deliveries wait a few milliseconds at most, never for the decryption and parsing."""
    reader = BlobReader(engine, keyring)
    done = Backfilled()
    after = 0
    while True:
        with Session(engine) as session:
            rows = rows_of(session, _LACKING, {"after": after, "batch": batch})
        sealed: list[dict[str, Any]] = []
        for blob_id, key_id, wrapped, sealed_meta, no_search, no_sortkeys in rows:
            data_key = reader.data_key(key_id, wrapped)
            meta = parse_meta(open_small(data_key, bytes(sealed_meta)))
            search = headerindex.stored(headerindex.fields_of(meta)) if no_search else None
            keys = sortkeys.stored(sortkeys.keys_of(meta)) if no_sortkeys else None
            sealed.append(
                {
                    "id": blob_id,
                    "search": seal_small(data_key, search, "search") if search is not None else None,
                    "sortkeys": seal_small(data_key, keys, "sort") if keys is not None else None,
                }
            )
            done.messages += 1
            done.search += search is not None
            done.sortkeys += keys is not None
            after = blob_id
        if sealed:
            with transaction(engine) as session:
                run(session, _SEAL, sealed)
        if len(rows) < batch:
            return done
