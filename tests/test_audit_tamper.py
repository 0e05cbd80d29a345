"""The keyed audit chain against someone who can write the database (SQLite and PostgreSQL).

Each test tampers with the real database by SQL, as an attacker with database access would,
then runs the real ``mssante audit verify`` command.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent, AuditKey
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.runtime import Runtime
from mssante.schema import alembic_config, upgrade
from mssante.sqlfast import utc


def mssante(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    env["MSSANTE_DATABASE__URL"] = settings.database_url
    return subprocess.run(
        [sys.executable, "-m", "mssante", *args, "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def _fill(runtime: Runtime, n: int = 8) -> None:
    await runtime.store.record(
        *(AuditEvent(actor="dr.martin@demo.mssante.fr", action=f"act{i}") for i in range(n))
    )


def _sql(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def _take_checkpoint(runtime: Runtime, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    path = tmp_path / "checkpoint.json"
    done = mssante(runtime.settings, "audit", "checkpoint", "--output", str(path))
    assert done.returncode == 0, done.stderr
    return path, json.loads(path.read_text())


def _rewind_to(engine: Engine, seq: int) -> None:
    """Delete every record after ``seq`` and point the head at record ``seq``: a clean cut."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq > :s"), {"s": seq})
        mac = conn.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": seq}).scalar()
        conn.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": seq, "h": mac or "0" * 64}
        )


async def test_cutting_the_tail_passes_alone_but_not_against_a_checkpoint(
    runtime: Runtime, tmp_path: Path
) -> None:
    await _fill(runtime)
    path, doc = _take_checkpoint(runtime, tmp_path)
    assert doc["seq"] == 8 and doc["format"] == audit.CHECKPOINT_FORMAT
    await _fill(runtime, 2)  # records 9 (the checkpoint's own trace) to 11
    ok = mssante(runtime.settings, "audit", "verify", "--checkpoint", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "11 records" in ok.stdout and "checkpoint 8" in ok.stdout

    # Remove records 6.. and rewind the head onto record 5: the chain alone still holds (the
    # documented limit) ...
    _rewind_to(runtime.writer_engine, 5)
    alone = mssante(runtime.settings, "audit", "verify", "--json")
    assert alone.returncode == 0 and json.loads(alone.stdout)["records"] == 5
    # ... the checkpoint kept elsewhere does not.
    cut = mssante(runtime.settings, "audit", "verify", "--checkpoint", str(path), "--json")
    assert cut.returncode == 1
    result = json.loads(cut.stdout)
    assert result["ok"] is False and result["broken_seq"] == 6 and "6..8 were removed" in result["reason"]


async def test_truncation_to_nothing_is_caught_by_the_checkpoint(runtime: Runtime, tmp_path: Path) -> None:
    await _fill(runtime, 3)
    path, _ = _take_checkpoint(runtime, tmp_path)
    _sql(runtime.writer_engine, "DELETE FROM audit_log")
    _sql(runtime.writer_engine, "UPDATE audit_head SET seq = 0, hash = :g WHERE id = 1", g="0" * 64)
    with Session(runtime.engine) as s:
        assert audit.verify(s).ok  # an empty trail is a valid trail ...
        key = audit.key_for(s)
        against = audit.Checkpoint.parse(path.read_text(), key)
        result = audit.verify(s, key, against)
    assert not result.ok and result.broken_seq == 1  # ... but not the one checkpointed


def _sha256_rechain(engine: Engine, edit_seq: int) -> None:
    """Edit one record, then recompute every link after it with plain SHA-256 (the old scheme)."""
    _sql(engine, "UPDATE audit_log SET actor = 'quelqu.un@ailleurs.fr' WHERE seq = :s", s=edit_seq)
    with Session(engine) as s, s.begin():
        rows = s.scalars(audit.select(audit.AuditRecord).order_by(audit.AuditRecord.seq)).all()
        prev = rows[edit_seq - 2].hash if edit_seq > 1 else audit.GENESIS
        for r in rows[edit_seq - 1 :]:
            r.prev_hash = prev
            r.hash = audit.sha256_link(r.seq, utc(r.at), audit.record_fields(r), prev)
            prev = r.hash
        s.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})


async def test_an_edit_rechained_with_plain_sha256_is_named(runtime: Runtime) -> None:
    await _fill(runtime, 6)
    _sha256_rechain(runtime.writer_engine, 3)
    broken = mssante(runtime.settings, "audit", "verify")
    assert broken.returncode == 1
    assert "record 3" in broken.stderr and "without the audit key" in broken.stderr


async def test_an_edit_rechained_with_a_guessed_key_is_named(runtime: Runtime) -> None:
    await _fill(runtime, 4)
    forged = AuditKey(hashlib.sha256(b"guess").digest(), b"x" * 32)
    with Session(runtime.writer_engine) as s, s.begin():
        rows = s.scalars(audit.select(audit.AuditRecord).order_by(audit.AuditRecord.seq)).all()
        prev = audit.GENESIS
        for r in rows:
            r.actor = "quelqu.un@ailleurs.fr" if r.seq == 2 else r.actor
            r.prev_hash = prev
            r.hash = forged.mac(audit._canonical(r.seq, utc(r.at), audit.record_fields(r), prev))
            prev = r.hash
        s.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})
    with Session(runtime.engine) as s:
        result = audit.verify(s)
    assert not result.ok and result.broken_seq == 1


async def test_an_edited_checkpoint_file_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    await _fill(runtime, 5)
    path, doc = _take_checkpoint(runtime, tmp_path)
    # Lower the checkpoint onto record 2 (to hide a cut after it), with record 2's real MAC.
    with runtime.engine.connect() as conn:
        mac2 = conn.execute(text("SELECT hash FROM audit_log WHERE seq = 2")).scalar()
    path.write_text(json.dumps({**doc, "seq": 2, "mac": mac2}))
    refused = mssante(runtime.settings, "audit", "verify", "--checkpoint", str(path))
    assert refused.returncode == 1 and "altered" in refused.stderr


async def test_key_rotation_keeps_the_chain_and_its_checkpoints(runtime: Runtime, tmp_path: Path) -> None:
    await _fill(runtime, 3)
    path, _ = _take_checkpoint(runtime, tmp_path)
    rotated = mssante(runtime.settings, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    ring = KeyRing.load(runtime.settings.keyring_path)
    assert len(ring.key_ids()) == 2
    # The audit key is derived from the ring's stable secret: a server started after the
    # rotation chains on, and the checkpoint taken before it still verifies.
    audit.bind(runtime.settings.database_url, AuditKey.from_ring(ring))
    await _fill(runtime, 2)
    ok = mssante(runtime.settings, "audit", "verify", "--checkpoint", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "6 records" in ok.stdout  # 3 + the checkpoint's trace + 2


async def test_another_key_ring_is_named_as_such(runtime: Runtime, tmp_path: Path) -> None:
    await _fill(runtime, 2)
    other = AuditKey.from_ring(KeyRing.create(tmp_path / "other.json"))
    with Session(runtime.engine) as s:
        result = audit.verify(s, other)
    assert not result.ok and "another key ring" in (result.reason or "")


def _old_records(engine: Engine, count: int) -> None:
    """Records as revision 0007 wrote them: chained with plain SHA-256."""
    prev = audit.GENESIS
    with engine.begin() as conn:
        for seq in range(1, count + 1):
            at = datetime(2026, 11, 1, 8, 0, seq, tzinfo=UTC)
            fields = {"actor": "cli:root", "bal": None, "action": f"old{seq}", "object": None,
                      "source": None, "outcome": "ok", "detail": None}  # fmt: skip
            mac = audit.sha256_link(seq, at, fields, prev)
            conn.execute(
                text(
                    "INSERT INTO audit_log (seq, at, actor, bal, action, object, source, outcome, detail, "
                    "prev_hash, hash) VALUES (:seq, :at, :actor, :bal, :action, :object, :source, :outcome, "
                    ":detail, :prev, :hash)"
                ),
                {"seq": seq, "at": at, "prev": prev, "hash": mac, **fields},
            )
            prev = mac
        conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": count, "h": prev})


def test_upgrade_rechains_an_existing_trail_under_the_key(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    KeyRing.create(settings.keyring_path)
    engine = make_engine(settings.database_url, writer=True)
    before_keyed = ScriptDirectory.from_config(alembic_config()).get_revision("0008").down_revision
    upgrade(engine, str(before_keyed))  # the schema just before the keyed chain
    _old_records(engine, 4)
    audit.bind(settings.database_url, Path("/nonexistent/keyring.json"))
    with pytest.raises(RuntimeError, match="key ring could not be read"):
        upgrade(engine)

    done = mssante(settings, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    ok = mssante(settings, "audit", "verify")
    assert ok.returncode == 0 and "5 records" in ok.stdout, ok.stderr
    with engine.connect() as conn:
        action, detail = conn.execute(text("SELECT action, detail FROM audit_log WHERE seq = 5")).one()
    assert action == "audit.chain_keyed"
    assert json.loads(detail) == {"records": 4, "previous_chain": "intact"}
    engine.dispose()
