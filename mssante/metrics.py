"""Every metric of the server, defined here and nowhere else, and the ``/metrics`` route.

Operators watch the server from Prometheus: the front doors and workers count what happens
through the one-line functions below (so a protocol module carries a call, never a metric
definition), and what is a state rather than an event — queue depth, open sessions, the audit
chain's head, store size, certificate expiry, list ages — is read when Prometheus scrapes, by
:class:`ServerState`, so it is right even after a restart or when another node did the work.
With several worker processes, :mod:`mssante.metrics_workers` makes worker 0's scrape show the
whole server.

Label values are bounded by construction (listener names, result classes, enhanced status
codes, IMAP command names from the parser's table, SASL mechanism names, DMP error codes,
queue domains from the liste blanche): never an address or free text.

``/metrics`` answers only the configured scrapers (``[metrics] allow`` networks, or the bearer
``[metrics] token``): counters of refusals and logins tell an attacker what works.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import time
import weakref
from collections import Counter as Tally
from collections.abc import Awaitable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("mssante.metrics")

T = TypeVar("T")

# ``*_created`` series double every counter for a timestamp Prometheus does not need.
disable_created_metrics()  # type: ignore[no-untyped-call]
# What this process shows when it is the whole server. With several workers the primary shows
# instead the counters of every worker and each one's RESOURCES (``mssante.metrics_workers``).
REGISTRY = CollectorRegistry()
# The process's own resources (memory, CPU, descriptors, garbage collector): one set per worker.
RESOURCES = CollectorRegistry()
for _collector in (
    ProcessCollector(registry=RESOURCES),
    PlatformCollector(registry=RESOURCES),
    GCCollector(registry=RESOURCES),
):
    REGISTRY.register(_collector)

_SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 10485760, 26214400, 52428800)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- SMTP ---------------------------------------------------------------------------------------
SMTP_TRANSACTIONS = Counter(
    "mssante_smtp_transactions",
    "Mail transactions that reached the end of DATA, by listener and class of the final reply",
    ["listener", "result"],
    registry=REGISTRY,
)
SMTP_REFUSALS = Counter(
    "mssante_smtp_refusals",
    "Policy refusals (audited as smtp.refused), by listener, SMTP stage and enhanced status code",
    ["listener", "stage", "status"],
    registry=REGISTRY,
)
SMTP_MESSAGE_SIZE = Histogram(
    "mssante_smtp_message_size_bytes",
    "Size of the messages received (end of DATA, before the policy's verdict)",
    ["listener"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
SMTP_ACK_SECONDS = Histogram(
    "mssante_smtp_ack_seconds",
    "Time from the end of DATA to the final reply (policy, signing, durable commit)",
    ["listener"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RELAY_DELIVERIES = Counter(
    "mssante_relay_deliveries",
    "Recipients of relay attempts to other operators, by outcome "
    "(delivered, deferred, failed: permanent refusal, expired: given up)",
    ["outcome"],
    registry=REGISTRY,
)

CONNECTIONS_REFUSED = Counter(
    "mssante_connections_refused",
    "Connections turned away at once because a connection cap (in total or per client address) "
    "was reached, by protocol",
    ["protocol"],
    registry=REGISTRY,
)

# -- IMAP ---------------------------------------------------------------------------------------
IMAP_COMMANDS = Counter(
    "mssante_imap_commands",
    "IMAP commands answered, by command and tagged status (OK, NO, BAD)",
    ["command", "status"],
    registry=REGISTRY,
)
IMAP_COMMAND_SECONDS = Histogram(
    "mssante_imap_command_seconds",
    "Time to run an IMAP command and write its answer (IDLE: until DONE)",
    ["command"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# -- logins -------------------------------------------------------------------------------------
LOGINS = Counter(
    "mssante_logins",
    "Authentication attempts (SMTP AUTH, IMAP LOGIN/AUTHENTICATE, HTTP bearer), by mechanism, "
    "listener and result (success, failure, throttled: refused unchecked while blocked, "
    "unavailable: temporary failure)",
    ["mechanism", "listener", "result"],
    registry=REGISTRY,
)
LOGIN_THROTTLES = Counter(
    "mssante_login_throttles",
    "Brute-force thresholds crossed (audited as auth.throttle / auth.lockout), by counter scope "
    "and step (delay, lockout)",
    ["scope", "step"],
    registry=REGISTRY,
)

# -- DMP ----------------------------------------------------------------------------------------
DMP_DEPOSITS = Counter(
    "mssante_dmp_deposits",
    "XDM packages received by message, by outcome code (ok, or the ANS error code 900-906)",
    ["code"],
    registry=REGISTRY,
)

# The metrics that count events: with several workers their values live in files that outlive
# the worker (``mssante.metrics_workers``), so that a restarted worker's count adds on.
EVENTS: tuple[Counter | Histogram, ...] = (
    SMTP_TRANSACTIONS,
    SMTP_REFUSALS,
    SMTP_MESSAGE_SIZE,
    SMTP_ACK_SECONDS,
    RELAY_DELIVERIES,
    CONNECTIONS_REFUSED,
    IMAP_COMMANDS,
    IMAP_COMMAND_SECONDS,
    LOGINS,
    LOGIN_THROTTLES,
    DMP_DEPOSITS,
)


# -- hooks (one call at each instrumentation point) -------------------------------------------
@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels`` checks and locks at each call,
    and the per-command hooks below run several times per SMTP message or IMAP command (label
    values are bounded, so is this cache)."""
    return metric.labels(*labels)


def smtp_reply(server: Any, status: object) -> None:
    """A reply is being sent; the one that ends a transaction (after DATA) is counted."""
    if getattr(server, "transaction_over", False) and isinstance(status, str):
        server.transaction_over = False
        _child(SMTP_TRANSACTIONS, server.listener, f"{status[:1]}xx").inc()


async def smtp_acknowledged(server: Any, answer: Awaitable[T]) -> T:
    """The handlers' work on a received message: its size and the time to the reply."""
    content = server.envelope.original_content if server.envelope is not None else None
    _child(SMTP_MESSAGE_SIZE, server.listener).observe(len(content or b""))
    start = time.perf_counter()
    try:
        return await answer
    finally:
        _child(SMTP_ACK_SECONDS, server.listener).observe(time.perf_counter() - start)


def connection_refused(protocol: str) -> None:
    CONNECTIONS_REFUSED.labels(protocol).inc()


def smtp_refused(listener: str, stage: str, status: str) -> None:
    SMTP_REFUSALS.labels(listener, stage, status).inc()


def relay_attempt(attempt: Any, remaining: list[str], expired: bool) -> None:
    """One attempt of a queue entry: each recipient's outcome."""
    RELAY_DELIVERIES.labels("delivered").inc(len(attempt.delivered))
    RELAY_DELIVERIES.labels("failed").inc(len(attempt.failed))
    RELAY_DELIVERIES.labels("expired" if expired else "deferred").inc(len(attempt.deferred))


async def imap_command(name: str, handling: Awaitable[T]) -> T:
    start = time.perf_counter()
    try:
        return await handling
    finally:
        _child(IMAP_COMMAND_SECONDS, name).observe(time.perf_counter() - start)


def imap_answered(name: str, status: str) -> None:
    _child(IMAP_COMMANDS, name, status).inc()


def login(mechanism: str, listener: str, checked: Any) -> None:
    """One recorded authentication attempt (``Authenticator._record``)."""
    if checked.identity is not None:
        result = "success"
    else:
        result = {"locked": "throttled", "temporary": "unavailable"}.get(str(checked.kind), "failure")
    LOGINS.labels(mechanism, listener or "-", result).inc()


def login_throttled(scope: str, blocked: bool) -> None:
    LOGIN_THROTTLES.labels(scope, "lockout" if blocked else "delay").inc()


def dmp_deposit(result: Any) -> None:
    """A message for the DMP was processed (``None``: it was not for the DMP)."""
    if result is not None:
        DMP_DEPOSITS.labels("ok" if result.code is None else str(result.code)).inc()


# -- live objects sampled at scrape time --------------------------------------------------------
class _SMTPLimits(Protocol):
    sessions: int


_smtp_limits: weakref.WeakSet[Any] = weakref.WeakSet()
_imap_servers: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_smtp(limits: _SMTPLimits) -> None:
    """An SMTP listener group's connection counter, read at scrape time."""
    _smtp_limits.add(limits)


def watch_imap(server: Any) -> None:
    """An IMAP server whose open connections are counted by state at scrape time."""
    _imap_servers.add(server)


class _LiveSessions:
    """Open SMTP and IMAP sessions of this process."""

    def collect(self) -> Iterator[Metric]:
        smtp = GaugeMetricFamily("mssante_smtp_sessions", "Open SMTP sessions (all SMTP listeners)")
        smtp.add_metric([], sum(limits.sessions for limits in list(_smtp_limits)))
        yield smtp
        states: Tally[str] = Tally({"not authenticated": 0, "authenticated": 0, "selected": 0})
        for server in list(_imap_servers):
            for connection in list(getattr(server, "_connections", ())):
                states[str(connection.session.state)] += 1
        imap = GaugeMetricFamily(
            "mssante_imap_sessions", "Open IMAP sessions by state (RFC 3501 section 3)", labels=["state"]
        )
        for state, count in sorted(states.items()):
            imap.add_metric([state], count)
        yield imap


SESSIONS = _LiveSessions()  # with several workers: summed over the workers
REGISTRY.register(SESSIONS)


def workers_up(answered: dict[int, bool]) -> Metric:
    """With several workers: which ones answered the scrape (``mssante.metrics_workers``)."""
    up = GaugeMetricFamily(
        "mssante_worker_up",
        "1 when the worker process answered this scrape (0: being started again, or stuck)",
        labels=["worker"],
    )
    for index, answer in sorted(answered.items()):
        up.add_metric([str(index)], 1.0 if answer else 0.0)
    return up


# -- state of the server, read from the database and files when scraped ----------------------
def _days_left(not_after: datetime, now: datetime) -> float:
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=UTC)
    return round((not_after - now).total_seconds() / 86400, 3)


def _pem_certificates(path: Path) -> list[Any]:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("certificate file %s unreadable for metrics: %s", path, exc)
        return []


class ServerState:
    """Gauges of one runtime computed at scrape time (a few indexed queries and file reads)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy.orm import Session

        now = datetime.now(UTC)
        with Session(self.runtime.engine) as session:
            yield from self._queue(session, now)
            yield from self._audit(session, now)
            yield from self._store(session)
            yield from self._certificates(session, now)
        yield from self._lists()
        if self.runtime.settings.smtp.acknowledge == "queued":
            yield from self._submission_queue()

    def _submission_queue(self) -> Iterable[Metric]:
        """The node's submission queue (``smtp.acknowledge = "queued"``), as ``/health`` shows it."""
        from mssante.smtp.queue import queue_stats

        stats = queue_stats(self.runtime.settings.data_dir)
        for key, name, text in (
            ("waiting", "mssante_submission_queue_waiting", "Accepted messages waiting for delivery"),
            ("oldest_age_seconds", "mssante_submission_queue_oldest_age_seconds", "Age of the oldest one"),
            ("set_aside", "mssante_submission_queue_set_aside", "Entries that do not open: see to them"),
        ):
            yield GaugeMetricFamily(name, text, value=stats[key])

    @staticmethod
    def _queue(session: Any, now: datetime) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from mssante.sqlfast import utc
        from mssante.store.models import OutboundEntry

        depth = GaugeMetricFamily(
            "mssante_queue_depth", "Outbound queue entries, by remote domain", labels=["domain"]
        )
        oldest = GaugeMetricFamily(
            "mssante_queue_oldest_age_seconds",
            "Age of the oldest outbound queue entry, by remote domain",
            labels=["domain"],
        )
        rows = session.execute(
            select(OutboundEntry.domain, func.count(), func.min(OutboundEntry.created_at)).group_by(
                OutboundEntry.domain
            )
        )
        for domain, count, first in rows:
            depth.add_metric([domain], count)
            oldest.add_metric([domain], max(0.0, (now - utc(first)).total_seconds()) if first else 0.0)
        yield depth
        yield oldest

    @staticmethod
    def _audit(session: Any, now: datetime) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from mssante.audit import AuditHead, AuditRecord
        from mssante.sqlfast import utc

        head = session.execute(
            select(AuditRecord.at).join(AuditHead, AuditHead.seq == AuditRecord.seq).limit(1)
        ).scalar()
        age = GaugeMetricFamily(
            "mssante_audit_head_age_seconds",
            "Time since the newest record of the audit chain was appended",
        )
        age.add_metric([], max(0.0, (now - utc(head)).total_seconds()) if head else 0.0)
        yield age
        broken = session.execute(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "dmp.break_glass")
        ).scalar_one()
        glass = CounterMetricFamily(
            "mssante_dmp_break_glass",
            "DMP records opened by break-glass (emergency access), from the audit trail (all nodes)",
        )
        glass.add_metric([], broken)
        yield glass

    def _store(self, session: Any) -> Iterable[Metric]:
        from sqlalchemy import func, select, text

        from mssante.store.models import MailAccount

        count, used = session.execute(
            select(func.count(), func.coalesce(func.sum(MailAccount.used_bytes), 0))
        ).one()
        bals = GaugeMetricFamily("mssante_store_mailboxes", "BALs with storage")
        bals.add_metric([], count)
        yield bals
        usage = GaugeMetricFamily(
            "mssante_store_used_bytes", "Mail stored, as counted against the BALs' quotas (sum of BALs)"
        )
        usage.add_metric([], used)
        yield usage
        database = GaugeMetricFamily("mssante_store_database_bytes", "Size of the database")
        if session.bind.dialect.name == "postgresql":
            size = session.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        else:
            base = Path(self.runtime.engine.url.database or "")
            size = sum(p.stat().st_size for p in (base, Path(f"{base}-wal")) if p.is_file())
        database.add_metric([], size)
        yield database

    def _certificates(self, session: Any, now: datetime) -> Iterable[Metric]:
        from sqlalchemy import select

        from mssante.auth.models import AccountCertificate, LocalAccount

        settings = self.runtime.settings
        expiry = GaugeMetricFamily(
            "mssante_certificate_expiry_days",
            "Days until a certificate expires (negative: expired), by where it is configured",
            labels=["source", "subject"],
        )
        files = {
            "tls.cert_file": settings.tls.cert_file,
            "tls.ca_file": settings.tls.ca_file,
            "relay.client_cert_file": settings.relay.client_cert_file,
        }
        for key, path in files.items():
            for cert in _pem_certificates(Path(path)) if path else ():
                days = _days_left(cert.not_valid_after_utc, now)
                expiry.add_metric([key, cert.subject.rfc4514_string()], days)
        rows = session.execute(
            select(LocalAccount.login, AccountCertificate.subject, AccountCertificate.not_after)
            .join(LocalAccount, LocalAccount.id == AccountCertificate.account_id)
            .where(AccountCertificate.not_after.is_not(None), LocalAccount.disabled.is_(False))
        )
        for login_name, subject, not_after in rows:
            expiry.add_metric([f"account:{login_name}", subject], _days_left(not_after, now))
        yield expiry

    def certificate_families(self) -> list[Metric]:
        """The certificates' expiry alone (the admin console lists them)."""
        from sqlalchemy.orm import Session

        with Session(self.runtime.engine) as session:
            return list(self._certificates(session, datetime.now(UTC)))

    def _lists(self) -> Iterable[Metric]:
        from annuaire.updates import scheduled_lists, status

        age = GaugeMetricFamily(
            "mssante_list_age_seconds",
            "Time since the last successful import of a list fetched on a schedule",
            labels=["list"],
        )
        stale = GaugeMetricFamily(
            "mssante_list_stale",
            "1 when a scheduled list is older than its stale_after_seconds",
            labels=["list"],
        )
        entries = GaugeMetricFamily("mssante_list_entries", "Entries of the last good list", labels=["list"])
        for item in status(self.runtime.engine, scheduled_lists(self.runtime.settings)):
            if item["age_seconds"] is not None:
                age.add_metric([item["name"]], item["age_seconds"])
            stale.add_metric([item["name"]], 1.0 if item["stale"] else 0.0)
            if item["entries"] is not None:
                entries.add_metric([item["name"]], item["entries"])
        yield age
        yield stale
        yield entries


class _Exposition:
    """What one scrape shows: the process's metrics (with several workers, every worker's),
    then the runtime's state."""

    def __init__(self, runtime: Any) -> None:
        self.state = ServerState(runtime)
        self.processes: Any = REGISTRY
        if runtime.worker is not None and runtime.worker.count > 1:
            from mssante.metrics_workers import WorkersCollector

            self.processes = WorkersCollector(runtime)

    def collect(self) -> Iterator[Metric]:
        yield from self.processes.collect()
        try:
            yield from self.state.collect()
        except Exception:  # a database hiccup must not hide the process's own metrics
            log.exception("server state unavailable for /metrics")


def allowed(settings: Any, client_ip: str | None, authorization: str) -> bool:
    """A scrape is answered from an ``allow`` network, or with the configured bearer token."""
    if client_ip:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            address = None
        if address is not None and any(
            address in ipaddress.ip_network(net, strict=False) for net in settings.allow
        ):
            return True
    scheme, _, token = authorization.partition(" ")
    return bool(
        settings.token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), settings.token.encode())
    )


def router(runtime: Any) -> APIRouter:
    """``GET /metrics`` for the HTTP application of ``runtime``."""
    routes = APIRouter()
    exposition = _Exposition(runtime)

    @routes.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        settings = runtime.settings.metrics
        client = request.client.host if request.client else None
        if not settings.enabled:
            return Response("metrics are disabled\n", status_code=404, media_type="text/plain")
        if not allowed(settings, client, request.headers.get("authorization", "")):
            return Response("forbidden\n", status_code=403, media_type="text/plain")
        # The text format Prometheus asks for in Accept (0.0.4 by default, or OpenMetrics).
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        started = time.perf_counter()
        body = encode(exposition)
        log.debug("metrics scraped in %.3f s", time.perf_counter() - started)
        return Response(body, headers={"content-type": content_type})

    return routes
