"""The DMP's part in mail flow: a delivery hook that deposits XDM packages after commit.

It fits the SMTP front door's hook protocol (``in_transaction`` / ``after_commit``) by shape
only — the DMP never imports the protocol front doors. After the message is stored and the
sender has its ``250``, the deposit runs in a worker thread; its answer (MDN or error mail)
is stored for the local recipient it is addressed to, from the DMP gateway address. A failed
deposit or answer is logged and traced; it never touches the stored message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session

from dmp.deposit import deposit_message, dmp_targets
from dmp.service import DMPService
from mssante import metrics
from mssante.auth.identity import Identity
from mssante.store.spooled import Raw

log = logging.getLogger("dmp.deposit")


class AcceptedMessage(Protocol):
    """What the hook reads of the front door's delivery context (read-only members)."""

    @property
    def channel(self) -> str: ...
    @property
    def identity(self) -> Identity | None: ...
    @property
    def mail_from(self) -> str: ...
    @property
    def sender_bal(self) -> Any: ...
    @property
    def recipients(self) -> Sequence[Any]: ...
    @property
    def raw(self) -> Raw: ...


class Store(Protocol):
    async def deliver(
        self,
        raw: bytes,
        sender: str,
        recipients: Sequence[str],
        *,
        actor: str | None = ...,
        source: str | None = ...,
    ) -> dict[str, int]: ...


class DMPDepositHook:
    def __init__(self, service: DMPService, store: Store) -> None:
        self.service = service
        self.store = store
        self.local_domains = {d.lower() for d in service.settings.server.domains}

    @classmethod
    def from_runtime(cls, runtime: Any) -> DMPDepositHook:
        return cls(DMPService.from_runtime(runtime), runtime.store)

    def in_transaction(self, ctx: AcceptedMessage) -> Callable[[Session], None] | None:
        return None

    def after_commit(self, ctx: AcceptedMessage) -> Coroutine[Any, Any, None] | None:
        if ctx.channel != "submission" or ctx.identity is None:
            return None  # deposits come from this operator's own authenticated senders
        recipients = [r.address for r in ctx.recipients]
        if not dmp_targets(self.service, recipients):
            return None  # not for the DMP (nearly every message): no task, no thread hop
        return self._deposit(ctx, ctx.identity, recipients)

    async def _deposit(self, ctx: AcceptedMessage, identity: Identity, recipients: list[str]) -> None:
        sender_bal = ctx.sender_bal.address if ctx.sender_bal is not None else ctx.mail_from
        result = await asyncio.to_thread(
            deposit_message,
            self.service,
            ctx.raw,
            sender=identity,
            sender_bal=sender_bal,
            recipients=recipients,
            return_path=ctx.mail_from or None,
        )
        metrics.dmp_deposit(result)
        if result is None or result.answer is None:
            return
        answer = result.answer
        domain = answer.rcpt_to.rsplit("@", 1)[-1].lower()
        if domain not in self.local_domains:
            log.warning("DMP answer for %s not sent: only local BALs receive DMP answers", answer.rcpt_to)
            return
        await self.store.deliver(
            answer.raw, answer.mail_from, [answer.rcpt_to], actor="dmp:gateway", source="dmp-deposit"
        )
