"""In-process change feed: IDLE sessions subscribe to a folder and hear of its commits.

The durable feed is the ``folder_changes`` table (every change with its modseq), which a
session can always re-read with ``changes_since``; this hub only wakes listeners up at once
after the writer's commit, from the writer thread into each listener's event loop.

On PostgreSQL other nodes commit too: :mod:`mssante.store.pgfeed` hears of their commits
and hands the hub a :data:`REMOTE` change (folder only), on which a session re-reads the
durable feed from its own modseq.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from dataclasses import dataclass

# The kind of a change another node made: it carries no detail (modseq 0, so absorbing it
# moves nothing); whoever receives it reads ``folder_changes`` after its own modseq.
REMOTE = "remote"


@dataclass(frozen=True)
class FolderChange:
    folder_id: int
    modseq: int
    kind: str  # append | expunge | flags | deleted (the folder itself) | remote
    uid: int
    flags: str | None = None


class Subscription:
    """A listener's changes for one folder, in the order they were committed.

    Every session with a folder selected holds one, idle or not: a list and at most one
    waiting future, rather than an ``asyncio.Queue`` (three deques, an event and their waiters:
    some 3 KB per session, a thousand idle sessions 3 MB). One reader at a time (IDLE); a read
    cancelled before a change came takes nothing, one cancelled after leaves it for the next."""

    __slots__ = ("_changes", "_waiter", "folder_id", "hub", "loop")

    def __init__(self, hub: ChangeHub, folder_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.folder_id = folder_id
        self.loop = loop
        self._changes: list[FolderChange] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, change: FolderChange) -> None:
        """A change heard (on the listener's loop): kept, and the waiting read woken."""
        self._changes.append(change)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> FolderChange:
        """The oldest change not yet taken, once there is one."""
        while not self._changes:
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._changes.pop(0)

    def drain(self) -> list[FolderChange]:
        """Every change not yet taken."""
        out, self._changes = self._changes, []
        return out

    def close(self) -> None:
        self.hub.unsubscribe(self)


class ChangeHub:
    def __init__(self) -> None:
        self._subs: dict[int, set[Subscription]] = defaultdict(set)
        self._lock = threading.Lock()

    def subscribe(self, folder_id: int) -> Subscription:
        sub = Subscription(self, folder_id, asyncio.get_running_loop())
        with self._lock:
            self._subs[folder_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.folder_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.folder_id]

    def publish(self, changes: list[FolderChange]) -> None:
        """Called from the writer thread after a commit."""
        with self._lock:
            targets = [(sub, c) for c in changes for sub in self._subs.get(c.folder_id, ())]
        for sub, change in targets:
            if not sub.loop.is_closed():
                sub.loop.call_soon_threadsafe(sub.put, change)

    def folders(self) -> list[int]:
        """Folders someone listens to on this node (what a reconnected node must catch up)."""
        with self._lock:
            return list(self._subs)

    def poke(self, folder_ids: list[int]) -> None:
        """Another node changed these folders: wake their listeners to re-read the durable feed."""
        self.publish([FolderChange(folder_id, 0, REMOTE, 0) for folder_id in folder_ids])
