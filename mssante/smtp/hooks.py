"""Delivery hooks: how domain features take part in an accepted message without owning SMTP.

A hook sees each message the front door is about to store. It may add writes to the very
transaction that stores the message (``in_transaction``: e.g. a patient conversation record,
so the record exists exactly when the message does) and act once the message is durable
(``after_commit``: e.g. notify a patient, deposit an XDM package in the DMP and answer the
sender). ``after_commit`` decides at once whether there is anything to do and returns that work
as a coroutine (or None: the usual message has none, and costs no task), which runs in the
background: the sender already has its ``250``, and a hook failure never loses or delays mail.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session

from mssante.auth.identity import Identity
from mssante.policy import DirectoryBal, MessageFacts, Recipient
from mssante.store.spooled import Raw
from mssante.store.types import Outbound

log = logging.getLogger("mssante.smtp")


@dataclass
class DeliveryContext:
    """One accepted message, as the hooks see it."""

    channel: str  # "submission" or "relay"
    identity: Identity | None  # the authenticated sender (None on relay-in)
    mail_from: str
    sender_bal: DirectoryBal | None
    recipients: tuple[Recipient, ...]
    facts: MessageFacts
    # The message as stored (with our trace headers): the received buffer, or its spool file.
    raw: Raw
    message_id: str | None
    uids: dict[str, int] = field(default_factory=dict)  # filled after the commit

    def routed(self, signature: bytes = b"") -> tuple[list[str], Outbound | None]:
        """Where the message goes: the local BALs, and what leaves for other operators (their
        recipients by domain, with the DKIM ``signature`` to put on top), or None."""
        local = [r.address for r in self.recipients if r.route == "local"]
        remote: dict[str, list[str]] = defaultdict(list)
        for r in self.recipients:
            if r.route == "remote":
                remote[r.domain].append(r.address)
        return local, Outbound(self.raw, dict(remote), signature) if remote else None


class DeliveryHook(Protocol):
    def in_transaction(self, ctx: DeliveryContext) -> Callable[[Session], None] | None: ...

    def after_commit(self, ctx: DeliveryContext) -> Coroutine[Any, Any, None] | None: ...


class HookRunner:
    """Runs the hooks' background work, keeps track of it for a graceful shutdown."""

    def __init__(self, hooks: list[DeliveryHook]) -> None:
        self.hooks = hooks
        self._tasks: set[asyncio.Task[Any]] = set()

    def writes(self, ctx: DeliveryContext) -> list[Callable[[Session], None]]:
        return [w for w in (h.in_transaction(ctx) for h in self.hooks) if w is not None]

    def committed(self, ctx: DeliveryContext) -> None:
        for hook in self.hooks:
            try:
                work = hook.after_commit(ctx)
            except Exception:
                _failed(hook)
                continue
            if work is not None:
                task = asyncio.create_task(self._guarded(hook, work))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guarded(hook: DeliveryHook, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            _failed(hook)

    async def drain(self) -> None:
        await asyncio.sleep(0)  # a message acknowledged just now has its hooks started first
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _failed(hook: DeliveryHook) -> None:
    log.exception("delivery hook %s failed (the message itself is stored)", type(hook).__name__)
