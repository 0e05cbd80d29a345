"""Delivery and APPEND: content prepared (analysed, sealed) off the event loop, then one writer
job per message, run together with the other deliveries of its group commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.sqlfast import dialect_of, insert_many, run, timestamp, utc
from mssante.store import blobs as blobstore
from mssante.store import headerindex, sortkeys
from mssante.store.core import (
    StoreCore,
    folders_t,
)
from mssante.store.feed import FolderChange
from mssante.store.mime import analyse
from mssante.store.spooled import Raw
from mssante.store.types import (
    INBOX,
    AppendResult,
    Outbound,
    flags_text,
)
from mssante.store.writer import Notes

# A delivery of at most this many bytes is analysed and sealed by the writer thread (see
# _Delivery); a larger one by a worker thread of its own, while the writer commits others.
PREPARE_IN_WRITER_MAX = 64 * 1024

_INSERT_MESSAGE = (
    "INSERT INTO messages (folder_id, uid, blob_id, size, internaldate, flags, modseq) "
    "VALUES (:fid, :uid, :blob, :size, :at, '', :modseq)"
)
_INSERT_APPEND = (
    "INSERT INTO folder_changes (folder_id, modseq, kind, uid, at) "
    "VALUES (:fid, :modseq, 'append', :uid, :at)"
)
# The columns of the same rows inserted many at a time (``sqlfast.insert_many``), with their
# PostgreSQL types (binary COPY).
_MESSAGE_COLUMNS = {
    "folder_id": "int8",
    "uid": "int8",
    "blob_id": "int8",
    "size": "int8",
    "internaldate": "timestamptz",
    "flags": "text",
    "modseq": "int8",
}
_APPEND_COLUMNS = {
    "folder_id": "int8",
    "modseq": "int8",
    "kind": "varchar",
    "uid": "int8",
    "at": "timestamptz",
}


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


class DeliveryOps(StoreCore):
    # -- preparing content ----------------------------------------------------------------
    def _prepare(self, raw: Raw) -> tuple[blobstore.SealedBlob, dict[str, Any]]:
        meta = analyse(raw)
        search = headerindex.stored(headerindex.fields_of(meta))
        keys = sortkeys.stored(sortkeys.keys_of(meta))
        return blobstore.seal(self.keyring, raw, meta, self.chunk_size, search=search, sortkeys=keys), meta

    async def _prepare_async(self, raw: Raw) -> tuple[blobstore.SealedBlob, dict[str, Any]]:
        # APPEND's messages: MIME analysis and sealing in a worker thread, whatever the size
        # (deliveries: see _Delivery). On the event loop they were a tenth of its busy time at
        # 10 SMTP sessions (profile of issue 20), time during which no session was answered.
        return await asyncio.to_thread(self._prepare, raw)

    def _prepare_delivery(
        self, raw: Raw, outbound: Outbound | None
    ) -> tuple[blobstore.SealedBlob, str | None, tuple[blobstore.SealedBlob, Outbound] | None]:
        """A delivery's content sealed, its Message-ID, and the copy for other operators."""
        sealed, meta = self._prepare(raw)
        message_id = (meta["envelope"].get("message_id") or "")[:300] or None
        if outbound is None:
            return sealed, message_id, None
        sealed_out = blobstore.seal(self.keyring, outbound.raw, None, self.chunk_size, outbound.signature)
        return sealed, message_id, (sealed_out, outbound)

    # -- delivery ---------------------------------------------------------------------------
    async def deliver(
        self,
        raw: Raw,
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
        bals = list(dict.fromkeys(r.strip().lower() for r in recipients))
        delivery = _Delivery(
            self,
            sender,
            bals,
            actor or sender,
            source,
            folder,
            tuple(extra_audit),
            tuple(also),
            raw,
            outbound if outbound is not None and outbound.recipients else None,
        )
        if len(raw) > PREPARE_IN_WRITER_MAX:
            # (a small one is prepared by the writer thread itself: see _Delivery.prepare)
            await asyncio.to_thread(delivery.prepare)
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
        insert_many(
            session,
            "messages",
            _MESSAGE_COLUMNS,
            [(m["fid"], m["uid"], m["blob"], m["size"], m["at"], "", m["modseq"]) for m in messages],
        )
        insert_many(
            session,
            "folder_changes",
            _APPEND_COLUMNS,
            [(m["fid"], m["modseq"], "append", m["uid"], m["at"]) for m in messages],
        )
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
        raw: Raw,
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
        messages: Sequence[tuple[Raw, Iterable[str], datetime | None]],
        *,
        actor: str,
        source: str | None = None,
    ) -> tuple[int, list[int]]:
        """APPEND of one or several messages (MULTIAPPEND, RFC 3502) as one transaction: all
        are stored, with consecutive UIDs, or none. Returns (UIDVALIDITY, UIDs)."""
        prepared = [
            (await self._prepare_async(raw), flags_text(flags), utc(when) if when else datetime.now(UTC))
            for raw, flags, when in messages
        ]
        bal = bal.lower()

        def job(session: Session) -> tuple[tuple[int, list[int]], Notes]:
            folder_id, first_uid, modseq = self._allocate_by_name(session, bal, folder, len(prepared))
            self._charge(session, bal, sum(sealed.size for (sealed, _), _, _ in prepared), len(prepared))
            uidvalidity = session.execute(
                select(folders_t.c.uidvalidity).where(folders_t.c.id == folder_id)
            ).scalar_one()
            # One statement per table for all the messages (MULTIAPPEND), as for deliveries.
            dialect = dialect_of(session)
            blob_ids = blobstore.put_many(session, [sealed for (sealed, _), _, _ in prepared])
            now = datetime.now(UTC)
            at = timestamp(now, dialect)
            uids = [first_uid + n for n in range(len(prepared))]
            each = [
                (uid, sealed, flags, when)
                for uid, ((sealed, _), flags, when) in zip(uids, prepared, strict=True)
            ]
            insert_many(
                session,
                "messages",
                _MESSAGE_COLUMNS,
                [
                    (
                        folder_id,
                        uid,
                        blob_ids[sealed.digest],
                        sealed.size,
                        timestamp(when, dialect),
                        flags,
                        modseq,
                    )
                    for uid, sealed, flags, when in each
                ],
            )
            insert_many(
                session,
                "folder_changes",
                {**_APPEND_COLUMNS, "flags": "text"},
                [(folder_id, modseq, "append", uid, at, flags) for uid, _, flags, _ in each],
            )
            events = [
                AuditEvent(
                    actor=actor,
                    action="message.append",
                    bal=bal,
                    object=f"{folder}/{uid}",
                    source=source,
                    detail={"size": sealed.size},
                )
                for uid, sealed, _, _ in each
            ]
            audit.append(session, *events, at=now)
            notes = Notes(FolderChange(folder_id, modseq, "append", uid, flags) for uid, _, flags, _ in each)
            return (int(uidvalidity), uids), notes

        result: tuple[int, list[int]] = await self.writer.run(job)
        return result


@dataclass(eq=False, repr=False)  # (no message content in a repr)
class _Delivery:
    """One delivery as a writer job: run alone (``__call__``) or with the other deliveries of
    its group commit (``together``, see :mod:`mssante.store.writer`).

    Its content is analysed and sealed by :meth:`prepare` before the job runs: by a worker
    thread for a large message (``deliver`` awaits it), by the writer thread itself, before its
    transaction, for one of at most :data:`PREPARE_IN_WRITER_MAX` bytes, the usual one: a thread
    and a hop back to the event loop less per message (a tenth of the loop's CPU at one SMTP
    session, profile of issue 20), for work that holds the interpreter wherever it runs.
    """

    store: DeliveryOps
    sender: str
    bals: list[str]
    actor: str
    source: str | None
    folder: str
    extra_audit: tuple[AuditEvent, ...]
    also: tuple[Callable[[Session], None], ...]
    raw: Raw | None  # the content until it is prepared
    outbound_request: Outbound | None  # the copy for other operators, until it is sealed
    sealed: blobstore.SealedBlob = field(init=False)
    message_id: str | None = field(init=False, default=None)
    outbound: tuple[blobstore.SealedBlob, Outbound] | None = field(init=False, default=None)

    def prepare(self) -> None:
        """Seal the content (once); the received buffer is let go."""
        if self.raw is None:
            return
        self.sealed, self.message_id, self.outbound = self.store._prepare_delivery(
            self.raw, self.outbound_request
        )
        self.raw = self.outbound_request = None

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
