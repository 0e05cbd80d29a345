"""The audit trail: append-only records, each chained to the previous one by a keyed MAC.

Every action on a mailbox, a DMP document or an identity is written here, inside the same
transaction as the action itself, so that no action exists without its trace.

Each record carries HMAC-SHA256(audit key, record ‖ previous MAC). The audit key is derived
from the key ring file (``KeyRing.derive``), never stored in the database: someone who can
write the database but not read the key ring cannot forge a record nor recompute the chain
after an edit. What a database writer can still do is cut the newest records and rewind the
head to an older (genuine) record; a *checkpoint* (the head's sequence number and MAC, itself
MACed) shipped elsewhere defeats that: ``verify`` against it proves that nothing up to the
checkpoint was removed or rewritten.

Appends serialise on the single ``audit_head`` row (a row lock on PostgreSQL, the write lock
on SQLite) so that several server processes extend one chain, never fork it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, String, Text, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Mapped, Session, mapped_column

from mssante.db import Base
from mssante.sqlfast import dialect_of, run, timestamp, utc

if TYPE_CHECKING:
    from mssante.crypto import KeyRing

GENESIS = "0" * 64
CHECKPOINT_FORMAT = "mssante-audit-checkpoint/1"


class AuditRecord(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(320))
    bal: Mapped[str | None] = mapped_column(String(320), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    object: Mapped[str | None] = mapped_column(String(512))
    source: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    # Named before the chain was keyed: both hold HMAC-SHA256 values (hex) since revision 0008.
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the sequence number and MAC of the newest record, and which key chains them."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS)
    # Fingerprint of the audit key (not the key): names a key ring mismatch instead of
    # reporting every record as edited.
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it is chained: who, acting for which BAL, what, on what, from where."""

    actor: str
    action: str
    outcome: str = "ok"
    bal: str | None = None
    object: str | None = None
    source: str | None = None
    detail: dict[str, Any] | None = None


# -- the key ------------------------------------------------------------------------------
class AuditKeyMissing(Exception):
    """No audit key is known for this database (its key ring was never named to this process)."""


class AuditKey:
    """The chain key and the checkpoint key, both derived from the key ring."""

    def __init__(self, chain: bytes, checkpoint: bytes) -> None:
        self._chain = hmac.new(chain, digestmod=hashlib.sha256)
        self._checkpoint = checkpoint
        self.key_id = hmac.new(chain, b"mssante audit key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_ring(cls, ring: KeyRing) -> AuditKey:
        return cls(ring.derive("audit chain v1"), ring.derive("audit checkpoint v1"))

    @classmethod
    def from_ring_file(cls, path: Path) -> AuditKey:
        from mssante.crypto import KeyRing

        return cls.from_ring(KeyRing.load(path))

    def mac(self, data: bytes) -> str:
        # Copying the keyed state skips re-hashing the padded key for every record.
        m = self._chain.copy()
        m.update(data)
        return m.hexdigest()

    def seal_checkpoint(self, body: dict[str, Any]) -> str:
        return hmac.new(self._checkpoint, _checkpoint_bytes(body), hashlib.sha256).hexdigest()


KeySource = AuditKey | Path | Callable[[], AuditKey]

_sources: dict[str, KeySource] = {}
_resolved: dict[str, AuditKey] = {}
_per_engine: weakref.WeakKeyDictionary[Engine, tuple[int, AuditKey]] = weakref.WeakKeyDictionary()
_generation = 0
_lock = threading.Lock()


def _url_id(url: Any) -> str:
    return make_url(url).render_as_string(hide_password=True)


def bind(database_url: str, source: KeySource, *, from_config: bool = False) -> None:
    """Name the audit key of a database: a key, a key ring file (read when first needed), or
    a loader. Every engine on that URL in this process then chains and verifies with it.

    ``from_config``: the key ring a configuration names (``load_settings``); it does not
    replace a key bound explicitly (a ring already loaded by the runtime, a restore, a test).
    """
    global _generation
    with _lock:
        url = _url_id(database_url)
        if from_config and not isinstance(_sources.get(url, source), Path):
            return
        _sources[url] = source
        _resolved.pop(url, None)
        _generation += 1


def key_for_engine(engine: Engine) -> AuditKey:
    """The audit key bound to this engine's database, or AuditKeyMissing."""
    cached = _per_engine.get(engine)
    if cached is not None and cached[0] == _generation:
        return cached[1]
    with _lock:
        url = _url_id(engine.url)
        key = _resolved.get(url)
        if key is None:
            source = _sources.get(url)
            if source is None:
                raise AuditKeyMissing(f"no audit key is bound for {url}: the key ring was not loaded")
            key = (
                source
                if isinstance(source, AuditKey)
                else (AuditKey.from_ring_file(source) if isinstance(source, Path) else source())
            )
            _resolved[url] = key
        _per_engine[engine] = (_generation, key)
        return key


def key_for(session: Session) -> AuditKey:
    bind_ = session.get_bind()
    return key_for_engine(bind_ if isinstance(bind_, Engine) else bind_.engine)


# -- chaining -----------------------------------------------------------------------------
def _canonical(seq: int, at: datetime, e: dict[str, Any], prev_hash: str) -> bytes:
    body = {
        "seq": seq,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": e["actor"],
        "bal": e["bal"],
        "action": e["action"],
        "object": e["object"],
        "source": e["source"],
        "outcome": e["outcome"],
        "detail": e["detail"],
        "prev": prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_link(seq: int, at: datetime, fields: dict[str, Any], prev_hash: str) -> str:
    """The unkeyed link of revisions before 0008: kept to check the old chain at re-keying."""
    return hashlib.sha256(_canonical(seq, at, fields, prev_hash)).hexdigest()


def record_fields(r: Any) -> dict[str, Any]:
    """What a record says (the chained part besides its sequence and time)."""
    return {
        "actor": r.actor,
        "bal": r.bal,
        "action": r.action,
        "object": r.object,
        "source": r.source,
        "outcome": r.outcome,
        "detail": r.detail,
    }


_LOG_FIELDS = (
    "seq",
    "at",
    "actor",
    "bal",
    "action",
    "object",
    "source",
    "outcome",
    "detail",
    "prev_hash",
    "hash",
)
_MERGED_MAX = 64  # records written with the head's hash in one statement (11 parameters each)
# Taking the head row's lock first (UPDATE … RETURNING) serialises concurrent appenders.
TAKE_HEAD = "UPDATE audit_head SET seq = seq + :n WHERE id = 1 RETURNING seq, hash"


def append(
    session: Session,
    *events: AuditEvent,
    at: datetime | None = None,
    key: AuditKey | None = None,
    taken: Sequence[Any] | None = None,
) -> None:
    """Append events inside the caller's transaction (committed or rolled back with it).

    ``taken``: the row :data:`TAKE_HEAD` returned for these events (``:n`` their number), when
    the caller's own statement took the head's lock with its work (the main statement of a
    PostgreSQL ``WITH``): a round trip fewer."""
    if not events:
        return
    key = key or key_for(session)  # before taking the lock: a missing key ring fails without waiting
    when = at or datetime.now(UTC)
    row = taken if taken is not None else run(session, TAKE_HEAD, {"n": len(events)}).first()
    if row is None:  # a database created before the head row existed
        run(
            session,
            "INSERT INTO audit_head (id, seq, hash, key_id) VALUES (1, 0, :genesis, :kid)",
            {"genesis": GENESIS, "kid": key.key_id},
        )
        row = run(session, TAKE_HEAD, {"n": len(events)}).one()
    seq, prev = int(row[0]) - len(events), str(row[1])
    stamp = timestamp(when, dialect_of(session))
    rows = []
    for event in events:
        seq += 1
        fields = {
            "actor": event.actor,
            "bal": event.bal,
            "action": event.action,
            "object": event.object,
            "source": event.source,
            "outcome": event.outcome,
            "detail": json.dumps(event.detail, sort_keys=True, ensure_ascii=False) if event.detail else None,
        }
        digest = key.mac(_canonical(seq, when, fields, prev))
        rows.append({"seq": seq, "at": stamp, "prev_hash": prev, "hash": digest, **fields})
        prev = digest
    if dialect_of(session) == "postgresql" and len(rows) <= _MERGED_MAX:
        # The records and the head's new hash in one statement: a round trip fewer in every
        # transaction that records something (most of the writer's).
        values = ", ".join(
            "(" + ", ".join(f":{name}{i}" for name in _LOG_FIELDS) + ")" for i in range(len(rows))
        )
        params = {f"{name}{i}": row[name] for i, row in enumerate(rows) for name in _LOG_FIELDS}
        run(
            session,
            f"WITH logged AS (INSERT INTO audit_log ({', '.join(_LOG_FIELDS)}) VALUES {values}) "
            "UPDATE audit_head SET hash = :head_hash WHERE id = 1",
            {**params, "head_hash": prev},
        )
        return
    run(
        session,
        f"INSERT INTO audit_log ({', '.join(_LOG_FIELDS)}) "
        f"VALUES ({', '.join(':' + name for name in _LOG_FIELDS)})",
        rows,
    )
    run(session, "UPDATE audit_head SET hash = :hash WHERE id = 1", {"hash": prev})


# -- checkpoints --------------------------------------------------------------------------
def _checkpoint_bytes(body: dict[str, Any]) -> bytes:
    signed = {k: v for k, v in body.items() if k != "checkpoint_mac"}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CheckpointError(Exception):
    """A checkpoint file that is unreadable, altered, or made under another key ring."""


@dataclass(frozen=True)
class Checkpoint:
    """The head at one moment, MACed so that an edited copy is refused."""

    seq: int
    mac: str
    key_id: str
    taken_at: str

    def document(self, key: AuditKey) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "seq": self.seq,
            "mac": self.mac,
            "key_id": self.key_id,
            "taken_at": self.taken_at,
        }
        body["checkpoint_mac"] = key.seal_checkpoint(body)
        return body

    @classmethod
    def parse(cls, text: str, key: AuditKey) -> Checkpoint:
        try:
            body = json.loads(text)
            if body.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"not a {CHECKPOINT_FORMAT} document")
            claimed = str(body["checkpoint_mac"])
            point = cls(int(body["seq"]), str(body["mac"]), str(body["key_id"]), str(body["taken_at"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint is unreadable ({exc.__class__.__name__})") from None
        if point.key_id != key.key_id:
            raise CheckpointError(
                f"checkpoint was made under another key ring (audit key {point.key_id}, "
                f"this key ring's is {key.key_id})"
            )
        if not hmac.compare_digest(claimed, key.seal_checkpoint(body)):
            raise CheckpointError("checkpoint does not match its MAC: the file was altered")
        return point


def checkpoint(session: Session, actor: str) -> Checkpoint:
    """The current head as a checkpoint; the act of taking it is itself traced."""
    key = key_for(session)
    row = run(session, "SELECT seq, hash FROM audit_head WHERE id = 1").first()
    seq, mac = (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)
    point = Checkpoint(seq, mac, key.key_id, datetime.now(UTC).isoformat(timespec="seconds"))
    append(session, AuditEvent(actor=actor, action="audit.checkpoint", object=str(seq)))
    return point


# -- verification -------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    checked: int
    broken_seq: int | None = None
    reason: str | None = None
    head_seq: int = 0
    head_mac: str = GENESIS

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def _walk(
    session: Session, link: Callable[[int, datetime, dict[str, Any], str], str], batch: int
) -> Iterator[tuple[AuditRecord, str | None]]:
    """Records in order with, for each, what is wrong with it (None when its link holds)."""
    prev, expected_seq, last = GENESIS, 1, 0
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last).order_by(AuditRecord.seq).limit(batch)
        ).all()
        if not rows:
            return
        for r in rows:
            if r.seq != expected_seq:
                yield r, f"record {expected_seq} is missing"
                return
            if r.prev_hash != prev:
                yield r, "link to the previous record is broken"
                return
            if not hmac.compare_digest(link(r.seq, utc(r.at), record_fields(r), r.prev_hash), r.hash):
                yield r, "content does not match its MAC (edited, or chained without the audit key)"
                return
            yield r, None
            prev, expected_seq, last = r.hash, r.seq + 1, r.seq
        session.expunge_all()


def verify(
    session: Session,
    key: AuditKey | None = None,
    against: Checkpoint | None = None,
    batch: int = 5000,
) -> VerifyResult:
    """Walk the keyed chain in order; report the first record whose MAC or link does not hold,
    and, given a checkpoint, any removal or rewrite of the records up to it."""
    key = key or key_for(session)
    head = session.get(AuditHead, 1)
    if head is not None and head.key_id not in (None, key.key_id):
        return VerifyResult(
            0,
            1,
            f"the trail is chained under another key ring (audit key {head.key_id}, "
            f"this one's is {key.key_id})",
        )

    def link(seq: int, at: datetime, fields: dict[str, Any], prev: str) -> str:
        return key.mac(_canonical(seq, at, fields, prev))

    checked, prev = 0, GENESIS
    for r, problem in _walk(session, link, batch):
        if problem is not None:
            broken = checked + 1 if problem.endswith("missing") else r.seq
            return VerifyResult(checked, broken, problem)
        if against is not None and r.seq == against.seq and not hmac.compare_digest(r.hash, against.mac):
            return VerifyResult(checked, r.seq, "record differs from the checkpoint (trail rewritten)")
        checked, prev = checked + 1, r.hash
    if against is not None and checked < against.seq:
        return VerifyResult(
            checked,
            checked + 1,
            f"records {checked + 1}..{against.seq} were removed: the checkpoint of "
            f"{against.taken_at} has {against.seq} records, the trail ends at {checked}",
        )
    if against is not None and against.seq == 0 and against.mac != GENESIS:
        return VerifyResult(checked, 1, "checkpoint of an empty trail has a non-genesis MAC")
    if head is not None and (head.seq != checked or head.hash != prev):
        return VerifyResult(checked, checked + 1 if head.seq > checked else checked, "records were removed")
    return VerifyResult(checked, head_seq=checked, head_mac=prev)


# -- switching an existing trail to the keyed chain (revision 0008) -------------------------
def rechain(session: Session, key: AuditKey, batch: int = 2000) -> dict[str, Any]:
    """Re-chain every record under the audit key, after checking the old SHA-256 chain.

    Returns what was found, and traces the switch itself as the first keyed act: the old
    chain's state ("intact", or where it was broken) stays on record, under the key.
    """
    old_state, tail = "intact", (0, GENESIS)
    for r, problem in _walk(session, sha256_link, batch):
        if problem is not None:
            old_state = f"broken at record {r.seq}: {problem}"
            break
        tail = (r.seq, r.hash)
    session.expunge_all()
    head = run(session, "SELECT seq, hash FROM audit_head WHERE id = 1").first()
    if old_state == "intact" and head is not None and (int(head[0]), str(head[1])) != tail:
        old_state = f"records after {tail[0]} were removed (the head was at {head[0]})"
    prev, count, last = GENESIS, 0, 0
    while True:
        rows = session.execute(  # rows read by column name: not the hot path's driver rows
            text(
                "SELECT seq, at, actor, bal, action, object, source, outcome, detail FROM audit_log "
                "WHERE seq > :last ORDER BY seq LIMIT :n"
            ),
            {"last": last, "n": batch},
        ).all()
        if not rows:
            break
        updates = []
        for row in rows:
            at = row.at if isinstance(row.at, datetime) else datetime.fromisoformat(str(row.at))
            mac = key.mac(_canonical(row.seq, utc(at), record_fields(row), prev))
            updates.append({"seq": row.seq, "prev": prev, "mac": mac})
            prev, count, last = mac, count + 1, row.seq
        run(session, "UPDATE audit_log SET prev_hash = :prev, hash = :mac WHERE seq = :seq", updates)
    if head is None:
        run(session, "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :g)", {"g": GENESIS})
    run(
        session,
        "UPDATE audit_head SET seq = :seq, hash = :mac, key_id = :kid WHERE id = 1",
        {"seq": last, "mac": prev, "kid": key.key_id},
    )
    found = {"records": count, "previous_chain": old_state}
    append(session, AuditEvent(actor="mssante", action="audit.chain_keyed", detail=found), key=key)
    return found


def bound_key(engine: Engine) -> AuditKey | None:
    """The engine's audit key if one is bound and readable (schema upgrades pass it on)."""
    from mssante.crypto import KeyRingError

    try:
        return key_for_engine(engine)
    except (AuditKeyMissing, KeyRingError):
        return None


def for_bal(session: Session, bal: str, limit: int = 200) -> Iterator[AuditRecord]:
    """The newest records concerning one mailbox, newest first."""
    yield from session.scalars(
        select(AuditRecord).where(AuditRecord.bal == bal).order_by(AuditRecord.seq.desc()).limit(limit)
    )
