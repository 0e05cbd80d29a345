"""The change feed across nodes, on PostgreSQL: ``NOTIFY`` in the committing transaction,
one ``LISTEN`` connection per node.

The writer adds, before ``COMMIT``, one ``pg_notify`` per batch naming the folders it changed
and their new modseq (``<node> <folder>:<modseq> ...``). PostgreSQL delivers a notification
only once its transaction has committed, and never one of a transaction rolled back, so
what a node hears is durable. Each serving node keeps one listening connection in a thread;
when another node's notification names a folder someone listens to here, the hub gets a
:data:`~mssante.store.feed.REMOTE` change and the IMAP sessions of that folder re-read
``folder_changes`` from their own modseq. Notifications sent while the listening connection
was down are lost by design: on reconnecting, the node wakes every folder it listens to, and
the durable feed gives each session what it missed.

SQLite has one process: its in-process hub is the whole feed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from mssante.listening import RunningListener
from mssante.store.feed import ChangeHub, FolderChange

if TYPE_CHECKING:
    from mssante.runtime import Runtime

log = logging.getLogger(__name__)

CHANNEL = "mssante_changes"
# PostgreSQL refuses payloads of 8000 bytes or more; a batch naming more folders sends several.
MAX_PAYLOAD = 7900
# How often the listening thread checks that it should stop, and that its connection lives.
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 5.0
RECONNECT_SECONDS = 0.5


def new_node_id() -> str:
    """This process's mark in payloads, so that a node does not wake itself twice."""
    return uuid.uuid4().hex[:12]


def payloads(node: str, notes: Iterable[Any]) -> list[str]:
    """The payloads announcing ``notes``: each changed folder once, with its highest modseq."""
    latest: dict[int, int] = {}
    for note in notes:
        if isinstance(note, FolderChange):
            latest[note.folder_id] = max(latest.get(note.folder_id, 0), note.modseq)
    out: list[str] = []
    current = node
    for folder_id, modseq in sorted(latest.items()):
        item = f" {folder_id}:{modseq}"
        if len(current) + len(item) > MAX_PAYLOAD:
            out.append(current)
            current = node
        current += item
    if current != node:
        out.append(current)
    return out


def parse_payload(payload: str) -> tuple[str, list[tuple[int, int]]]:
    """(node, [(folder, modseq)]) of a payload; a malformed item is skipped, never fatal."""
    node, *items = payload.split(" ")
    folders: list[tuple[int, int]] = []
    for item in items:
        folder, _, modseq = item.partition(":")
        if folder.isdigit() and modseq.isdigit():
            folders.append((int(folder), int(modseq)))
    return node, folders


def wake(hub: ChangeHub, own_node: str, payload: str) -> bool:
    """Wake the listeners of the folders another process's payload names (its changes are in
    ``folder_changes`` by then); False for a payload of our own, which the hub already had."""
    node, folders = parse_payload(payload)
    if node == own_node:
        return False
    listened = set(hub.folders())
    wanted = [folder for folder, _ in folders if folder in listened]
    if wanted:
        hub.poke(wanted)
    return True


class NotifyOnCommit:
    """The writer's ``before_commit`` hook on PostgreSQL: NOTIFY inside the transaction."""

    def __init__(self, node: str) -> None:
        self.node = node

    def __call__(self, session: Session, notes: list[Any]) -> None:
        for payload in payloads(self.node, notes):
            session.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


class ClusterFeed:
    """The node's listening connection (a thread) feeding the hub with other nodes' commits."""

    def __init__(self, engine: Engine, hub: ChangeHub, node: str) -> None:
        # The engine's dialect turns its URL (multi-host, target_session_attrs included) into
        # libpq parameters: the listener follows the primary as the pool does.
        self._connect_args = engine.dialect.create_connect_args(engine.url)
        self.hub = hub
        self.node = node
        self.heard = 0  # notifications from other nodes (tests and /health read it)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mssante-cluster-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psycopg

        first = True
        while not self._stop.is_set():
            cargs, cparams = self._connect_args
            try:
                with psycopg.connect(*cargs, **{**cparams, "autocommit": True}) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        # Whatever was said while we were away: sessions re-read the durable feed.
                        self.hub.poke(self.hub.folders())
                        log.info("cluster feed reconnected; listeners catching up")
                    first = False
                    self.connected.set()
                    self._listen(conn)
            except psycopg.Error as exc:
                if self.connected.is_set():
                    log.warning("cluster feed connection lost: %s; reconnecting", exc)
                self.connected.clear()
                self._stop.wait(RECONNECT_SECONDS)

    def _listen(self, conn: Any) -> None:
        last_check = time.monotonic()
        while not self._stop.is_set():
            for notification in conn.notifies(timeout=POLL_SECONDS):
                self._heard(notification.payload)
            if time.monotonic() - last_check > KEEPALIVE_SECONDS:
                conn.execute("SELECT 1")  # a dead server is noticed even when nothing is said
                last_check = time.monotonic()

    def _heard(self, payload: str) -> None:
        # (our own writer already published to the hub, with the details)
        self.heard += wake(self.hub, self.node, payload)


async def start_cluster_feed(runtime: Runtime) -> list[RunningListener]:
    """Listen to the other nodes when the database is PostgreSQL (a background worker)."""
    store = runtime.store
    if runtime.engine.dialect.name != "postgresql":
        return []
    feed = ClusterFeed(runtime.engine, store.hub, store.node_id)
    feed.start()
    runtime.extras["cluster_feed"] = feed
    # Serving starts once the node hears the others (bounded: a slow database only delays IDLE).
    await asyncio.to_thread(feed.connected.wait, 10)

    async def close() -> None:
        await asyncio.to_thread(feed.stop)

    return [RunningListener("cluster-feed", "postgresql", "", 0, "none", close, public=False)]
