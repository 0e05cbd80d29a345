"""The change feed between the worker processes of one server on SQLite (``server.workers``).

On PostgreSQL, ``NOTIFY`` already carries every commit to every process (:mod:`pgfeed`).
SQLite has no such channel, so the workers of one server tell each other: after each commit,
a worker's writer sends the payload ``pgfeed`` would have sent (``<node> <folder>:<modseq> …``)
as one Unix datagram to each sibling. The sockets live in Linux's abstract namespace, named
after the supervising process, so they need no file and vanish with their process. Each worker
hears its siblings in a thread and wakes the IMAP sessions of the named folders, which re-read
``folder_changes`` from their own modseq: what a session learns is always the durable feed.

A datagram is sent after the commit returned, never before, so what a sibling hears is on disk.
A sibling that is restarting hears nothing meanwhile; its sessions start from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from mssante.listening import RunningListener
from mssante.store.feed import ChangeHub
from mssante.store.pgfeed import payloads, wake

if TYPE_CHECKING:
    from mssante.runtime import Runtime

log = logging.getLogger(__name__)

# How long a send may wait for a sibling whose queue is full before that payload is dropped
# (its sessions would then see the change at their next command instead of at once).
SEND_TIMEOUT = 1.0
POLL_SECONDS = 0.5


def address(group: str, index: int) -> bytes:
    """The abstract socket address of worker ``index`` of the server ``group``."""
    return f"\0mssante-feed-{group}-{index}".encode()


class SiblingFeed:
    def __init__(self, hub: ChangeHub, node: str, group: str, index: int, count: int) -> None:
        self.hub = hub
        self.node = node
        self.heard = 0
        self._siblings = [address(group, i) for i in range(count) if i != index]
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.bind(address(group, index))
        self._inbox.settimeout(POLL_SECONDS)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.settimeout(SEND_TIMEOUT)
        self._send_lock = threading.Lock()  # the writer thread sends; tests may too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mssante-sibling-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._inbox.close()
        self._outbox.close()

    def announce(self, notes: list[Any]) -> None:
        """The writer's after-commit listener: tell every sibling which folders changed."""
        with self._send_lock:
            if self._stop.is_set():
                return
            for payload in payloads(self.node, notes):
                data = payload.encode()
                for sibling in self._siblings:
                    try:
                        self._outbox.sendto(data, sibling)
                    except (ConnectionRefusedError, FileNotFoundError):
                        pass  # that sibling is (re)starting: it will read the database
                    except OSError as exc:
                        log.warning("change not announced to a sibling worker: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._inbox.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("sibling feed stopped")
                return
            self.heard += wake(self.hub, self.node, data.decode(errors="replace"))


async def start_sibling_feed(runtime: Runtime) -> list[RunningListener]:
    """Hear the sibling workers' commits (SQLite with several workers; else nothing to do)."""
    slot = runtime.worker
    if slot is None or slot.count < 2 or runtime.engine.dialect.name != "sqlite":
        return []
    store = runtime.store
    feed = SiblingFeed(store.hub, store.node_id, slot.group, slot.index, slot.count)
    feed.start()
    store.writer.also_after_commit(feed.announce)
    runtime.extras["sibling_feed"] = feed

    async def close() -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(feed.stop)

    return [RunningListener("sibling-feed", "unix", "", 0, "none", close, public=False)]
