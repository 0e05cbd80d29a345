"""``mssante db backfill``: messages stored before the SEARCH and SORT forms existed get them,
the same as delivery seals, through the command line an operator runs after upgrading."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from mssante.crypto import open_small
from mssante.runtime import Runtime
from mssante.store import headerindex, sortkeys
from mssante.store.blobs import BlobReader
from tests.helpers import make_message


def _cli(runtime: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    env["MSSANTE_DATABASE__URL"] = runtime.settings.database_url
    return subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(runtime.settings.data_dir), "db", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _forms(runtime: Runtime) -> dict[int, tuple[bytes | None, bytes | None]]:
    """Each blob's SEARCH and SORT forms, decrypted (None where there is none)."""
    reader = BlobReader(runtime.engine, runtime.keyring)
    with runtime.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, key_id, wrapped_key, search, sortkeys FROM blobs ORDER BY id"))
        return {
            blob_id: tuple(  # type: ignore[misc]
                open_small(reader.data_key(key_id, wrapped), bytes(sealed), kind)
                if sealed is not None
                else None
                for sealed, kind in ((search, "search"), (keys, "sort"))
            )
            for blob_id, key_id, wrapped, search, keys in rows
        }


async def test_backfill_seals_what_delivery_would_have(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        message = make_message(subject=f"Re: compte rendu {n}")
        if n % 2:  # a reply: its thread link is part of the SORT form
            message = message.replace(
                b"\r\n\r\n", f"\r\nReferences: <r{n}@demo.mssante.fr>\r\n\r\n".encode(), 1
            )
        await runtime.store.deliver(
            message,
            "dr.martin@demo.mssante.fr",
            ["dr.durand@demo.mssante.fr"],
        )
    delivered = _forms(runtime)
    assert delivered and all(search and keys for search, keys in delivered.values())
    # As an earlier version left them: no SORT forms at all, and some without a SEARCH form.
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE blobs SET sortkeys = NULL"))
        conn.execute(text("UPDATE blobs SET search = NULL WHERE id IN (SELECT MIN(id) FROM blobs)"))

    done = _cli(runtime, "backfill", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"messages": len(delivered), "search": 1, "sortkeys": len(delivered)}
    assert _forms(runtime) == delivered  # the same forms, decrypted under each message's key
    again = _cli(runtime, "backfill")
    assert again.returncode == 0 and "0 stored messages completed" in again.stdout

    # SORT and SEARCH now read the sealed forms, not the structures.
    def refused(*_args: Any) -> Any:
        raise AssertionError("a structure was decoded")

    monkeypatch.setattr(BlobReader, "structures", refused)
    monkeypatch.setattr(BlobReader, "meta", refused)
    ids = list(delivered)
    with Session(runtime.engine) as db:
        keys = sortkeys.read(runtime.store.reader, db, ids, threads=True)
        fields = headerindex.HeaderIndex().fields(runtime.store.reader, db, ids)
    assert sorted(k.subject for k in keys.values()) == [f"COMPTE RENDU {n}" for n in range(7)]
    assert sum(bool(k.parents) for k in keys.values()) == 3 and len(fields) == len(ids)


async def test_backfill_runs_beside_deliveries(runtime: Runtime) -> None:
    """While the server delivers (its writer thread, committing), the backfill of another
    process completes: no delivery fails, no form is left missing, none is written twice."""
    for n in range(300):
        await runtime.store.deliver(
            make_message(subject=f"ancien {n}"), "dr.martin@demo.mssante.fr", ["dr.durand@demo.mssante.fr"]
        )
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE blobs SET sortkeys = NULL"))
    backfilling = asyncio.create_task(asyncio.to_thread(_cli, runtime, "backfill", "--json"))
    delivered = 0
    while not backfilling.done():
        await runtime.store.deliver(
            make_message(subject=f"nouveau {delivered}"),
            "dr.martin@demo.mssante.fr",
            ["dr.durand@demo.mssante.fr"],
        )
        delivered += 1
    done = await backfilling
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sortkeys"] == 300 and delivered > 0
    assert all(keys is not None for _, keys in _forms(runtime).values())
