"""The submission queue (``smtp.acknowledge = "queued"``): accepted messages, sealed, on disk.

Postfix answers ``250`` once its ``cleanup`` has written the message to a queue file and
``fsync``'ed it; delivery follows in other processes. With ``acknowledge = "queued"``
submission does the same: every check that decides *whether* a message is accepted (sender,
recipients, header rules, the patient rules) is made while the client waits, as always; then
the message and what its delivery needs (envelope, the authenticated sender, the recipients'
routes, the facts the hooks read, the audit events) are written to the queue and made
durable, and only then is ``250`` answered. The queue's delivery process
(:mod:`mssante.smtp.queue_delivery`) stores it an instant later.

The queue is one SQLite database of the node, ``<data_dir>/queue.db`` (WAL, ``synchronous =
FULL``), whatever the store's database: a row per message, written through a group-commit
writer of its own (or, for a lone session, by its event loop: :meth:`SubmissionQueue.put`).
A file per message, as Postfix keeps, cost 3.5 times the kernel time of a row appended to
the WAL here (0.30 against 0.085 ms a message, 0.54 against 0.20 ms of wall time: create,
``fsync`` of a new inode, rename and unlink are each a journal commit of the file system;
``bench/queue_write.py``), and made the queue dearer than delivering at once.

An entry holds health data, so it is sealed at rest like the store: AES-256-GCM under a data
key of the writing process (a new one every million entries), wrapped by the key ring's active
key and stored with each entry, the entry's id bound as associated data (an entry altered or
moved to another id does not open).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import queue
import secrets
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mssante.audit import AuditEvent
from mssante.auth.identity import Identity, IdentityKind
from mssante.crypto import KeyRing, KeyRingError, SealedKey, new_data_key
from mssante.datadir import create_private_db
from mssante.policy import MessageFacts, Recipient
from mssante.writeturn import WriteTurn

QUEUE_DB = "queue.db"
FORMAT = 1
MAX_BATCH = 256
KEY_USES = 1 << 20  # entries sealed under one data key before the next
OPENERS_KEPT = 64  # data keys kept unwrapped by the reading side (one per serving process)
_SCHEMA = (
    # aside = 1: the entry does not open (altered, another key ring): kept for the operator,
    # never dropped (it was acknowledged), and no longer tried.
    "CREATE TABLE IF NOT EXISTS entries ("
    " id TEXT PRIMARY KEY, sealed BLOB NOT NULL, aside INTEGER NOT NULL DEFAULT 0)"
)

Write = Callable[[sqlite3.Connection], Any]


class QueueEntryError(Exception):
    """A queue entry that does not open (altered, or sealed by another key ring)."""


@dataclass(frozen=True)
class QueuedMessage:
    """An accepted message waiting for delivery, with everything its delivery needs."""

    id: str
    mail_from: str
    actor: str  # who the audit trail names (the authenticated principal)
    source: str | None  # the client's address
    identity: Identity
    sender_bal: str  # the sending BAL's key (looked up again in the annuaire by the hooks)
    recipients: tuple[Recipient, ...]
    facts: MessageFacts
    message_id: str | None
    signature: bytes  # the DKIM-Signature field for remote recipients (b"" when none)
    extra_audit: tuple[AuditEvent, ...]
    arrival: datetime
    raw: bytes | bytearray


def new_id() -> str:
    """A name that sorts in arrival order (nanoseconds, then randomness against collisions)."""
    return f"{time.time_ns():020d}-{secrets.token_hex(6)}"


def age_seconds(entry_id: str) -> float:
    """How long ago an entry was written (its id starts with the time: :func:`new_id`)."""
    return max((time.time_ns() - int(entry_id.partition("-")[0])) / 1e9, 0.0)


def _aad(entry_id: str) -> bytes:
    return b"mssante-queue:" + entry_id.encode()


def _shallow(item: Any) -> dict[str, Any]:
    """A dataclass's fields as they are (``asdict`` deep-copies every tuple and dict: a tenth
    of a queued message's own time, for values that are only serialised)."""
    return {f.name: getattr(item, f.name) for f in fields(item)}


def _header(entry: QueuedMessage) -> bytes:
    identity = entry.identity
    doc = {
        "format": FORMAT,
        "mail_from": entry.mail_from,
        "actor": entry.actor,
        "source": entry.source,
        "identity": [identity.kind.value, identity.id, identity.subject, identity.login],
        "sender_bal": entry.sender_bal,
        "recipients": [[r.address, r.route, r.domain] for r in entry.recipients],
        "facts": _shallow(entry.facts),
        "message_id": entry.message_id,
        "signature": base64.b64encode(entry.signature).decode(),
        "extra_audit": [_shallow(e) for e in entry.extra_audit],
        "arrival": entry.arrival.isoformat(),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _entry(entry_id: str, header: bytes, raw: bytes) -> QueuedMessage:
    doc = json.loads(header)
    if doc.get("format") != FORMAT:
        raise QueueEntryError(f"queue entry {entry_id}: unknown format {doc.get('format')!r}")
    kind, ident, subject, login = doc["identity"]
    facts = doc["facts"]
    return QueuedMessage(
        id=entry_id,
        mail_from=doc["mail_from"],
        actor=doc["actor"],
        source=doc["source"],
        identity=Identity(IdentityKind(kind), ident, subject, login),
        sender_bal=doc["sender_bal"],
        recipients=tuple(Recipient(a, route, d) for a, route, d in doc["recipients"]),
        facts=MessageFacts(
            from_addresses=tuple(facts["from_addresses"]),
            in_reply_to=tuple(facts["in_reply_to"]),
            references=tuple(facts["references"]),
            attachments=facts["attachments"],
            attachment_types=tuple(facts["attachment_types"]),
            headers=dict(facts["headers"]),
            sender_fields=tuple(facts["sender_fields"]),
            report_type=facts["report_type"],
        ),
        message_id=doc["message_id"],
        signature=base64.b64decode(doc["signature"]),
        extra_audit=tuple(AuditEvent(**e) for e in doc["extra_audit"]),
        arrival=datetime.fromisoformat(doc["arrival"]),
        raw=raw,
    )


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class SubmissionQueue:
    """The queue database of this node: written by submission, read by the delivery process.

    Writes go through one thread of this process that owns the write connection, with group
    commit: the entries of sessions that finish DATA together share one transaction and one
    ``fsync``. It is plain ``sqlite3``, not the store's writer: one insert per message, where
    an ORM session's bookkeeping cost more than the write. Between processes (serving workers,
    the delivery process removing what it delivered) the write turn (:mod:`mssante.writeturn`)
    hands the lock over without SQLite's sleeps."""

    def __init__(self, data_dir: Path, keyring: KeyRing) -> None:
        self.path = data_dir / QUEUE_DB
        self.keyring = keyring
        create_private_db(self.path)
        self._turn = WriteTurn(self.path.with_name(self.path.name + "-writer.lock"))
        self._jobs: queue.SimpleQueue[tuple[Write, Future[Any]] | None] = queue.SimpleQueue()
        self._connection = _connect(self.path)
        self._connection.execute(_SCHEMA)
        self._reader: sqlite3.Connection | None = None  # opened by the first read
        self._openers: dict[bytes, AESGCM] = {}  # data keys unwrapped, by key line
        self._new_key()
        self._read_lock = threading.Lock()
        # Held by whoever writes through the connection: the writer thread, or a lone session's
        # event loop writing its entry itself (put(..., alone=True)).
        self._writing = threading.Lock()
        self._thread = threading.Thread(target=self._write_turns, name="mssante-queue", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish the writes asked for, then stop."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._connection.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _write_turns(self) -> None:
        while (item := self._jobs.get()) is not None:
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop once this batch is written
                    break
                batch.append(more)
            try:
                results = self._transaction([job for job, _ in batch])
            except Exception:  # one write refused: each again alone, so that it fails alone
                for job, future in batch:
                    try:
                        future.set_result(self._transaction([job])[0])
                    except Exception as exc:
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)

    def _transaction(self, jobs: list[Write]) -> list[Any]:
        with self._writing:
            return self._commit(jobs)

    def _commit(self, jobs: list[Write]) -> list[Any]:
        """``jobs`` in one transaction (the caller holds ``_writing``)."""
        with self._turn.held():
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                results = [job(connection) for job in jobs]
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return results

    def _submit(self, job: Write) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((job, future))
        return future

    async def _write(self, job: Write) -> Any:
        return await asyncio.wrap_future(self._submit(job))

    # -- sealing ------------------------------------------------------------------------
    def seal(self, entry: QueuedMessage) -> bytes:
        """The entry encrypted under this process's current data key (a random nonce each)."""
        if self._sealed >= KEY_USES:
            self._new_key()
        self._sealed += 1
        header = _header(entry)
        nonce = os.urandom(12)
        plain = b"".join((struct.pack(">I", len(header)), header, entry.raw))
        return self._lead + nonce + self._aead.encrypt(nonce, plain, _aad(entry.id))

    def _new_key(self) -> None:
        """A data key for the next ``KEY_USES`` entries, wrapped by the key ring's active key:
        one wrap per million entries rather than one per message (random 96-bit nonces under
        one AES-GCM key stay far below NIST's 2^32 limit)."""
        data_key = new_data_key()
        wrapped = self.keyring.wrap(data_key)
        lead = json.dumps({"key": wrapped.key_id, "wrapped": base64.b64encode(wrapped.wrapped).decode()})
        self._aead = AESGCM(data_key)
        self._lead = lead.encode() + b"\n"
        self._sealed = 0

    def open(self, entry_id: str, data: bytes) -> QueuedMessage:
        lead, newline, rest = data.partition(b"\n")
        try:
            if not newline:
                raise ValueError("no key line")
            aead = self._opener(lead)
            plain = aead.decrypt(rest[:12], rest[12:], _aad(entry_id))
        except (ValueError, KeyError, TypeError, KeyRingError, InvalidTag) as exc:
            reason = str(exc) or type(exc).__name__
            raise QueueEntryError(f"queue entry {entry_id} does not open: {reason}") from None
        (size,) = struct.unpack(">I", plain[:4])
        return _entry(entry_id, plain[4 : 4 + size], plain[4 + size :])

    def _opener(self, lead: bytes) -> AESGCM:
        """The data key of a key line, unwrapped once: every entry a serving process sealed
        since its start (up to ``KEY_USES``) carries the same one."""
        aead = self._openers.get(lead)
        if aead is None:
            key = json.loads(lead)
            aead = AESGCM(self.keyring.unwrap(SealedKey(key["key"], base64.b64decode(key["wrapped"]))))
            if len(self._openers) >= OPENERS_KEPT:
                self._openers.clear()
            self._openers[lead] = aead
        return aead

    # -- writing --------------------------------------------------------------------------
    def _insert(self, entry: QueuedMessage) -> Write:
        def write(connection: sqlite3.Connection) -> None:
            row = (entry.id, self.seal(entry))
            connection.execute("INSERT INTO entries (id, sealed, aside) VALUES (?, ?, 0)", row)

        return write

    async def put(self, entry: QueuedMessage, *, alone: bool = False) -> None:
        """Seal ``entry`` into the queue; returns once it is durable (the ``250`` may go).

        ``alone``: the caller's session is the only one open on its SMTP listener in this
        process, so no other sender waits on its event loop (an IMAP command waits one commit
        at most). Then, when no other write is under way, the loop commits the entry itself:
        one row and its ``fsync``, without the hand-off to the writer thread and back, which
        cost a lone session more than the commit did (two thread wake-ups and two passes of
        the interpreter lock a message; one server alternated with and without, one session:
        the serving process's CPU 1.55–1.69 against 1.93–2.15 ms a message, 289–323 against
        227–248 messages a second). With more sessions the writer thread groups their
        entries in one transaction, as before."""
        write = self._insert(entry)
        if alone and not self._jobs.qsize() and self._writing.acquire(blocking=False):
            try:
                self._commit([write])
            finally:
                self._writing.release()
            return
        await self._write(write)

    def put_now(self, entry: QueuedMessage) -> None:
        """:meth:`put`, from a thread without an event loop (tools, tests)."""
        self._submit(self._insert(entry)).result()

    async def remove(self, entry_ids: list[str]) -> None:
        if entry_ids:
            rows = [(entry_id,) for entry_id in entry_ids]
            await self._write(lambda c: c.executemany("DELETE FROM entries WHERE id = ?", rows))

    async def set_aside(self, entry_id: str) -> None:
        await self._write(lambda c: c.execute("UPDATE entries SET aside = 1 WHERE id = ?", (entry_id,)))

    # -- the operator's tools (``mssante queue submission``) -----------------------------------
    def listing(self) -> list[tuple[str, bool]]:
        """Every entry's id, oldest first, and whether it is set aside."""
        with self._reading() as connection:
            rows = connection.execute("SELECT id, aside FROM entries ORDER BY id")
            return [(row[0], bool(row[1])) for row in rows]

    async def put_back(self, entry_ids: list[str]) -> int:
        """Set-aside entries made waiting again (the delivery process takes them within its
        poll); how many were set aside."""

        def write(connection: sqlite3.Connection) -> int:
            rows = [(entry_id,) for entry_id in entry_ids]
            before = connection.total_changes
            connection.executemany("UPDATE entries SET aside = 0 WHERE id = ? AND aside = 1", rows)
            return connection.total_changes - before

        return int(await self._write(write))

    async def drop_aside(self, entry_id: str) -> bool:
        """Remove a set-aside entry (never one waiting: the delivery process may hold it)."""

        def write(connection: sqlite3.Connection) -> int:
            return connection.execute("DELETE FROM entries WHERE id = ? AND aside = 1", (entry_id,)).rowcount

        return bool(await self._write(write))

    # -- reading (the delivery process, from one thread at a time) -----------------------------
    def waiting(self) -> list[str]:
        """The ids of the entries waiting, oldest first."""
        with self._reading() as connection:
            rows = connection.execute("SELECT id FROM entries WHERE aside = 0 ORDER BY id")
            return [row[0] for row in rows]

    def read(self, entry_ids: list[str]) -> list[tuple[str, bytes]]:
        """The sealed entries of ``entry_ids`` still there, oldest first."""
        found = []
        with self._reading() as connection:
            for entry_id in entry_ids:
                row = connection.execute("SELECT sealed FROM entries WHERE id = ?", (entry_id,)).fetchone()
                if row is not None:
                    found.append((entry_id, bytes(row[0])))
        return found

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            if self._reader is None:
                self._reader = _connect(self.path)
            yield self._reader


def queue_stats(data_dir: Path) -> dict[str, Any]:
    """What monitoring watches of the node's queue: entries waiting, the oldest one's age, and
    entries set aside (acknowledged, not deliverable as they are: an operator must look)."""
    path = data_dir / QUEUE_DB
    if not path.exists():
        return {"waiting": 0, "oldest_age_seconds": 0.0, "set_aside": 0}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        waiting, oldest = db.execute("SELECT count(*), min(id) FROM entries WHERE aside = 0").fetchone()
        (aside,) = db.execute("SELECT count(*) FROM entries WHERE aside = 1").fetchone()
    age = age_seconds(oldest) if oldest else 0.0
    return {"waiting": int(waiting), "oldest_age_seconds": round(age, 1), "set_aside": int(aside)}


class QueueBell:
    """Rings the delivery process when an entry is written, so it need not poll the queue:
    a datagram to an abstract Unix socket named after the server (no file, gone with it). A
    lost ring only delays the entry until the delivery process looks again on its own."""

    def __init__(self, group: str) -> None:
        self.address = b"\0mssante-queue-" + group.encode()
        self._socket: socket.socket | None = None

    def ring(self) -> None:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        # Not listening yet, or its buffer full: it looks again within a second anyway.
        with contextlib.suppress(OSError):
            self._socket.sendto(b"!", self.address)

    def listen(self) -> socket.socket:
        """The delivery process's end (bound once, non-blocking)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.address)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
