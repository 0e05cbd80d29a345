"""The audit trail: chained records, verification names the first edited or removed record."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent, AuditRecord
from mssante.runtime import Runtime
from tests.helpers import make_message


def mssante(*args: str, data_dir: str, env_url: str) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ, MSSANTE_DATABASE__URL=env_url)
    return subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", data_dir, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def test_verify_clean_then_names_the_edited_record(runtime: Runtime) -> None:
    for i in range(5):
        await runtime.store.deliver(
            make_message(subject=f"s{i}"),
            "dr.martin@demo.mssante.fr",
            ["dr.durand@demo.mssante.fr"],
            source="127.0.0.1",
        )
    await runtime.store.record(AuditEvent(actor="admin", action="config.reload"))
    with Session(runtime.engine) as s:
        result = audit.verify(s)
    assert result.ok and result.checked == 6

    data_dir, url = str(runtime.settings.data_dir), runtime.settings.database_url
    ok = mssante("audit", "verify", data_dir=data_dir, env_url=url)
    assert ok.returncode == 0, ok.stderr
    assert "6 records" in ok.stdout
    shown = mssante(
        "audit", "show", "--bal", "DR.DURAND@demo.mssante.fr", "--json", data_dir=data_dir, env_url=url
    )
    assert shown.returncode == 0 and shown.stdout.count("message.deliver") == 5

    # Someone edits record 3 by hand: the chain names it.
    with Session(runtime.writer_engine) as s, s.begin():
        s.execute(
            update(AuditRecord).where(AuditRecord.seq == 3).values(actor="someone-else@demo.mssante.fr")
        )
    broken = mssante("audit", "verify", data_dir=data_dir, env_url=url)
    assert broken.returncode == 1
    assert "record 3" in broken.stderr and "edited" in broken.stderr


async def test_verify_detects_a_removed_record(runtime: Runtime) -> None:
    await runtime.store.record(*(AuditEvent(actor="a", action=f"act{i}") for i in range(4)))
    with Session(runtime.writer_engine) as s, s.begin():
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 2))
    with Session(runtime.engine) as s:
        result = audit.verify(s)
    assert not result.ok and result.broken_seq == 2
    with Session(runtime.writer_engine) as s, s.begin():
        s.execute(delete(AuditRecord).where(AuditRecord.seq >= 3))
    with Session(runtime.engine) as s:
        tail_cut = audit.verify(s)
    assert not tail_cut.ok and "removed" in (tail_cut.reason or "")
