"""The audit trail: append-only records, each chained to the previous one by SHA-256.

Every action on a mailbox, a DMP document or an identity is written here, inside the same
transaction as the action itself, so that no action exists without its trace. The chain
makes after-the-fact edits visible: ``mssante audit verify`` names the first broken record.

Appends serialise on the single ``audit_head`` row (a row lock on PostgreSQL, the write lock
on SQLite) so that several server processes extend one chain, never fork it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mssante.db import Base
from mssante.sqlfast import dialect_of, run, timestamp, utc

GENESIS = "0" * 64


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
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the sequence number and hash of the newest record."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS)


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


def _record_hash(seq: int, at: datetime, fields: dict[str, Any], prev_hash: str) -> str:
    return hashlib.sha256(_canonical(seq, at, fields, prev_hash)).hexdigest()


def append(session: Session, *events: AuditEvent, at: datetime | None = None) -> None:
    """Append events inside the caller's transaction (committed or rolled back with it)."""
    if not events:
        return
    when = at or datetime.now(UTC)
    # Taking the head row's lock first (UPDATE … RETURNING) serialises concurrent appenders.
    take = "UPDATE audit_head SET seq = seq + :n WHERE id = 1 RETURNING seq, hash"
    row = run(session, take, {"n": len(events)}).first()
    if row is None:  # a database created before the head row existed
        run(session, "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis)", {"genesis": GENESIS})
        row = run(session, take, {"n": len(events)}).one()
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
        digest = _record_hash(seq, when, fields, prev)
        rows.append({"seq": seq, "at": stamp, "prev_hash": prev, "hash": digest, **fields})
        prev = digest
    run(
        session,
        "INSERT INTO audit_log "
        "(seq, at, actor, bal, action, object, source, outcome, detail, prev_hash, hash) "
        "VALUES (:seq, :at, :actor, :bal, :action, :object, :source, :outcome, :detail, :prev_hash, :hash)",
        rows,
    )
    run(session, "UPDATE audit_head SET hash = :hash WHERE id = 1", {"hash": prev})


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in order; report the first record whose hash or link does not hold."""
    prev, expected_seq, checked = GENESIS, 1, 0
    last = 0
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last).order_by(AuditRecord.seq).limit(batch)
        ).all()
        if not rows:
            break
        for r in rows:
            if r.seq != expected_seq:
                return VerifyResult(checked, expected_seq, f"record {expected_seq} is missing")
            if r.prev_hash != prev:
                return VerifyResult(checked, r.seq, "link to the previous record is broken")
            fields = {
                "actor": r.actor,
                "bal": r.bal,
                "action": r.action,
                "object": r.object,
                "source": r.source,
                "outcome": r.outcome,
                "detail": r.detail,
            }
            if _record_hash(r.seq, utc(r.at), fields, r.prev_hash) != r.hash:
                return VerifyResult(checked, r.seq, "content does not match its hash (edited)")
            prev, expected_seq, checked, last = r.hash, r.seq + 1, checked + 1, r.seq
        session.expunge_all()
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != checked or head.hash != prev):
        return VerifyResult(checked, checked + 1 if head.seq > checked else checked, "records were removed")
    return VerifyResult(checked)


def for_bal(session: Session, bal: str, limit: int = 200) -> Iterator[AuditRecord]:
    """The newest records concerning one mailbox, newest first."""
    yield from session.scalars(
        select(AuditRecord).where(AuditRecord.bal == bal).order_by(AuditRecord.seq.desc()).limit(limit)
    )
