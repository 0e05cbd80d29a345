"""The store's shared machinery: the writer and readers, the rows every kind of change
touches (accounts and their usage, UID and modseq reservations), and blob collection.

The operations live in :mod:`~mssante.store.delivery`, :mod:`~mssante.store.folders` and
:mod:`~mssante.store.messages`; :class:`~mssante.store.store.MessageStore` joins them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.crypto import KeyRing
from mssante.db import Base, load_all_models
from mssante.sqlfast import run
from mssante.store import blobs as blobstore
from mssante.store.feed import ChangeHub
from mssante.store.kept import KeptConnections
from mssante.store.models import Change, Folder, MailAccount, Message, OutboundEntry, Subscription
from mssante.store.pgfeed import NotifyOnCommit, new_node_id
from mssante.store.pgread import AsyncReads
from mssante.store.types import (
    DEFAULT_FOLDERS,
    INBOX,
    FolderNotFound,
    QuotaExceeded,
)
from mssante.store.writer import GroupCommitWriter, Light

accounts_t = cast(Table, MailAccount.__table__)
folders_t = cast(Table, Folder.__table__)
messages_t = cast(Table, Message.__table__)
changes_t = cast(Table, Change.__table__)
queue_t = cast(Table, OutboundEntry.__table__)
subscriptions_t = cast(Table, Subscription.__table__)

# Reads at most this large (bytes of a body, structures of messages) run inline on SQLite.
INLINE_READ_BYTES = 256 * 1024
INLINE_READ_META = 16
# Threads (each with its kept connection) for the reads on PostgreSQL that need one: several
# statements, or results large enough that their decoding would hold the event loop.
READ_THREADS = 2


@functools.cache
def blob_holders() -> tuple[Any, ...]:
    """Columns that hold a reference to a blob (except the blob's own chunks)."""
    load_all_models()
    return tuple(
        fk.parent
        for table in Base.metadata.tables.values()
        if table.name != "blob_chunks"
        for fk in table.foreign_keys
        if fk.column.table.name == "blobs"
    )


class StoreCore:
    def __init__(
        self,
        engine: Engine,
        writer_engine: Engine,
        keyring: KeyRing,
        *,
        chunk_size: int = 64 * 1024,
        group_commit: bool = True,
        max_batch: int = 256,
        default_quota: int | None = None,
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.chunk_size = chunk_size
        self.default_quota = default_quota
        self.hub = ChangeHub()
        self.node_id = new_node_id()
        on_pg = writer_engine.dialect.name == "postgresql"
        self.writer = GroupCommitWriter(
            writer_engine,
            group_commit=group_commit,
            max_batch=max_batch,
            after_commit=self.hub.publish,
            # Other nodes hear of every commit (the hub is this process's alone).
            before_commit=NotifyOnCommit(self.node_id) if on_pg else None,
        )
        self.reader = blobstore.BlobReader(engine, keyring)
        self._kept = KeptConnections(engine)
        on_sqlite = engine.dialect.name == "sqlite"
        self._read_threads = (
            None if on_sqlite else ThreadPoolExecutor(READ_THREADS, thread_name_prefix="store-read")
        )
        self._async_reads = None if on_sqlite else AsyncReads(engine)
        # BALs whose account row exists (FolderOps.ensure_account): a few dozen bytes a BAL.
        self._accounts_seen: set[str] = set()
        # STATUS counts by folder state (FolderOps.status): a hundred bytes a folder.
        self._status_counts: OrderedDict[tuple[int, int, int, int], tuple[int, ...]] = OrderedDict()

    def close(self) -> None:
        self.writer.close()
        if self._read_threads is not None:
            self._read_threads.shutdown(wait=True)
        if self._async_reads is not None:
            self._async_reads.close()
        self._kept.close()

    # -- helpers run inside the writer's transaction -------------------------------------
    def _insert_ignore(self, session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
        self._insert_ignore_static(session, table, rows)

    @staticmethod
    def _insert_ignore_static(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
        dialect = session.get_bind().dialect.name
        insert_for = postgresql.insert if dialect == "postgresql" else sqlite.insert
        session.execute(insert_for(table).on_conflict_do_nothing(), rows)

    def _ensure_account(self, session: Session, bal: str) -> None:
        if session.execute(select(accounts_t.c.bal).where(accounts_t.c.bal == bal)).first():
            return
        now = datetime.now(UTC)
        # The account row carries the UIDVALIDITY counter from the start, so that creating
        # storage takes no row lock that a concurrent creator could be waiting on.
        base = int(time.time())
        self._insert_ignore(
            session,
            accounts_t,
            [
                {
                    "bal": bal,
                    "quota_bytes": self.default_quota,
                    "used_bytes": 0,
                    "message_count": 0,
                    "last_uidvalidity": base,
                    "created_at": now,
                }
            ],
        )
        self._insert_ignore(
            session,
            folders_t,
            [
                {
                    "bal": bal,
                    "name": name,
                    "uidvalidity": base,
                    "uidnext": 1,
                    "highestmodseq": 1,
                    "special_use": use,
                    "first_recent_uid": 1,
                    "created_at": now,
                }
                for name, use in DEFAULT_FOLDERS
            ],
        )
        # The default folders start subscribed (clients show subscribed folders only).
        self._insert_ignore(
            session, subscriptions_t, [{"bal": bal, "name": name} for name, _ in DEFAULT_FOLDERS]
        )

    @staticmethod
    def _charge(session: Session, bal: str, size: int, count: int = 1) -> None:
        """Add to the BAL's usage, refusing to go over its quota."""
        charged = run(
            session,
            "UPDATE mail_accounts SET used_bytes = used_bytes + :size, message_count = message_count + :n "
            "WHERE bal = :bal AND (quota_bytes IS NULL OR used_bytes + :size <= quota_bytes) RETURNING bal",
            {"size": size, "n": count, "bal": bal},
        ).first()
        if charged is None:
            raise QuotaExceeded(bal)

    @staticmethod
    def _refund(session: Session, bal: str, size: int, count: int) -> None:
        session.execute(
            update(accounts_t)
            .where(accounts_t.c.bal == bal)
            .values(
                used_bytes=accounts_t.c.used_bytes - size, message_count=accounts_t.c.message_count - count
            )
        )

    @staticmethod
    def _allocate(
        session: Session,
        count: int,
        *,
        folder_id: int | None = None,
        bal: str = "",
        name: str = "",
        modseqs: int = 1,
    ) -> tuple[int, int, int] | None:
        """Reserve ``count`` UIDs and ``modseqs`` modseqs in a folder (by id, or by BAL and name).

        The UPDATE takes the folder's row lock (the write lock on SQLite), which makes UID
        allocation race-free across threads and server processes. Returns (folder id, first
        uid, first modseq), or None when the folder does not exist.
        """
        where = "id = :fid" if folder_id is not None else "bal = :bal AND name = :name"
        row = run(
            session,
            f"UPDATE folders SET uidnext = uidnext + :n, highestmodseq = highestmodseq + :m WHERE {where} "
            "RETURNING id, uidnext, highestmodseq",
            {"n": count, "m": modseqs, "fid": folder_id, "bal": bal, "name": name},
        ).first()
        if row is None:
            return None
        return int(row[0]), int(row[1]) - count, int(row[2]) - modseqs + 1

    def _allocate_by_name(
        self, session: Session, bal: str, name: str, count: int = 1, modseqs: int = 1
    ) -> tuple[int, int, int]:
        allocated = self._allocate(session, count, bal=bal, name=name, modseqs=modseqs)
        if allocated is None and name == INBOX:
            # First message for this BAL: create its storage, then allocate.
            self._ensure_account(session, bal)
            allocated = self._allocate(session, count, bal=bal, name=name, modseqs=modseqs)
        if allocated is None:
            raise FolderNotFound(f"no folder {name!r}")
        return allocated

    @staticmethod
    def _bump_modseq(session: Session, folder_id: int) -> int:
        return int(
            session.execute(
                update(folders_t)
                .where(folders_t.c.id == folder_id)
                .values(highestmodseq=folders_t.c.highestmodseq + 1)
                .returning(folders_t.c.highestmodseq)
            ).scalar_one()
        )

    def _read(self, fn: Any) -> Any:
        with Session(self.engine) as session:
            return fn(session)

    async def read(self, fn: Any, *, small: bool = False, kept: bool = False) -> Any:
        """Run ``fn(session)`` on a reader connection in a worker thread.

        A ``small`` read (one message, a folder row) runs on a connection kept for such reads
        (:mod:`mssante.store.kept`). On SQLite it runs at once, on the event loop: a few pages
        of a local WAL database, where readers never wait for the writer, cost less than the
        hop to a worker thread and back, which was most of a single-message FETCH. On
        PostgreSQL it runs in one of the store's own reader threads (a network round trip
        never blocks the event loop).

        ``kept`` says that ``fn`` reads with driver SQL only (:func:`~mssante.store.blobs.rows_of`,
        no ORM): on PostgreSQL a large read then runs on a reader thread's kept connection too,
        instead of a session's — no pool check-out and its ping, no BEGIN and no ROLLBACK, three
        round trips fewer. On SQLite, where those cost nothing, it runs as any large read.
        """
        if small and self._read_threads is None:
            return self._read_kept(fn)
        if small or (kept and self._read_threads is not None):
            return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._read_kept, fn)
        return await asyncio.to_thread(self._read, fn)

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All rows of one statement with a small result (driver SQL, ``:name`` parameters).

        On SQLite it runs at once on the kept connection, as a small :meth:`read`. On
        PostgreSQL it is awaited on one of the store's asynchronous connections
        (:mod:`mssante.store.pgread`): the loop serves other sessions during the round trip,
        and no thread is woken — the hop to a reader thread and back cost as much as the
        statement itself."""
        if self._async_reads is None:
            return self._read_kept(lambda db: blobstore.rows_of(db, sql, params))  # type: ignore[no-any-return]
        return await self._async_reads.rows(sql, params)

    def _read_kept(self, fn: Any) -> Any:
        try:
            return fn(self._kept.get())
        except self._kept.lost:
            # The kept connection broke (a database restart): drop it, read through a session.
            self._kept.drop()
            return self._read(fn)

    @staticmethod
    def collect_blobs(session: Session, blob_ids: Iterable[int]) -> None:
        """Delete blobs nothing refers to any more (their chunks cascade).

        "Anything" is every column of the schema with a foreign key to ``blobs.id`` (messages,
        queue entries, DMP documents…), found from the one MetaData: a new kind of holder is
        covered without touching this code.
        """
        candidates = sorted(set(blob_ids))
        for i in range(0, len(candidates), 500):
            chunk = candidates[i : i + 500]
            used: set[int] = set()
            for column in blob_holders():
                used |= set(session.execute(select(column).where(column.in_(chunk))).scalars())
            orphans = [b for b in chunk if b not in used]
            if orphans:
                session.execute(
                    delete(blobstore.blob_chunks).where(blobstore.blob_chunks.c.blob_id.in_(orphans))
                )
                session.execute(delete(blobstore.blobs).where(blobstore.blobs.c.id.in_(orphans)))

    async def record(self, *events: AuditEvent) -> None:
        """Append audit events through the writer (for actions that change nothing else)."""
        await self.writer.run(Light(lambda s: audit.append(s, *events)))
