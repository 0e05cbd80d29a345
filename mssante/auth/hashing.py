"""Password hashes are checked in a small pool of their own, so that a login storm queues
behind ``workers`` argon2 computations instead of taking every thread of the event loop's
default executor (which the store, the annuaire and the delegation checks need), and so that
the queue itself has a bound: beyond ``queue`` waiting checks a login gets a temporary error
(SMTP ``454 4.7.0``, IMAP ``NO [UNAVAILABLE]``) rather than holding memory and a connection
for minutes. argon2-cffi releases the GIL while hashing, so the workers really run in parallel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mssante.auth import passwords

T = TypeVar("T")


class HashPoolBusy(Exception):
    """More password checks are waiting than the queue allows."""


class HashPool:
    def __init__(self, workers: int = 0, queue: int = 256) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 2) // 2)
        self.queue = queue
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="argon2")
        self._pending = 0  # touched from the event loop only

    @property
    def pending(self) -> int:
        return self._pending

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """:func:`passwords.verify_password`, off the event loop, queued behind the workers."""
        return await self._run(passwords.verify_password, stored_hash, password)

    async def rehash(self, password: str) -> str:
        return await self._run(passwords.rehash, password)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pending >= self.workers + self.queue:
            raise HashPoolBusy(f"{self._pending} password checks already waiting")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
