"""What a front door (SMTP, IMAP, HTTP, the relay worker) hands back to ``mssante serve``,
and the connection caps a listener group keeps.

Its own module so that imports flow one way: the server imports the listeners, the
listeners import this, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mssante.runtime import Runtime


@dataclass
class RunningListener:
    name: str
    protocol: str
    host: str
    port: int
    tls: str
    close: Callable[[], Awaitable[None]]
    # False for background workers (outbound relay): not a port anyone connects to.
    public: bool = True


ListenerStarter = Callable[["Runtime"], Awaitable[list[RunningListener]]]


def repeating(
    name: str, seconds: float, work: Callable[[], object], log: logging.Logger
) -> Callable[[], Awaitable[None]]:
    """Run ``work`` in a worker thread every ``seconds`` until stopped (the node's heartbeat,
    the directory's check); a failure (the database away, a failover) is logged as a warning
    and the next turn tries again. Returns what stops it, for a listener's ``close``."""

    async def turns() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(work)
            except Exception as exc:
                log.warning("%s failed: %s", name, exc)

    task = asyncio.create_task(turns(), name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


def share_of(limit: int, workers: int) -> int:
    """A worker's share of a cap meant for the whole server: the kernel spreads connections
    evenly over the workers, so each applies its part (rounded up, at least one)."""
    return max(1, -(-limit // workers))


class ConnectionCaps:
    """Open connections of one listener group, counted in total and per client address, so
    that one address (or a crowd) cannot take every slot of a front door."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open: Counter[str] = Counter()
        self.count = 0

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; the reason for refusing it when a cap is reached."""
        if self.count >= self.total:
            return "Too many connections, try again later"
        if self.open[ip] >= self.per_ip:
            return "Too many connections from your address, try again later"
        self.open[ip] += 1
        self.count += 1
        return None

    def release(self, ip: str) -> None:
        self.count -= 1
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]
