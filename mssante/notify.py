"""Notifications: small events that tell someone something happened, never what it contains.

An :class:`Event` carries a kind (``dmp.document.added``), the address to notify (e.g. the
patient's BAL) and a few non-medical fields (opaque ids, the actor's role); never a title, a
type code or a content. With ``[notify] webhook_url`` set, each event is POSTed as JSON to the
webhook with ``X-MSSante-Signature: sha256=<HMAC-SHA256 of the body under [notify] secret>``,
by a background thread that retries with exponential back-off; without it, events go to the
log. An event whose ``channel`` is ``email`` (the patient's choice, with their ``email``)
goes instead as a short notice (:mod:`mssante.notice_mail`) through the outbound relay of
``[notify] smtp_host``, retried the same way; without that relay it goes to the log.
:meth:`Notifier.notify` only puts the event in a bounded queue: it never waits on the
network, so mail flow and DMP calls are never held up by a slow or dead webhook (when the
queue is full the event is dropped and logged, which is the price of never blocking).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mssante import notice_mail
from mssante.config import NotifySection

log = logging.getLogger("mssante.notify")

SIGNATURE_HEADER = "X-MSSante-Signature"
EVENT_HEADER = "X-MSSante-Event"
ATTEMPT_HEADER = "X-MSSante-Attempt"


@dataclass(frozen=True)
class Event:
    kind: str
    recipient: str
    data: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def body(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "recipient": self.recipient,
                "at": self.at.isoformat(timespec="seconds"),
                "data": dict(self.data),
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()


def sign(secret: str, body: bytes) -> str:
    """The signature header value of a body: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    event: Event = field(compare=False)
    attempt: int = field(compare=False, default=1)
    via: str = field(compare=False, default="webhook")


class Notifier:
    """One per process. ``notify`` is safe from any thread or event loop and never blocks."""

    def __init__(
        self,
        config: NotifySection,
        *,
        clock: Callable[[], float] = time.monotonic,
        patient_url: str = "/patient/",
        namer: notice_mail.Namer | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.patient_url = config.patient_url or patient_url
        self.namer = namer
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.attempts = 0
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    @classmethod
    def of_runtime(cls, runtime: Any) -> Notifier:
        """The one notifier of a process (kept in the runtime's extras), shared by every area."""
        found = getattr(runtime, "notifier", None) or runtime.extras.get("notifier")
        if not isinstance(found, Notifier):
            found = cls.for_settings(runtime.settings, getattr(runtime, "annuaire", None))
            runtime.extras["notifier"] = found
        return found

    @classmethod
    def for_settings(cls, settings: Any, annuaire: Any = None) -> Notifier:
        """A notifier whose e-mail notices name professionals from ``annuaire`` and link to
        ``[notify] patient_url`` (default: the patient space on ``server.hostname``)."""
        return cls(
            settings.notify,
            patient_url=f"https://{settings.server.hostname}/patient/",
            namer=annuaire_namer(annuaire) if annuaire is not None else None,
        )

    @property
    def uses_webhook(self) -> bool:
        return bool(self.config.webhook_url)

    @property
    def uses_email(self) -> bool:
        return bool(self.config.smtp_host)

    def route(self, event: Event) -> str | None:
        """``email``, ``webhook``, or None (the log) for this event."""
        if event.data.get("channel") == "email" and event.data.get("email"):
            return "email" if self.uses_email else None
        return "webhook" if self.uses_webhook else None

    def notify(self, event: Event) -> None:
        via = self.route(event)
        if via is None:
            log.info("notification %s", event.body().decode())
            return
        with self._cond:
            if self._stopping or len(self._heap) >= self.config.queue_size:
                self.dropped += 1
                log.warning("notification %s (%s) dropped: queue full or closing", event.id, event.kind)
                return
            heapq.heappush(self._heap, _Pending(self.clock(), next(self._seq), event, via=via))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mssante-notify", daemon=True)
                self._thread.start()
            self._cond.notify()

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1``: base × 2^(attempt−1), capped."""
        return float(
            min(self.config.backoff_base_seconds * 2 ** (attempt - 1), self.config.backoff_max_seconds)
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is queued or in flight (tests, shutdown); True when drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; events still waiting for a retry are logged as not delivered."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            pending = len(self._heap)
        if self._thread is not None:
            self._thread.join(timeout)
        if pending:
            log.error("%d notification(s) not delivered at shutdown", pending)

    # -- worker ------------------------------------------------------------------------------
    def _next(self) -> _Pending | None:
        with self._cond:
            while not self._stopping:
                if self._heap:
                    wait = self._heap[0].due - self.clock()
                    if wait <= 0:
                        self._in_flight += 1
                        return heapq.heappop(self._heap)
                    self._cond.wait(min(wait, 1.0))
                else:
                    self._cond.wait(1.0)
            return None

    def _run(self) -> None:
        with httpx.Client(timeout=self.config.timeout_seconds, follow_redirects=False) as client:
            while (item := self._next()) is not None:
                try:
                    ok, why = self._mail(item) if item.via == "email" else self._post(client, item)
                    self._settle(item, ok, why)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()

    def _post(self, client: httpx.Client, item: _Pending) -> tuple[bool, str]:
        assert self.config.webhook_url is not None and self.config.secret is not None
        body = item.event.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.secret, body),
            EVENT_HEADER: item.event.kind,
            ATTEMPT_HEADER: str(item.attempt),
        }
        self.attempts += 1
        try:
            response = client.post(self.config.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return True, ""
        return False, f"HTTP {response.status_code}"

    def _mail(self, item: _Pending) -> tuple[bool, str]:
        event = item.event
        to = event.data["email"]
        assert self.config.smtp_from is not None
        msg = notice_mail.build(
            event.kind, dict(event.data), event.at,
            sender=self.config.smtp_from, to=to, link=self.patient_url, namer=self.namer,
        )  # fmt: skip
        self.attempts += 1
        try:
            notice_mail.send(self.config, msg, to)
        except (OSError, smtplib.SMTPException) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    def _settle(self, item: _Pending, ok: bool, why: str) -> None:
        if ok:
            self.delivered += 1
            return
        if item.attempt >= self.config.max_attempts:
            self.failed += 1
            log.error(
                "notification %s (%s) given up after %d attempts: %s",
                item.event.id,
                item.event.kind,
                item.attempt,
                why,
            )
            return
        delay = self.backoff(item.attempt)
        log.warning(
            "notification %s attempt %d failed (%s), retry in %.1fs", item.event.id, item.attempt, why, delay
        )
        with self._cond:
            heapq.heappush(
                self._heap,
                _Pending(self.clock() + delay, next(self._seq), item.event, item.attempt + 1, item.via),
            )


def annuaire_namer(annuaire: Any) -> notice_mail.Namer:
    """Names a professional in a notice as the trace does (« Dr Claire MARTIN (médecin) »)."""
    from mssante.web.words import professional_name

    def name(idnat: str) -> str | None:
        try:
            return professional_name(annuaire, idnat)
        except Exception:  # a notice never fails for want of a name
            log.exception("cannot name %s in a notice", idnat)
            return None

    return name
