"""Delivery to other operators: the outbound queue's worker.

Entries (one per message and remote domain) are created in the transaction that accepted the
message. A worker claims due entries under a lease (``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL, the write lock on SQLite), so several server processes share one queue and an
entry whose worker died is taken again when its lease ends. Delivery goes only over TLS 1.2+
with our operator certificate, to a peer whose certificate chains to the trust store and names
the domain; there is no fallback to clear text, ever.

Outcomes per recipient: accepted (removed from the entry), permanent failure (5xx, a refused
or unverifiable certificate: returned to the sender in a DSN), temporary failure (4xx, no
connection: retried on ``relay.retry_schedule`` with jitter until ``relay.max_age_seconds``).
The entry update and the DSN commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiosmtplib
import dns.resolver
from sqlalchemy import Table, delete, or_, select, update
from sqlalchemy.orm import Session

from mssante import audit, metrics
from mssante.audit import AuditEvent
from mssante.config import Settings
from mssante.smtp import dsn
from mssante.sqlfast import utc
from mssante.store.models import OutboundEntry
from mssante.store.store import MessageStore
from mssante.tls import client_context

log = logging.getLogger("mssante.relay")
queue_t = cast(Table, OutboundEntry.__table__)
SYSTEM = "system:relay"


@dataclass
class Claimed:
    id: int
    blob_id: int
    mail_from: str
    domain: str
    recipients: list[str]
    attempts: int
    created_at: datetime
    delay_warned: bool


@dataclass
class Attempt:
    """What one delivery attempt of an entry achieved, recipient by recipient."""

    delivered: list[str] = field(default_factory=list)
    failed: list[dsn.RecipientStatus] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)  # address → reason
    remote: str | None = None


class PermanentError(Exception):
    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _code_status(code: int, message: str) -> str:
    words = message.split()
    if words and words[0].count(".") == 2 and words[0][0] in "245":
        return words[0]
    return f"{str(code)[0]}.0.0"


class RelayWorker:
    def __init__(self, settings: Settings, store: MessageStore, *, node: str | None = None) -> None:
        self.settings = settings
        self.relay = settings.relay
        self.store = store
        # What its leases carry: the node's name (one worker process per name).
        self.node = node or settings.server.hostname
        self._wake = asyncio.Event()
        self._stopping = False
        self._tls: ssl.SSLContext | None = None

    # -- running --------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = client_context(
                self.settings.tls, cert_file=self.relay.client_cert_file, key_file=self.relay.client_key_file
            )
        return self._tls

    async def run(self) -> None:
        # Leases this node held before a crash or restart are ours to take back now.
        await self.store.writer.run(self._release_own_leases)
        while not self._stopping:
            try:
                await self.run_once()
            except Exception:
                log.exception("relay pass failed; retrying at the next poll")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.relay.poll_seconds)
            self._wake.clear()

    async def run_once(self) -> int:
        """Claim the due entries and try each once; returns how many were tried."""
        now = datetime.now(UTC)
        claimed: list[Claimed] = await self.store.writer.run(lambda s: self._claim(s, now))
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.relay.concurrency)

        async def one(entry: Claimed) -> None:
            async with gate:
                await self._process(entry)

        await asyncio.gather(*(one(e) for e in claimed))
        return len(claimed)

    def _release_own_leases(self, session: Session) -> None:
        session.execute(
            update(queue_t)
            .where(queue_t.c.claimed_by == self.node)
            .values(claimed_until=None, claimed_by=None)
        )

    def _claim(self, session: Session, now: datetime) -> list[Claimed]:
        rows = session.execute(
            select(queue_t)
            .where(
                queue_t.c.next_attempt_at <= now,
                or_(queue_t.c.claimed_until.is_(None), queue_t.c.claimed_until < now),
            )
            .order_by(queue_t.c.next_attempt_at)
            .limit(self.relay.concurrency * 4)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return []
        session.execute(
            update(queue_t)
            .where(queue_t.c.id.in_([r.id for r in rows]))
            .values(claimed_until=now + timedelta(seconds=self.relay.lease_seconds), claimed_by=self.node)
        )
        return [
            Claimed(
                r.id,
                r.blob_id,
                r.mail_from,
                r.domain,
                json.loads(r.recipients),
                r.attempts,
                utc(r.created_at),
                bool(r.delay_warned),
            )
            for r in rows
        ]

    # -- one entry ------------------------------------------------------------------------
    async def _process(self, entry: Claimed) -> None:
        attempt = await self.attempt(entry)
        now = datetime.now(UTC)
        age = (now - entry.created_at).total_seconds()
        statuses = list(attempt.failed)
        expired = age >= self.relay.max_age_seconds
        if expired:
            statuses += [
                dsn.RecipientStatus(
                    a, "failed", "4.4.7", f"gave up after {age / 3600:.0f} h: {why}", attempt.remote
                )
                for a, why in attempt.deferred.items()
            ]
        warn = (
            not expired
            and attempt.deferred
            and not entry.delay_warned
            and self.relay.delay_warning_seconds
            and age >= self.relay.delay_warning_seconds
        )
        if warn:
            statuses += [
                dsn.RecipientStatus(a, "delayed", "4.0.0", why, attempt.remote)
                for a, why in attempt.deferred.items()
            ]
        remaining = [] if expired else list(attempt.deferred)
        delay = self._next_delay(entry.attempts)

        def record(session: Session) -> None:
            self._record(session, entry, attempt, remaining, now, delay, bool(warn), statuses)

        if statuses and entry.mail_from:
            report = dsn.build(
                reporting_mta=self.settings.server.hostname,
                sender=entry.mail_from,
                original=await self.store.body(entry.blob_id, 0, dsn.HEADER_READ),
                arrival=entry.created_at,
                statuses=statuses,
                now=now,
            )
            await self.store.deliver(report, "", [entry.mail_from], actor=SYSTEM, also=[record])
        else:
            await self.store.writer.run(record)
        log.info(
            "relay to %s: %d delivered, %d failed, %d deferred",
            entry.domain,
            len(attempt.delivered),
            len(attempt.failed),
            len(remaining),
        )
        metrics.relay_attempt(attempt, remaining, expired)

    def _next_delay(self, attempts: int) -> float:
        schedule = self.relay.retry_schedule
        base = schedule[min(attempts, len(schedule) - 1)]
        return base * random.uniform(0.9, 1.1)

    def _record(
        self,
        session: Session,
        entry: Claimed,
        attempt: Attempt,
        remaining: list[str],
        now: datetime,
        delay: float,
        warned: bool,
        statuses: list[dsn.RecipientStatus],
    ) -> None:
        events = []
        if attempt.delivered:
            events.append(
                AuditEvent(
                    actor=SYSTEM,
                    action="message.relay",
                    object=entry.domain,
                    detail={"to": attempt.delivered, "remote": attempt.remote},
                )
            )
        for status in statuses:
            events.append(
                AuditEvent(
                    actor=SYSTEM,
                    action=f"message.dsn.{status.action}",
                    bal=entry.mail_from or None,
                    object=status.address,
                    outcome=status.status,
                    detail={"reason": status.diagnostic[:300]},
                )
            )
        if remaining:
            session.execute(
                update(queue_t)
                .where(queue_t.c.id == entry.id)
                .values(
                    recipients=json.dumps(remaining),
                    attempts=entry.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=delay),
                    claimed_until=None,
                    claimed_by=None,
                    last_error="; ".join(sorted(set(attempt.deferred.values())))[:2000],
                    delay_warned=entry.delay_warned or warned,
                )
            )
        else:
            session.execute(delete(queue_t).where(queue_t.c.id == entry.id))
            MessageStore.collect_blobs(session, [entry.blob_id])
        audit.append(session, *events)

    # -- SMTP client ----------------------------------------------------------------------
    async def routes(self, domain: str) -> list[tuple[str, int]]:
        static = self.relay.routes.get(domain)
        if static is not None:
            host, _, port = static.rpartition(":")
            return [(host.strip("[]"), int(port))]

        def lookup() -> list[tuple[str, int]]:
            try:
                answers = dns.resolver.resolve(domain, "MX", lifetime=10)
            except dns.resolver.NXDOMAIN:
                raise PermanentError("5.1.2", f"domain {domain} does not exist") from None
            except dns.resolver.NoAnswer:
                return [(domain, 25)]
            ordered = sorted(answers, key=lambda r: r.preference)
            return [(str(r.exchange).rstrip("."), 25) for r in ordered]

        return await asyncio.to_thread(lookup)

    async def attempt(self, entry: Claimed) -> Attempt:
        result = Attempt()
        try:
            targets = await self.routes(entry.domain)
        except PermanentError as exc:
            result.failed = [
                dsn.RecipientStatus(a, "failed", exc.status, exc.reason) for a in entry.recipients
            ]
            return result
        except Exception as exc:
            result.deferred = {a: f"cannot resolve {entry.domain}: {exc}" for a in entry.recipients}
            return result
        last_error = "no route"
        for host, port in targets:
            try:
                await self._send(host, port, entry, result)
                return result
            except PermanentError as exc:
                result.failed = [
                    dsn.RecipientStatus(a, "failed", exc.status, exc.reason, host)
                    for a in entry.recipients
                    if a not in result.delivered
                ]
                return result
            except (OSError, TimeoutError, aiosmtplib.SMTPException) as exc:
                last_error = f"{host}:{port}: {exc}"
                continue
        result.deferred = {a: last_error for a in entry.recipients}
        return result

    async def _send(self, host: str, port: int, entry: Claimed, result: Attempt) -> None:
        timeout = self.relay.timeout_seconds
        sock = await asyncio.wait_for(
            asyncio.to_thread(socket.create_connection, (host, port), timeout), timeout
        )
        client = aiosmtplib.SMTP(
            sock=sock,
            hostname=entry.domain,
            timeout=timeout,
            local_hostname=self.settings.server.hostname,
            start_tls=False,
            tls_context=self.tls_context(),
        )
        result.remote = host
        await client.connect()
        try:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise OSError(f"{host} does not offer STARTTLS: never sending in clear")
            try:
                await client.starttls(server_hostname=entry.domain, tls_context=self.tls_context())
            except (ssl.SSLCertVerificationError, ssl.SSLError) as exc:
                raise PermanentError("5.7.10", f"TLS with {host} failed: {exc}") from None
            except aiosmtplib.SMTPConnectError as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, ssl.SSLError):
                    raise PermanentError("5.7.10", f"TLS with {host} failed: {cause}") from None
                raise
            await client.ehlo()
            await self._transaction(client, entry, self.store, result)
        finally:
            try:
                await client.quit()
            except Exception:
                client.close()

    @staticmethod
    async def _transaction(
        client: aiosmtplib.SMTP, entry: Claimed, store: MessageStore, result: Attempt
    ) -> None:
        try:
            await client.mail(entry.mail_from)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                raise PermanentError(
                    _code_status(exc.code, exc.message), f"{exc.code} {exc.message}"
                ) from None
            raise
        accepted = []
        for address in entry.recipients:
            try:
                await client.rcpt(address)
                accepted.append(address)
            except aiosmtplib.SMTPResponseException as exc:
                reply = f"{exc.code} {exc.message}"
                if exc.code >= 500:
                    result.failed.append(
                        dsn.RecipientStatus(
                            address, "failed", _code_status(exc.code, exc.message), reply, result.remote
                        )
                    )
                else:
                    result.deferred[address] = reply
        if not accepted:
            return
        try:
            await send_data(client, store.stream(entry.blob_id))
        except aiosmtplib.SMTPResponseException as exc:
            reply = f"{exc.code} {exc.message}"
            for address in accepted:
                if exc.code >= 500:
                    result.failed.append(
                        dsn.RecipientStatus(
                            address, "failed", _code_status(exc.code, exc.message), reply, result.remote
                        )
                    )
                else:
                    result.deferred[address] = reply
            return
        result.delivered.extend(accepted)


async def send_data(client: aiosmtplib.SMTP, chunks: AsyncIterator[bytes]) -> None:
    """DATA with the message streamed from the store, a read (4 chunks) at a time, each
    written once the connection's buffer has drained: the message is never whole in memory
    (``aiosmtplib``'s ``data()`` takes it whole and copies it twice, for line ends and dots).
    The stored message has CRLF line ends; lines starting with a dot get another (RFC 5321
    §4.5.2), a line cut between two reads included."""
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    line_start = True
    last = b"\n"
    async for chunk in chunks:
        if not chunk:
            continue
        stuffed = chunk.replace(b"\n.", b"\n..")
        if line_start and chunk.startswith(b"."):
            stuffed = b"." + stuffed
        protocol.write(stuffed)
        # The flow control asyncio's StreamWriter.drain() uses; a peer that stops reading
        # fails the attempt as a silent one would (retried later).
        await asyncio.wait_for(protocol._drain_helper(), client.timeout)
        last = chunk[-1:]
        line_start = last == b"\n"
    protocol.write(b".\r\n" if last == b"\n" else b"\r\n.\r\n")
    reply = await protocol.read_response(timeout=client.timeout)
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


def queue_stats(session: Session) -> dict[str, Any]:
    """Depth and age of the outbound queue, for monitoring."""
    from sqlalchemy import func

    count, oldest = session.execute(select(func.count(), func.min(queue_t.c.created_at))).one()
    age = (datetime.now(UTC) - utc(oldest)).total_seconds() if oldest else 0.0
    return {"depth": int(count), "oldest_age_seconds": round(age, 1)}


class RelayWakeHook:
    """Delivery hook: a message with remote recipients wakes the worker at once."""

    def __init__(self, worker: RelayWorker) -> None:
        self.worker = worker

    def in_transaction(self, ctx: Any) -> None:
        return None

    def after_commit(self, ctx: Any) -> None:
        if any(r.route == "remote" for r in ctx.recipients):
            self.worker.wake()


async def start_relay(runtime: Any) -> list[Any]:
    """The worker as a "listener" of the server: started and stopped with the others."""
    from mssante.listening import RunningListener

    if not runtime.settings.relay.enabled:
        return []
    worker = RelayWorker(runtime.settings, runtime.store, node=runtime.lease_name)
    runtime.delivery_hooks.hooks.append(RelayWakeHook(worker))
    task = asyncio.create_task(worker.run(), name="relay")

    async def close() -> None:
        worker.stop()
        await task

    return [RunningListener("relay-out", "smtp", "-", 0, "required", close, public=False)]


async def drop_entry(settings: Settings, store: MessageStore, entry_id: int, reason: str) -> bool:
    """Remove a queue entry on the operator's word: DSN to the sender, audited, one transaction."""
    import getpass

    def load(session: Session) -> Any:
        return session.execute(select(queue_t).where(queue_t.c.id == entry_id)).first()

    row = await store.read(load)
    if row is None:
        return False
    actor = f"operator:{getpass.getuser()}"
    recipients = json.loads(row.recipients)
    head = await store.body(row.blob_id, 0, dsn.HEADER_READ)

    def remove(session: Session) -> None:
        session.execute(delete(queue_t).where(queue_t.c.id == entry_id))
        MessageStore.collect_blobs(session, [row.blob_id])
        audit.append(
            session,
            AuditEvent(
                actor=actor,
                action="queue.drop",
                bal=row.mail_from or None,
                object=row.domain,
                detail={"to": recipients, "reason": reason},
            ),
        )

    statuses = [
        dsn.RecipientStatus(a, "failed", "5.3.0", f"removed from the queue by the operator: {reason}")
        for a in recipients
    ]
    now = datetime.now(UTC)
    if row.mail_from:
        report = dsn.build(
            reporting_mta=settings.server.hostname,
            sender=row.mail_from,
            original=head,
            arrival=utc(row.created_at),
            statuses=statuses,
            now=now,
        )
        await store.deliver(report, "", [row.mail_from], actor=actor, also=[remove])
    else:
        await store.writer.run(remove)
    return True
