"""The message store API used by SMTP delivery, IMAP and the CLI.

Writes go through the group-commit writer (one thread, one connection, durable before the
caller hears "done"); reads run in worker threads on their own connections. Protocol code
never writes SQL: it calls these methods, which is what keeps storage separate from
protocol, as in Dovecot.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.crypto import KeyRing
from mssante.db import Base, load_all_models
from mssante.sqlfast import dialect_of, run, timestamp, utc
from mssante.store import blobs as blobstore
from mssante.store.feed import ChangeHub, FolderChange
from mssante.store.kept import KeptConnections
from mssante.store.mime import analyse
from mssante.store.models import Change, Folder, MailAccount, Message, OutboundEntry, Subscription
from mssante.store.pgfeed import NotifyOnCommit, new_node_id
from mssante.store.writer import GroupCommitWriter, Notes

accounts_t = cast(Table, MailAccount.__table__)
folders_t = cast(Table, Folder.__table__)
messages_t = cast(Table, Message.__table__)
changes_t = cast(Table, Change.__table__)
queue_t = cast(Table, OutboundEntry.__table__)
subscriptions_t = cast(Table, Subscription.__table__)

INBOX = "INBOX"
DELIMITER = "/"
# Folders every BAL gets, with their RFC 6154 special use.
DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
# Reads at most this large (bytes of a body, structures of messages) run inline on SQLite.
INLINE_READ_BYTES = 256 * 1024
INLINE_READ_META = 16
# Threads (each with its kept connection) for small reads on PostgreSQL.
READ_THREADS = 2


class StoreError(Exception):
    """Base of the store's refusals; ``code`` is an IMAP response code when one fits."""

    code: str | None = None


class FolderNotFound(StoreError):
    code = "NONEXISTENT"


class FolderExists(StoreError):
    code = "ALREADYEXISTS"


class FolderNotAllowed(StoreError):
    code = "CANNOT"


class MessageGone(StoreError):
    """The message was expunged (its content collected) while a session still numbered it."""

    code = "EXPUNGEISSUED"


class QuotaExceeded(StoreError):
    code = "OVERQUOTA"

    def __init__(self, bal: str) -> None:
        super().__init__(f"mailbox {bal} is over its quota")
        self.bal = bal


@dataclass(frozen=True)
class FolderInfo:
    id: int
    bal: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool
    first_recent_uid: int = 1


@dataclass(frozen=True)
class FolderStatus:
    folder: FolderInfo
    messages: int
    unseen: int
    size: int
    recent: int = 0
    deleted: int = 0  # messages flagged \\Deleted (STATUS DELETED, RFC 9051)


class MessageRow(NamedTuple):
    """A message without its content; a named tuple because a SELECT builds thousands."""

    uid: int
    flags: tuple[str, ...]
    size: int
    internaldate: datetime
    modseq: int
    blob_id: int


@dataclass(frozen=True)
class AppendResult:
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Outbound:
    """What leaves for other operators: the (DKIM-signed) bytes and the recipients by domain."""

    raw: bytes
    recipients: dict[str, list[str]]


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int
    pairs: list[tuple[int, int]]  # (source uid, destination uid)


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


def normalise_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """System flags in their canonical case, keywords as given; duplicates removed."""
    seen: dict[str, str] = {}
    for flag in flags:
        canonical = SYSTEM_FLAGS.get(flag.lower(), flag)
        seen.setdefault(canonical.lower(), canonical)
    return tuple(sorted(seen.values(), key=str.lower))


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(normalise_flags(flags))


def _split_flags(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def _stored_time(value: datetime | str) -> datetime:
    """A timestamp read with driver SQL: SQLite gives SQLAlchemy's naive UTC text."""
    if isinstance(value, str):
        # Naive text is UTC; parsing it with its offset written out is 4x faster than replace().
        if len(value) <= 26:
            return datetime.fromisoformat(value + "+00:00")
        return utc(datetime.fromisoformat(value))
    return utc(value)


# FolderInfo's fields, in order, for driver SQL reads.
_FOLDER_COLUMNS = (
    "id, bal, name, uidvalidity, uidnext, highestmodseq, special_use, "
    "EXISTS (SELECT 1 FROM mailbox_subscriptions s WHERE s.bal = folders.bal AND s.name = folders.name), "
    "first_recent_uid"
)


def _folder_tuple(r: Any) -> FolderInfo:
    """FolderInfo from a driver-SQL row of ``_FOLDER_COLUMNS`` (SQLite gives 0/1 for booleans)."""
    return FolderInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8])


_INSERT_MESSAGE = (
    "INSERT INTO messages (folder_id, uid, blob_id, size, internaldate, flags, modseq) "
    "VALUES (:fid, :uid, :blob, :size, :at, '', :modseq)"
)
_INSERT_APPEND = (
    "INSERT INTO folder_changes (folder_id, modseq, kind, uid, at) "
    "VALUES (:fid, :modseq, 'append', :uid, :at)"
)


def _deliver_event(
    actor: str,
    bal: str,
    folder: str,
    uid: int,
    source: str | None,
    sender: str,
    message_id: str | None,
    size: int,
) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        action="message.deliver",
        bal=bal,
        object=f"{folder}/{uid}",
        source=source,
        detail={"from": sender, "message_id": message_id, "size": size},
    )


class MessageStore:
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
        self._read_threads = (
            None
            if engine.dialect.name == "sqlite"
            else ThreadPoolExecutor(READ_THREADS, thread_name_prefix="store-read")
        )

    def close(self) -> None:
        self.writer.close()
        if self._read_threads is not None:
            self._read_threads.shutdown(wait=True)
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

    # -- preparing content ----------------------------------------------------------------
    def _prepare(self, raw: bytes) -> tuple[blobstore.SealedBlob, dict[str, Any]]:
        meta = analyse(raw)
        return blobstore.seal(self.keyring, raw, meta, self.chunk_size), meta

    async def _prepare_async(self, raw: bytes) -> tuple[blobstore.SealedBlob, dict[str, Any]]:
        # MIME analysis and sealing in a worker thread, whatever the size: on the event loop
        # they were a tenth of its busy time at 10 sessions (profile of issue 20), time during
        # which no other session was read or answered.
        return await asyncio.to_thread(self._prepare, raw)

    # -- delivery ---------------------------------------------------------------------------
    async def deliver(
        self,
        raw: bytes,
        sender: str,
        recipients: Sequence[str],
        *,
        actor: str | None = None,
        source: str | None = None,
        folder: str = INBOX,
        extra_audit: Sequence[AuditEvent] = (),
        outbound: Outbound | None = None,
        also: Sequence[Callable[[Session], None]] = (),
    ) -> dict[str, int]:
        """Store one message for local recipients and queue it for remote ones.

        Returns {BAL: UID} once durably committed. All or nothing: the blob, every mailbox
        entry, the queue entries, the usage counters, the audit records and the writes of the
        ``also`` callables (domain records such as patient conversations) commit together, or
        nothing does.
        """
        sealed, meta = await self._prepare_async(raw)
        bals = list(dict.fromkeys(r.strip().lower() for r in recipients))
        message_id = (meta["envelope"].get("message_id") or "")[:300] or None
        sealed_out = None
        if outbound is not None and outbound.recipients:
            sealed_out = await asyncio.to_thread(
                blobstore.seal, self.keyring, outbound.raw, None, self.chunk_size
            )
        delivery = _Delivery(
            self,
            sealed,
            sender,
            bals,
            actor or sender,
            source,
            folder,
            message_id,
            tuple(extra_audit),
            (sealed_out, outbound) if sealed_out is not None and outbound is not None else None,
            tuple(also),
        )
        uids: dict[str, int] = await self.writer.run(delivery)
        return uids

    def _deliver_many(self, session: Session, jobs: list[_Delivery]) -> list[tuple[dict[str, int], Notes]]:
        """Several deliveries of one group commit as one: a statement per table for all of them
        (blobs, chunks, messages, changes, audit records), one UID/modseq reservation and one
        usage charge per mailbox. The same rows as :meth:`_deliver_job` one by one, in order;
        any refusal (a quota) raises and the writer runs each delivery alone instead."""
        now = datetime.now(UTC)
        at = timestamp(now, dialect_of(session))
        events: list[AuditEvent] = []
        queue_events: list[list[AuditEvent]] = []
        for job in jobs:
            if job.outbound is not None:
                sealed_out, outbound = job.outbound
                queue_events.append(
                    self._enqueue(
                        session, sealed_out, outbound, job.sender, job.message_id, job.actor, job.source, at
                    )
                )
            else:
                queue_events.append([])
        blob_ids = blobstore.put_many(session, [job.sealed for job in jobs if job.bals])
        # Reservations per mailbox folder, in the jobs' order.
        wanted: dict[tuple[str, str], int] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for job in jobs:
            for bal in job.bals:
                wanted[(bal, job.folder)] = wanted.get((bal, job.folder), 0) + 1
                used, count = sizes.get(bal, (0, 0))
                sizes[bal] = (used + job.sealed.size, count + 1)
        next_slot: dict[tuple[str, str], tuple[int, int, int]] = {}
        for (bal, name), count in wanted.items():
            next_slot[(bal, name)] = self._allocate_by_name(session, bal, name, count, modseqs=count)
        for bal, (used, count) in sizes.items():
            self._charge(session, bal, used, count)
        messages: list[dict[str, Any]] = []
        results: list[tuple[dict[str, int], Notes]] = []
        for job, queued in zip(jobs, queue_events, strict=True):
            blob_id = blob_ids[job.sealed.digest] if job.bals else 0
            uids: dict[str, int] = {}
            notes = Notes()
            events.extend(queued)
            for bal in job.bals:
                folder_id, uid, modseq = next_slot[(bal, job.folder)]
                next_slot[(bal, job.folder)] = (folder_id, uid + 1, modseq + 1)
                messages.append(
                    {
                        "fid": folder_id,
                        "uid": uid,
                        "blob": blob_id,
                        "size": job.sealed.size,
                        "at": at,
                        "modseq": modseq,
                    }
                )
                notes.append(FolderChange(folder_id, modseq, "append", uid))
                uids[bal] = uid
                events.append(job.event(bal, uid))
            for write in job.also:
                write(session)
            events.extend(job.extra_audit)
            results.append((uids, notes))
        if messages:
            run(session, _INSERT_MESSAGE, messages)
            run(session, _INSERT_APPEND, messages)
        audit.append(session, *events, at=now)
        return results

    def _deliver_job(
        self,
        session: Session,
        sealed: blobstore.SealedBlob,
        sender: str,
        bals: list[str],
        actor: str,
        source: str | None,
        folder: str,
        message_id: str | None,
        extra_audit: Sequence[AuditEvent],
        outbound: tuple[blobstore.SealedBlob, Outbound] | None = None,
        also: Sequence[Callable[[Session], None]] = (),
    ) -> tuple[dict[str, int], Notes]:
        now = datetime.now(UTC)
        at = timestamp(now, dialect_of(session))
        uids: dict[str, int] = {}
        notes = Notes()
        events: list[AuditEvent] = []
        if outbound is not None:
            events.extend(
                self._enqueue(session, outbound[0], outbound[1], sender, message_id, actor, source, at)
            )
        blob_id = blobstore.put(session, sealed) if bals else 0
        for bal in bals:
            folder_id, uid, modseq = self._allocate_by_name(session, bal, folder)
            self._charge(session, bal, sealed.size)
            params = {
                "fid": folder_id,
                "uid": uid,
                "blob": blob_id,
                "size": sealed.size,
                "at": at,
                "modseq": modseq,
            }
            run(session, _INSERT_MESSAGE, params)
            run(session, _INSERT_APPEND, params)
            notes.append(FolderChange(folder_id, modseq, "append", uid))
            uids[bal] = uid
            events.append(_deliver_event(actor, bal, folder, uid, source, sender, message_id, sealed.size))
        for write in also:
            write(session)
        audit.append(session, *events, *extra_audit, at=now)
        return uids, notes

    @staticmethod
    def _enqueue(
        session: Session,
        sealed: blobstore.SealedBlob,
        outbound: Outbound,
        sender: str,
        message_id: str | None,
        actor: str,
        source: str | None,
        at: Any,
    ) -> list[AuditEvent]:
        """One queue entry per remote domain, in the accepting transaction."""
        blob_id = blobstore.put(session, sealed)
        events = []
        for domain, addresses in sorted(outbound.recipients.items()):
            run(
                session,
                "INSERT INTO outbound_queue (blob_id, mail_from, domain, recipients, message_id, created_at, "
                "next_attempt_at, attempts, delay_warned) "
                "VALUES (:blob, :sender, :domain, :rcpts, :mid, :at, :at, 0, :false)",
                {
                    "blob": blob_id,
                    "sender": sender,
                    "domain": domain,
                    "rcpts": json.dumps(sorted(addresses)),
                    "mid": message_id,
                    "at": at,
                    "false": False,
                },
            )
            events.append(
                AuditEvent(
                    actor=actor,
                    action="message.queue",
                    object=domain,
                    source=source,
                    detail={"from": sender, "to": sorted(addresses), "message_id": message_id},
                )
            )
        return events

    async def append(
        self,
        bal: str,
        folder: str,
        raw: bytes,
        *,
        flags: Iterable[str] = (),
        internaldate: datetime | None = None,
        actor: str,
        source: str | None = None,
    ) -> AppendResult:
        """IMAP APPEND: add a message to a folder with flags and an internal date."""
        uidvalidity, [uid] = await self.append_many(
            bal, folder, [(raw, flags, internaldate)], actor=actor, source=source
        )
        return AppendResult(uidvalidity, uid)

    async def append_many(
        self,
        bal: str,
        folder: str,
        messages: Sequence[tuple[bytes, Iterable[str], datetime | None]],
        *,
        actor: str,
        source: str | None = None,
    ) -> tuple[int, list[int]]:
        """APPEND of one or several messages (MULTIAPPEND, RFC 3502) as one transaction: all
        are stored, with consecutive UIDs, or none. Returns (UIDVALIDITY, UIDs)."""
        prepared = [
            (await self._prepare_async(raw), _flags_text(flags), utc(when) if when else datetime.now(UTC))
            for raw, flags, when in messages
        ]
        bal = bal.lower()

        def job(session: Session) -> tuple[tuple[int, list[int]], Notes]:
            folder_id, first_uid, modseq = self._allocate_by_name(session, bal, folder, len(prepared))
            self._charge(session, bal, sum(sealed.size for (sealed, _), _, _ in prepared), len(prepared))
            uidvalidity = session.execute(
                select(folders_t.c.uidvalidity).where(folders_t.c.id == folder_id)
            ).scalar_one()
            notes = Notes()
            uids = []
            for n, ((sealed, _meta), flag_text, when) in enumerate(prepared):
                uid = first_uid + n
                blob_id = blobstore.put(session, sealed)
                session.execute(
                    insert(messages_t).values(
                        folder_id=folder_id,
                        uid=uid,
                        blob_id=blob_id,
                        size=sealed.size,
                        internaldate=when,
                        flags=flag_text,
                        modseq=modseq,
                    )
                )
                session.execute(
                    insert(changes_t).values(
                        folder_id=folder_id,
                        modseq=modseq,
                        kind="append",
                        uid=uid,
                        flags=flag_text,
                        at=datetime.now(UTC),
                    )
                )
                notes.append(FolderChange(folder_id, modseq, "append", uid, flag_text))
                uids.append(uid)
                audit.append(
                    session,
                    AuditEvent(
                        actor=actor,
                        action="message.append",
                        bal=bal,
                        object=f"{folder}/{uid}",
                        source=source,
                        detail={"size": sealed.size},
                    ),
                )
            return (int(uidvalidity), uids), notes

        result: tuple[int, list[int]] = await self.writer.run(job)
        return result

    # -- folders ------------------------------------------------------------------------------
    async def ensure_account(self, bal: str) -> None:
        """Create the BAL's storage and default folders if absent (idempotent)."""
        await self.writer.run(lambda s: self._ensure_account(s, bal.lower()))

    def _read(self, fn: Any) -> Any:
        with Session(self.engine) as session:
            return fn(session)

    async def read(self, fn: Any, *, small: bool = False) -> Any:
        """Run ``fn(session)`` on a reader connection in a worker thread.

        A ``small`` read (one message, a folder row) runs on a connection kept for such reads
        (:mod:`mssante.store.kept`). On SQLite it runs at once, on the event loop: a few pages
        of a local WAL database, where readers never wait for the writer, cost less than the
        hop to a worker thread and back, which was most of a single-message FETCH. On
        PostgreSQL it runs in one of the store's own reader threads (a network round trip
        never blocks the event loop).
        """
        if not small:
            return await asyncio.to_thread(self._read, fn)
        if self._read_threads is None:
            return self._read_kept(fn)
        return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._read_kept, fn)

    def _read_kept(self, fn: Any) -> Any:
        try:
            return fn(self._kept.get())
        except self._kept.lost:
            # The kept connection broke (a database restart): drop it, read through a session.
            self._kept.drop()
            return self._read(fn)

    async def folders(self, bal: str) -> list[FolderInfo]:
        def q(s: blobstore.Reads) -> list[FolderInfo]:
            rows = blobstore.rows_of(
                s,
                f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE bal = :bal ORDER BY name",
                {"bal": bal.lower()},
            )
            return [_folder_tuple(r) for r in rows]

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    @staticmethod
    def _folder_row(s: blobstore.Reads, bal: str, name: str) -> FolderInfo:
        rows = blobstore.rows_of(
            s,
            f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE bal = :bal AND name = :name",
            {"bal": bal.lower(), "name": name},
        )
        if not rows:
            raise FolderNotFound(f"no folder {name!r}")
        return _folder_tuple(rows[0])

    async def folder(self, bal: str, name: str) -> FolderInfo:
        return await self.read(lambda s: self._folder_row(s, bal, name), small=True)  # type: ignore[no-any-return]

    async def status(self, bal: str, name: str) -> FolderStatus:
        def q(s: Session) -> FolderStatus:
            info = self._folder_row(s, bal, name)
            count = size = unseen = recent = deleted = 0
            for msg_size, flags, uid in run(
                s, "SELECT size, flags, uid FROM messages WHERE folder_id = :f", {"f": info.id}
            ):
                count += 1
                size += msg_size
                split = _split_flags(flags)
                unseen += "\\Seen" not in split
                deleted += "\\Deleted" in split
                recent += uid >= info.first_recent_uid
            return FolderStatus(info, count, unseen, size, recent, deleted)

        return await self.read(q)  # type: ignore[no-any-return]

    async def create_folder(self, bal: str, name: str, special_use: str | None = None) -> FolderInfo:
        """Create a folder and any missing parents ("a/b/c" creates "a" and "a/b")."""
        bal = bal.lower()
        if name.upper() == INBOX or not name or name.endswith(DELIMITER):
            raise (
                FolderExists(f"folder {name!r} already exists")
                if name.upper() == INBOX
                else FolderNotAllowed(f"invalid folder name {name!r}")
            )

        def job(session: Session) -> FolderInfo:
            self._ensure_account(session, bal)
            exists = session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == name)
            ).first()
            if exists:
                raise FolderExists(f"folder {name!r} already exists")
            parts = name.split(DELIMITER)
            now = datetime.now(UTC)
            uidvalidity = self._next_uidvalidity(session, bal)
            rows = [
                {
                    "bal": bal,
                    "name": DELIMITER.join(parts[: i + 1]),
                    "uidvalidity": uidvalidity,
                    "uidnext": 1,
                    "highestmodseq": 1,
                    "special_use": special_use if i == len(parts) - 1 else None,
                    "first_recent_uid": 1,
                    "created_at": now,
                }
                for i in range(len(parts))
            ]
            self._insert_ignore(session, folders_t, rows)
            return self._folder_row(session, bal, name)

        return await self.writer.run(job)  # type: ignore[no-any-return]

    @staticmethod
    def _next_uidvalidity(session: Session, bal: str) -> int:
        """A UIDVALIDITY strictly above every one this BAL ever gave (deleted folders
        included: the counter lives on the account), and at least the current second.

        The UPDATE takes the account's row lock, so two processes never hand out one value."""
        row = run(
            session,
            "UPDATE mail_accounts SET last_uidvalidity = CASE WHEN last_uidvalidity >= :now "
            "THEN last_uidvalidity + 1 ELSE :now END WHERE bal = :bal RETURNING last_uidvalidity",
            {"now": int(time.time()), "bal": bal},
        ).first()
        if row is None:
            raise FolderNotFound(f"no mailbox storage for {bal}")
        return int(row[0])

    async def delete_folder(self, bal: str, name: str, *, actor: str, source: str | None = None) -> None:
        bal = bal.lower()
        if name.upper() == INBOX:
            raise FolderNotAllowed("INBOX cannot be deleted")

        def job(session: Session) -> tuple[None, Notes]:
            row = session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == name)
            ).first()
            if row is None:
                raise FolderNotFound(f"no folder {name!r}")
            fid = row.id
            usage = session.execute(
                select(func.count(), func.coalesce(func.sum(messages_t.c.size), 0)).where(
                    messages_t.c.folder_id == fid
                )
            ).one()
            blob_ids = list(
                session.execute(select(messages_t.c.blob_id).where(messages_t.c.folder_id == fid)).scalars()
            )
            session.execute(delete(messages_t).where(messages_t.c.folder_id == fid))
            session.execute(delete(changes_t).where(changes_t.c.folder_id == fid))
            session.execute(delete(folders_t).where(folders_t.c.id == fid))
            self._refund(session, bal, int(usage[1]), int(usage[0]))
            self.collect_blobs(session, blob_ids)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="folder.delete",
                    bal=bal,
                    object=name,
                    source=source,
                    detail={"messages": int(usage[0])},
                ),
            )
            return None, Notes([FolderChange(fid, 0, "deleted", 0)])

        await self.writer.run(job)

    async def rename_folder(
        self, bal: str, old: str, new: str, *, actor: str, source: str | None = None
    ) -> None:
        """Rename a folder and its children; renaming INBOX moves its messages (RFC 3501 §6.3.5)."""
        bal = bal.lower()
        if new.upper() == INBOX or not new:
            raise FolderExists("INBOX already exists")

        def job(session: Session) -> tuple[None, Notes]:
            src = session.execute(
                select(folders_t).where(folders_t.c.bal == bal, folders_t.c.name == old)
            ).first()
            if src is None:
                raise FolderNotFound(f"no folder {old!r}")
            if session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == new)
            ).first():
                raise FolderExists(f"folder {new!r} already exists")
            notes = Notes()
            if old.upper() == INBOX:
                uidvalidity = self._next_uidvalidity(session, bal)
                dst_id = session.execute(
                    insert(folders_t)
                    .values(
                        bal=bal,
                        name=new,
                        uidvalidity=uidvalidity,
                        uidnext=src.uidnext,
                        highestmodseq=1,
                        special_use=None,
                        first_recent_uid=src.first_recent_uid,
                        created_at=datetime.now(UTC),
                    )
                    .returning(folders_t.c.id)
                ).scalar_one()
                uids = list(
                    session.execute(
                        select(messages_t.c.uid).where(messages_t.c.folder_id == src.id)
                    ).scalars()
                )
                session.execute(
                    update(messages_t).where(messages_t.c.folder_id == src.id).values(folder_id=dst_id)
                )
                modseq = self._bump_modseq(session, src.id)
                for uid in uids:
                    session.execute(
                        insert(changes_t).values(
                            folder_id=src.id, modseq=modseq, kind="expunge", uid=uid, at=datetime.now(UTC)
                        )
                    )
                    notes.append(FolderChange(src.id, modseq, "expunge", uid))
            else:
                children = session.execute(
                    select(folders_t.c.id, folders_t.c.name).where(
                        folders_t.c.bal == bal, folders_t.c.name.startswith(old + DELIMITER, autoescape=True)
                    )
                ).all()
                session.execute(update(folders_t).where(folders_t.c.id == src.id).values(name=new))
                self._rename_subscriptions(session, bal, old, new)
                for child in children:
                    session.execute(
                        update(folders_t)
                        .where(folders_t.c.id == child.id)
                        .values(name=new + child.name[len(old) :])
                    )
            audit.append(
                session,
                AuditEvent(
                    actor=actor, action="folder.rename", bal=bal, object=f"{old} -> {new}", source=source
                ),
            )
            return None, notes

        await self.writer.run(job)

    @staticmethod
    def _rename_subscriptions(session: Session, bal: str, old: str, new: str) -> None:
        """A renamed folder keeps its subscription, and so do its children (as Dovecot does)."""
        names = (
            session.execute(
                select(subscriptions_t.c.name).where(
                    subscriptions_t.c.bal == bal,
                    (subscriptions_t.c.name == old)
                    | subscriptions_t.c.name.startswith(old + DELIMITER, autoescape=True),
                )
            )
            .scalars()
            .all()
        )
        for name in names:
            session.execute(
                delete(subscriptions_t).where(subscriptions_t.c.bal == bal, subscriptions_t.c.name == name)
            )
        if names:
            MessageStore._insert_ignore_static(
                session, subscriptions_t, [{"bal": bal, "name": new + n[len(old) :]} for n in names]
            )

    async def set_subscribed(self, bal: str, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe a name; whether a folder has that name is not asked
        (RFC 3501 §6.3.6-7: a subscription outlives its folder)."""
        bal = bal.lower()

        def job(session: Session) -> None:
            self._ensure_account(session, bal)
            if subscribed:
                self._insert_ignore(session, subscriptions_t, [{"bal": bal, "name": name}])
            else:
                session.execute(
                    delete(subscriptions_t).where(
                        subscriptions_t.c.bal == bal, subscriptions_t.c.name == name
                    )
                )

        await self.writer.run(job)

    async def usage(self, bal: str) -> tuple[int, int | None, int]:
        """(bytes used, quota in bytes or None for none, messages) of a BAL."""

        def q(s: blobstore.Reads) -> tuple[int, int | None, int]:
            rows = blobstore.rows_of(
                s,
                "SELECT used_bytes, quota_bytes, message_count FROM mail_accounts WHERE bal = :bal",
                {"bal": bal.lower()},
            )
            if not rows:
                return 0, self.default_quota, 0
            used, quota, count = rows[0]
            return int(used), None if quota is None else int(quota), int(count)

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    async def subscriptions(self, bal: str) -> list[str]:
        """The names a BAL subscribed to, existing folders or not (LSUB)."""

        def q(s: blobstore.Reads) -> list[str]:
            rows = blobstore.rows_of(
                s,
                "SELECT name FROM mailbox_subscriptions WHERE bal = :bal ORDER BY name",
                {"bal": bal.lower()},
            )
            return [r[0] for r in rows]

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    async def claim_recent(self, folder_id: int, upto_uid: int) -> int:
        """Take the \\Recent messages of a folder up to ``upto_uid`` (exclusive) for one session.

        Returns the first UID that is recent for the caller: messages from it up to
        ``upto_uid`` are recent to this session and to no other (RFC 3501 §2.3.2). Under the
        folder's row lock, so two sessions — of one process or several — never both get one."""

        def job(session: Session) -> int:
            first = session.execute(
                select(folders_t.c.first_recent_uid).where(folders_t.c.id == folder_id).with_for_update()
            ).scalar()
            if first is None or first >= upto_uid:
                return upto_uid
            session.execute(
                update(folders_t).where(folders_t.c.id == folder_id).values(first_recent_uid=upto_uid)
            )
            return int(first)

        return await self.writer.run(job)  # type: ignore[no-any-return]

    # -- messages ---------------------------------------------------------------------------
    async def messages(self, folder_id: int, since_uid: int = 0) -> list[MessageRow]:
        """The folder's messages in UID order (flags, sizes, dates; no content), UIDs > ``since_uid``."""

        def q(s: Session) -> list[MessageRow]:
            rows = blobstore.rows_of(
                s,
                "SELECT uid, flags, size, internaldate, modseq, blob_id FROM messages "
                "WHERE folder_id = :f AND uid > :since ORDER BY uid",
                {"f": folder_id, "since": since_uid},
            )
            return [
                MessageRow(uid, _split_flags(flags), size, _stored_time(at), modseq, blob_id)
                for uid, flags, size, at, modseq, blob_id in rows
            ]

        return await self.read(q)  # type: ignore[no-any-return]

    async def meta(self, blob_ids: list[int], only: str | None = None) -> dict[int, dict[str, Any]]:
        """Parsed structures (envelope, body structure, header index) of several messages;
        ``only="envelope"`` when nothing else is needed (cheaper to parse)."""
        return await self.read(  # type: ignore[no-any-return]
            lambda s: self.reader.meta(s, blob_ids, only), small=len(blob_ids) <= INLINE_READ_META
        )

    async def body(self, blob_id: int, start: int = 0, end: int | None = None) -> bytes:
        """Plaintext bytes ``[start, end)`` of a message (a section or a partial fetch);
        :class:`MessageGone` when it was expunged and its content collected meanwhile."""
        try:
            return await self.read(  # type: ignore[no-any-return]
                lambda s: self.reader.read(s, blob_id, start, end),
                small=end is not None and end - start <= INLINE_READ_BYTES,
            )
        except NoResultFound:
            raise MessageGone(f"message content {blob_id} no longer exists") from None

    async def stream(self, blob_id: int, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Plaintext by chunks, a chunk decrypted at a time: a large body never sits whole in memory."""
        head = await self.read(lambda s: self.reader.header(s, blob_id), small=True)
        stop = head.size if end is None else min(end, head.size)
        step = head.chunk_size * 4
        pos = start
        while pos < stop:
            upto = min(pos + step, stop)
            yield await self.body(blob_id, pos, upto)
            pos = upto

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: Iterable[str],
        *,
        actor: str,
        bal: str | None = None,
        source: str | None = None,
        unchanged_since: int | None = None,
        modified: list[int] | None = None,
    ) -> list[tuple[int, tuple[str, ...], int]]:
        """Change flags; returns (uid, flags, modseq) of every message whose flags changed.

        With ``unchanged_since`` (CONDSTORE), a message whose MODSEQ is above it is left as it
        is and its UID added to ``modified`` — decided under the folder's lock, so the test
        and the change are one step for every session and process."""
        wanted = normalise_flags(flags)
        wanted_l = {f.lower() for f in wanted}
        uid_list = sorted(set(uids))

        def job(session: Session) -> tuple[list[tuple[int, tuple[str, ...], int]], Notes]:
            changed: list[tuple[int, str]] = []
            # The folder's row lock first (PostgreSQL; SQLite's writer is alone anyway): flags
            # are read, tested against UNCHANGEDSINCE and rewritten with no other process in
            # between, so no change is lost and MODSEQs follow the order of the changes.
            session.execute(select(folders_t.c.id).where(folders_t.c.id == folder_id).with_for_update())
            for i in range(0, len(uid_list), 500):
                rows = session.execute(
                    select(messages_t.c.id, messages_t.c.uid, messages_t.c.flags, messages_t.c.modseq).where(
                        messages_t.c.folder_id == folder_id, messages_t.c.uid.in_(uid_list[i : i + 500])
                    )
                )
                for row in rows:
                    if unchanged_since is not None and row.modseq > unchanged_since:
                        if modified is not None:
                            modified.append(row.uid)
                        continue
                    current = _split_flags(row.flags)
                    if mode == "add":
                        new = normalise_flags((*current, *wanted))
                    elif mode == "remove":
                        new = tuple(f for f in current if f.lower() not in wanted_l)
                    else:
                        new = wanted
                    if new != current:
                        text = " ".join(new)
                        changed.append((row.uid, text))
                        session.execute(
                            update(messages_t).where(messages_t.c.id == row.id).values(flags=text)
                        )
            if not changed:
                return [], Notes()
            modseq = self._bump_modseq(session, folder_id)
            now = datetime.now(UTC)
            notes = Notes()
            session.execute(
                update(messages_t)
                .where(messages_t.c.folder_id == folder_id, messages_t.c.uid.in_([u for u, _ in changed]))
                .values(modseq=modseq)
            )
            session.execute(
                insert(changes_t),
                [
                    {
                        "folder_id": folder_id,
                        "modseq": modseq,
                        "kind": "flags",
                        "uid": uid,
                        "flags": text,
                        "at": now,
                    }
                    for uid, text in changed
                ],
            )
            notes.extend(FolderChange(folder_id, modseq, "flags", uid, text) for uid, text in changed)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="message.flags",
                    bal=bal,
                    source=source,
                    object=f"folder:{folder_id}",
                    detail={"mode": mode, "flags": list(wanted), "count": len(changed)},
                ),
            )
            return [(uid, _split_flags(text), modseq) for uid, text in changed], notes

        return await self.writer.run(job)  # type: ignore[no-any-return]

    async def expunge(
        self,
        folder_id: int,
        uids: Sequence[int] | None = None,
        *,
        actor: str,
        bal: str | None = None,
        source: str | None = None,
    ) -> list[int]:
        """Remove the messages flagged \\Deleted (only among ``uids`` when given); returns their UIDs."""

        def job(session: Session) -> tuple[list[int], Notes]:
            query = select(
                messages_t.c.id, messages_t.c.uid, messages_t.c.flags, messages_t.c.size, messages_t.c.blob_id
            ).where(messages_t.c.folder_id == folder_id)
            if uids is not None:
                query = query.where(messages_t.c.uid.in_(list(uids)))
            doomed = [r for r in session.execute(query) if "\\Deleted" in _split_flags(r.flags)]
            if not doomed:
                return [], Notes()
            return self._remove(session, folder_id, doomed, actor, bal, source, "message.expunge")

        return await self.writer.run(job)  # type: ignore[no-any-return]

    def _remove(
        self,
        session: Session,
        folder_id: int,
        rows: list[Any],
        actor: str,
        bal: str | None,
        source: str | None,
        action: str,
    ) -> tuple[list[int], Notes]:
        owner = session.execute(select(folders_t.c.bal).where(folders_t.c.id == folder_id)).scalar_one()
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 500):
            session.execute(delete(messages_t).where(messages_t.c.id.in_(ids[i : i + 500])))
        modseq = self._bump_modseq(session, folder_id)
        now = datetime.now(UTC)
        uids = sorted(r.uid for r in rows)
        session.execute(
            insert(changes_t),
            [
                {
                    "folder_id": folder_id,
                    "modseq": modseq,
                    "kind": "expunge",
                    "uid": uid,
                    "flags": None,
                    "at": now,
                }
                for uid in uids
            ],
        )
        self._refund(session, owner, sum(r.size for r in rows), len(rows))
        self.collect_blobs(session, [r.blob_id for r in rows])
        audit.append(
            session,
            AuditEvent(
                actor=actor,
                action=action,
                bal=bal or owner,
                source=source,
                object=f"folder:{folder_id}",
                detail={"count": len(uids)},
            ),
        )
        return uids, Notes(FolderChange(folder_id, modseq, "expunge", uid) for uid in uids)

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

    async def copy(
        self,
        src_folder_id: int,
        uids: Sequence[int],
        dst_bal: str,
        dst_name: str,
        *,
        actor: str,
        move: bool = False,
        source: str | None = None,
    ) -> CopyResult:
        """COPY or MOVE messages to another folder (of the same or another BAL); blobs are shared."""
        dst_bal = dst_bal.lower()
        uid_list = sorted(set(uids))

        def job(session: Session) -> tuple[CopyResult, Notes]:
            dst = session.execute(
                select(folders_t.c.id, folders_t.c.uidvalidity).where(
                    folders_t.c.bal == dst_bal, folders_t.c.name == dst_name
                )
            ).first()
            if dst is None:
                raise FolderNotFound(f"no folder {dst_name!r}")
            rows: list[Any] = []
            for i in range(0, len(uid_list), 500):
                rows.extend(
                    session.execute(
                        select(
                            messages_t.c.id,
                            messages_t.c.uid,
                            messages_t.c.flags,
                            messages_t.c.size,
                            messages_t.c.blob_id,
                            messages_t.c.internaldate,
                        ).where(
                            messages_t.c.folder_id == src_folder_id,
                            messages_t.c.uid.in_(uid_list[i : i + 500]),
                        )
                    )
                )
            rows.sort(key=lambda r: r.uid)
            if not rows:
                return CopyResult(int(dst.uidvalidity), []), Notes()
            self._charge(session, dst_bal, sum(r.size for r in rows), len(rows))
            allocated = self._allocate(session, len(rows), folder_id=dst.id)
            assert allocated is not None  # the row was just read in this transaction
            dst_id, first_uid, modseq = allocated
            now = datetime.now(UTC)
            pairs = [(r.uid, first_uid + n) for n, r in enumerate(rows)]
            session.execute(
                insert(messages_t),
                [
                    {
                        "folder_id": dst_id,
                        "uid": first_uid + n,
                        "blob_id": r.blob_id,
                        "size": r.size,
                        "internaldate": r.internaldate,
                        "flags": r.flags,
                        "modseq": modseq,
                    }
                    for n, r in enumerate(rows)
                ],
            )
            session.execute(
                insert(changes_t),
                [
                    {
                        "folder_id": dst_id,
                        "modseq": modseq,
                        "kind": "append",
                        "uid": new_uid,
                        "flags": r.flags,
                        "at": now,
                    }
                    for r, (_, new_uid) in zip(rows, pairs, strict=True)
                ],
            )
            notes = Notes(FolderChange(dst_id, modseq, "append", new_uid) for _, new_uid in pairs)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="message.move" if move else "message.copy",
                    bal=dst_bal,
                    source=source,
                    object=f"{dst_name}",
                    detail={"count": len(rows), "from_folder": src_folder_id},
                ),
            )
            if move:
                _, removed = self._remove(
                    session, src_folder_id, rows, actor, None, source, "message.move_out"
                )
                notes.extend(removed)
            return CopyResult(int(dst.uidvalidity), pairs), notes

        return await self.writer.run(job)  # type: ignore[no-any-return]

    async def changes_since(self, folder_id: int, modseq: int) -> list[FolderChange]:
        """Durable changes of a folder after ``modseq`` (what a session missed, or another node did)."""

        def q(s: Session) -> list[FolderChange]:
            rows = run(
                s,
                "SELECT folder_id, modseq, kind, uid, flags FROM folder_changes "
                "WHERE folder_id = :f AND modseq > :m ORDER BY id",
                {"f": folder_id, "m": modseq},
            )
            return [FolderChange(*r) for r in rows]

        return await self.read(q)  # type: ignore[no-any-return]

    async def record(self, *events: AuditEvent) -> None:
        """Append audit events through the writer (for actions that change nothing else)."""
        await self.writer.run(lambda s: audit.append(s, *events))


@dataclass(frozen=True)
class _Delivery:
    """One delivery as a writer job: run alone (``__call__``) or with the other deliveries of
    its group commit (``together``, see :mod:`mssante.store.writer`)."""

    store: MessageStore
    sealed: blobstore.SealedBlob
    sender: str
    bals: list[str]
    actor: str
    source: str | None
    folder: str
    message_id: str | None
    extra_audit: tuple[AuditEvent, ...]
    outbound: tuple[blobstore.SealedBlob, Outbound] | None
    also: tuple[Callable[[Session], None], ...]

    def __call__(self, session: Session) -> tuple[dict[str, int], Notes]:
        return self.store._deliver_job(
            session,
            self.sealed,
            self.sender,
            self.bals,
            self.actor,
            self.source,
            self.folder,
            self.message_id,
            self.extra_audit,
            self.outbound,
            self.also,
        )

    @property
    def together(self) -> Callable[[Session, list[_Delivery]], list[tuple[dict[str, int], Notes]]]:
        return self.store._deliver_many

    def event(self, bal: str, uid: int) -> AuditEvent:
        return _deliver_event(
            self.actor, bal, self.folder, uid, self.source, self.sender, self.message_id, self.sealed.size
        )
