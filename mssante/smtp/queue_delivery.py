"""The submission queue's delivery process (``smtp.acknowledge = "queued"``).

``mssante serve`` starts it as one more worker process (:mod:`mssante.workers`) that binds no
port: it opens the store as the serving workers do and takes the queue's entries in batches,
each through the same delivery as an answered-when-delivered message (the group commit makes
one transaction of a batch), with the same hooks (patient conversations and notices, DMP
deposits, the outbound queue). Its own interpreter on the other core is the point: the
serving process's event loop only receives, checks and seals.

What changes for the sender is what happens *after* the ``250``:

- a full mailbox: the recipient is taken out, the message delivered to the others, and the
  sender gets a delivery status notification (5.2.2) in its BAL, traced as
  ``message.dsn.failed``;
- the store failing (database down, disk full): the entry stays and is tried again (5 s,
  30 s, 1 min, then every 5 min), never dropped;
- an entry that does not open (altered, another key ring): set aside (``aside = 1`` in
  ``queue.db``) and logged, never dropped by this process; the operator lists it, puts it
  back or drops it with a reason (``mssante queue submission``, :func:`drop_set_aside`).

Each delivery writes its entry's id in ``smtp_queue_delivered`` in its own transaction, and the
entry is removed from the queue after the commit; an entry found at start whose id is there
was delivered before a crash and is only removed. The ids are forgotten once their entries
are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from annuaire.lookup import NotCached
from mssante import audit, memory, sqlfast
from mssante.audit import AuditEvent
from mssante.listening import RunningListener
from mssante.runtime import Runtime
from mssante.smtp import dsn
from mssante.smtp.hooks import DeliveryContext
from mssante.smtp.queue import QueueBell, QueuedMessage, QueueEntryError, SubmissionQueue
from mssante.sqlfast import dialect_of, timestamp
from mssante.store.models import QueueDelivered
from mssante.store.store import MessageStore
from mssante.store.types import QuotaExceeded

log = logging.getLogger("mssante.smtp.queue")

SYSTEM = "system:queue"
POLL_SECONDS = 1.0  # a ring lost (or none, after a restart) delays an entry this long at most
# Once rung, wait this long for the entries that follow: one store commit for all of them.
# One session sends a message every 2-3 ms; at 20 ms a batch held some eight and this process
# spent 0.56-0.59 ms of CPU a message, taken from the core the session needed (one session:
# 399-444 msg/s in four runs); at 50 ms, some twenty and 0.46 ms (408-478 msg/s in four runs;
# bench/smtp_ingest.py's level reuse-1 alone). 100 and 200 ms gave no more; at 50 sessions
# the wait changes nothing (a batch is there at once).
BATCH_WAIT = 0.05
BATCH_MAX = 256
RETRY_SECONDS = (5.0, 30.0, 60.0, 300.0)
FORGET_SECONDS = 5.0
_delivered_t = cast(Table, QueueDelivered.__table__)
_MARK = "INSERT INTO smtp_queue_delivered (id, delivered_at) VALUES (:id, :at)"


def _mark(entry_id: str) -> Callable[[Session], None]:
    """The write that says, in the delivery's own transaction, that this entry is delivered
    (driver SQL: the expression layer cost a sixth of this process's time, one per message)."""

    def mark(session: Session) -> None:
        at = timestamp(datetime.now(UTC), dialect_of(session))
        sqlfast.run(session, _MARK, {"id": entry_id, "at": at})

    return mark


class QueueDelivery:
    """Delivers the entries of the queue database, oldest first, in batches."""

    def __init__(self, runtime: Runtime, queue: SubmissionQueue, bell: socket.socket) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.queue = queue
        self.bell = bell  # the serving workers ring it (mssante.smtp.queue.QueueBell)
        self.hostname = runtime.settings.server.hostname
        self._rung = asyncio.Event()
        self._stopping = False
        self._retry: dict[str, tuple[int, float]] = {}  # entry -> (failures, monotonic time due)
        self._removed: list[str] = []  # entries delivered and removed: their ids may go
        self._forgotten_at = time.monotonic()

    def stop(self) -> None:
        self._stopping = True
        self._rung.set()

    def _silence(self) -> None:
        """Forget the rings heard so far (what they announced is about to be listed)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self.bell.recv(64):
                pass

    async def _rung_within(self, timeout: float) -> None:
        """Wait for a ring (or ``timeout``). The bell is listened to only while idle: a batch
        being gathered or delivered is not woken again by each entry that follows it."""
        loop = asyncio.get_running_loop()
        self._rung.clear()
        if self._stopping:
            return
        loop.add_reader(self.bell.fileno(), self._rung.set)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rung.wait(), timeout)
        finally:
            loop.remove_reader(self.bell.fileno())

    async def run(self) -> None:
        recovered = False
        while not self._stopping:
            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                await self._turn()
            except Exception:
                log.exception("queue: delivery failed to read the queue or the store; again in 5 s")
                await self._rung_within(RETRY_SECONDS[0])
        if self._removed:
            await self._forget()

    async def _turn(self) -> None:
        """Deliver what is due, or wait to be rung (or for the next retry, or a poll)."""
        now = time.monotonic()
        self._silence()
        names = await asyncio.to_thread(self.queue.waiting)
        if self._retry:  # an entry removed by hand is not waited for
            waiting = set(names)
            self._retry = {k: v for k, v in self._retry.items() if k in waiting}
        due = [n for n in names if self._retry.get(n, (0, 0.0))[1] <= now]
        if due:
            for start in range(0, len(due), BATCH_MAX):
                await self._deliver_batch(due[start : start + BATCH_MAX])
            if len(due) < BATCH_MAX and not self._stopping:
                # Let the next batch gather (a session sends one every few milliseconds): a
                # batch of one costs its own commit and fsync, and this process's interpreter.
                await asyncio.sleep(BATCH_WAIT)
            return
        if self._removed and now - self._forgotten_at >= FORGET_SECONDS:
            await self._forget()
            self._forgotten_at = now
        waits = [at - now for _, at in self._retry.values()]
        await self._rung_within(min([POLL_SECONDS, *waits]))
        if not self._stopping:
            await asyncio.sleep(BATCH_WAIT)

    async def _recover(self) -> None:
        """At start: entries whose delivery committed before a stop or crash only go."""
        names = await asyncio.to_thread(self.queue.waiting)
        done = await asyncio.to_thread(self._already_delivered, names)
        await self.queue.remove(done)
        self._removed.extend(done)
        if names:
            log.info(
                "queue: %d entr(ies) waiting at start, %d of them delivered before a stop",
                len(names),
                len(done),
            )

    def _already_delivered(self, names: list[str]) -> list[str]:
        found: list[str] = []
        with self.runtime.engine.connect() as connection:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                rows = connection.execute(select(_delivered_t.c.id).where(_delivered_t.c.id.in_(chunk)))
                found.extend(row[0] for row in rows)
        return found

    async def _forget(self) -> None:
        ids, self._removed = self._removed, []

        def forget(session: Session) -> None:
            session.execute(delete(_delivered_t).where(_delivered_t.c.id.in_(ids)))

        try:
            await self.store.writer.run(forget)
        except Exception:
            log.warning("queue: delivered ids not forgotten yet (tried again later)", exc_info=True)
            self._removed.extend(ids)

    def _open(self, names: list[str]) -> tuple[list[QueuedMessage], list[str]]:
        """The entries of ``names`` opened, and the ids of those that do not open."""
        entries, unreadable = [], []
        for entry_id, sealed in self.queue.read(names):
            try:
                entries.append(self.queue.open(entry_id, sealed))
            except QueueEntryError as exc:
                log.error("queue: %s; set aside (it was acknowledged: see to it)", exc)
                unreadable.append(entry_id)
        return entries, unreadable

    async def _deliver_batch(self, names: list[str]) -> None:
        entries, unreadable = await asyncio.to_thread(self._open, names)
        for entry_id in unreadable:
            await self.queue.set_aside(entry_id)
        retried = [entry.id for entry in entries if entry.id in self._retry]
        if retried:  # its delivery may have committed before what failed (a DSN, the removal)
            done = set(await asyncio.to_thread(self._already_delivered, retried))
            entries = [entry for entry in entries if entry.id not in done]
            await self.queue.remove(sorted(done))
            self._removed.extend(done)
            for entry_id in done:
                self._retry.pop(entry_id, None)
        results = await asyncio.gather(*(self._guarded(entry) for entry in entries))
        delivered = [entry.id for entry, done in zip(entries, results, strict=True) if done]
        # The entries go once their deliveries are committed (a crash before: see _recover).
        await self.queue.remove(delivered)
        self._removed.extend(delivered)

    async def _guarded(self, entry: QueuedMessage) -> bool:
        """Deliver ``entry``; False (and a retry later) when it could not be."""
        try:
            await self._deliver(entry)
            return True
        except Exception:
            failures = self._retry.get(entry.id, (0, 0.0))[0]
            delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
            self._retry[entry.id] = (failures + 1, time.monotonic() + delay)
            log.warning(
                "queue: entry %s not delivered (failure %d); trying again in %.0f s",
                entry.id,
                failures + 1,
                delay,
                exc_info=failures == 0,
            )
            return False

    async def _sender_bal(self, key: str) -> object:
        try:
            return self.runtime.annuaire.peek_bal(key)
        except NotCached:
            return await asyncio.to_thread(self.runtime.annuaire.bal, key)

    async def _deliver(self, entry: QueuedMessage) -> None:
        recipients = list(entry.recipients)
        over_quota: list[str] = []
        sender_bal = await self._sender_bal(entry.sender_bal)
        ctx: DeliveryContext | None = None
        while recipients:
            ctx = DeliveryContext(
                "submission",
                entry.identity,
                entry.mail_from,
                sender_bal,  # type: ignore[arg-type]
                tuple(recipients),
                entry.facts,
                entry.raw,
                entry.message_id,
            )
            local, outbound = ctx.routed(entry.signature)
            try:
                ctx.uids = await self.store.deliver(
                    entry.raw,
                    entry.mail_from,
                    local,
                    actor=entry.actor,
                    source=entry.source,
                    outbound=outbound,
                    extra_audit=entry.extra_audit,
                    also=[*self.runtime.delivery_hooks.writes(ctx), _mark(entry.id)],
                )
                break
            except QuotaExceeded as exc:
                over_quota.append(exc.bal)
                recipients = [r for r in recipients if r.address != exc.bal]
                ctx = None
        if over_quota:
            await self._bounce(entry, over_quota, marked=ctx is not None)
        self._retry.pop(entry.id, None)
        if ctx is not None:
            self.runtime.delivery_hooks.committed(ctx)
        memory.give_back(len(entry.raw))

    async def _bounce(self, entry: QueuedMessage, bals: list[str], *, marked: bool) -> None:
        """Tell the sender which recipients' mailboxes were full (after its ``250``)."""
        statuses = [
            dsn.RecipientStatus(bal, "failed", "5.2.2", f"Mailbox <{bal}> is over its quota") for bal in bals
        ]
        events = [
            AuditEvent(
                actor=SYSTEM,
                action="message.dsn.failed",
                bal=entry.mail_from or None,
                object=s.address,
                outcome=s.status,
                detail={"reason": s.diagnostic, "queue": entry.id},
            )
            for s in statuses
        ]
        also = [] if marked else [_mark(entry.id)]
        await tell_sender(self.store, self.hostname, entry, statuses, events, actor=SYSTEM, also=also)


async def tell_sender(
    store: MessageStore,
    hostname: str,
    entry: QueuedMessage,
    statuses: list[dsn.RecipientStatus],
    events: list[AuditEvent],
    *,
    actor: str,
    also: Sequence[Callable[[Session], None]] = (),
) -> None:
    """A delivery status notification in the sender's BAL for ``statuses``, with ``events``
    audited (and ``also`` written) in the same transaction; the events alone when the entry
    has no sender (a DSN's own entry) or the sender's mailbox is full."""

    def record(session: Session) -> None:
        audit.append(session, *events)
        for write in also:
            write(session)

    if entry.mail_from:
        report = dsn.build(
            reporting_mta=hostname,
            sender=entry.mail_from,
            original=dsn.header_block(bytes(entry.raw[: dsn.HEADER_READ])),
            arrival=entry.arrival,
            statuses=statuses,
            now=datetime.now(UTC),
        )
        try:
            await store.deliver(report, "", [entry.mail_from], actor=actor, also=[record])
            return
        except QuotaExceeded:
            log.warning("queue: the sender's mailbox %s is full: no DSN for %s", entry.mail_from, entry.id)
    await store.writer.run(record)


async def drop_set_aside(
    runtime: Runtime, queue: SubmissionQueue, entry_id: str, reason: str, actor: str
) -> bool:
    """Remove a set-aside entry on the operator's word (``mssante queue submission drop``):
    audited as ``queue.submission.drop`` with the reason; when the entry opens, its sender gets
    a DSN (5.3.0) naming the reason, so nothing acknowledged disappears silently. False when
    there is no such entry set aside (one waiting is the delivery process's)."""
    if (entry_id, True) not in queue.listing():
        return False
    entry: QueuedMessage | None = None
    for found_id, sealed in queue.read([entry_id]):
        with contextlib.suppress(QueueEntryError):
            entry = queue.open(found_id, sealed)
    detail: dict[str, object] = {"reason": reason, "opened": entry is not None}
    if entry is None:
        event = AuditEvent(actor=actor, action="queue.submission.drop", object=entry_id, detail=detail)
        await runtime.store.writer.run(lambda session: audit.append(session, event))
    else:
        recipients = [r.address for r in entry.recipients]
        event = AuditEvent(
            actor=actor,
            action="queue.submission.drop",
            bal=entry.mail_from or None,
            object=entry_id,
            detail={**detail, "to": recipients},
        )
        statuses = [
            dsn.RecipientStatus(a, "failed", "5.3.0", f"removed from the queue by the operator: {reason}")
            for a in recipients
        ]
        hostname = runtime.settings.server.hostname
        await tell_sender(runtime.store, hostname, entry, statuses, [event], actor=actor)
    return await queue.drop_aside(entry_id)


async def start_queue_delivery(runtime: Runtime) -> list[RunningListener]:
    """The delivery process's loop, rung by the serving workers' :class:`QueueBell`."""
    slot = runtime.worker
    assert slot is not None, "the queue's delivery runs as a worker process of its own"
    queue = SubmissionQueue(runtime.settings.data_dir, runtime.keyring)
    bell = QueueBell(slot.group).listen()
    delivery = QueueDelivery(runtime, queue, bell)
    task = asyncio.create_task(delivery.run(), name="queue-delivery")

    async def close() -> None:
        delivery.stop()
        try:
            await task
        finally:
            bell.close()
            await asyncio.to_thread(queue.close)

    return [RunningListener("queue-delivery", "queue", "", 0, "none", close, public=False)]
