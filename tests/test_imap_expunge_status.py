"""Issue 20: EXPUNGE and CLOSE find a folder's \\Deleted messages by a partial index (the
few, not the folder, while the writer holds every delivery), and STATUS is counted by the
database; what a client sees is unchanged, keywords that merely look alike included."""

from __future__ import annotations

import asyncio
import imaplib
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mssante.runtime import Runtime
from mssante.store.models import has_flag
from tests.helpers import make_message
from tests.imap_dialogues.harness import Running, running_server

BAL = "alice@demo.mssante.fr"


def _status(imap: imaplib.IMAP4, items: str) -> dict[str, int]:
    typ, data = imap.status("INBOX", f"({items})")
    assert typ == "OK"
    found = re.findall(rb"([A-Z]+) (\d+)", data[0] or b"")
    return {name.decode(): int(value) for name, value in found}


def _dialogue(running: Running) -> dict[str, object]:
    out: dict[str, object] = {}
    imap = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client)
    imap.login("alice", "wonderland")
    # Nothing selected yet: STATUS of the ten messages, all new (unseen, recent).
    out["status_new"] = _status(imap, "MESSAGES UNSEEN RECENT DELETED SIZE")
    out["status_row"] = _status(imap, "UIDNEXT UIDVALIDITY")  # the folder's row alone
    imap.select("INBOX")
    imap.store("1:4", "+FLAGS", "(\\Seen)")
    imap.store("2", "+FLAGS", "(\\Deleted)")
    imap.store("7", "+FLAGS", "(\\Deleted \\Seen)")
    # Keywords with the flag's letters (no backslash: keywords never have one) stay.
    imap.store("3", "+FLAGS", "(Deleted $NotDeleted)")
    imap.store("5", "+FLAGS", "(Seen)")
    out["status_flagged"] = _status(imap, "MESSAGES UNSEEN DELETED")
    out["expunged"] = imap.expunge()[1]
    out["after_expunge"] = imap.fetch("1:*", "(UID)")[1]
    out["look_alike"] = [
        set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).split())  # type: ignore[union-attr]
        for line in imap.fetch("2,4", "(FLAGS)")[1]
        if isinstance(line, bytes)
    ]
    out["expunge_nothing"] = imap.expunge()[1]
    imap.store("1", "+FLAGS", "(\\Deleted)")
    imap.close()
    out["status_closed"] = _status(imap, "MESSAGES UNSEEN RECENT DELETED")
    imap.logout()
    return out


async def test_expunge_close_and_status_as_a_client_sees_them(runtime: Runtime, tmp_path: Path) -> None:
    store = runtime.store
    await store.ensure_account(BAL)
    for i in range(10):
        await store.deliver(make_message(to=BAL, subject=f"m{i}"), "dr.martin@demo.mssante.fr", [BAL])
    inbox = await store.folder(BAL, "INBOX")
    sizes = [row.size for row in await store.messages(inbox.id)]
    async with running_server(store, tmp_path / "tls") as running:
        out = await asyncio.to_thread(_dialogue, running)
    assert out["status_new"] == {"MESSAGES": 10, "UNSEEN": 10, "RECENT": 10, "DELETED": 0, "SIZE": sum(sizes)}
    assert out["status_row"] == {"UIDNEXT": 11, "UIDVALIDITY": inbox.uidvalidity}
    assert out["status_flagged"] == {"MESSAGES": 10, "UNSEEN": 5, "DELETED": 2}
    assert out["expunged"] == [b"7", b"2"]  # the higher first: no renumbering in between
    remaining = [1, 3, 4, 5, 6, 8, 9, 10]
    assert out["after_expunge"] == [b"%d (UID %d)" % (n, uid) for n, uid in enumerate(remaining, 1)]
    assert out["look_alike"] == [
        {b"\\Seen", b"\\Recent", b"Deleted", b"$NotDeleted"},
        {b"\\Recent", b"Seen"},
    ]
    assert out["expunge_nothing"] == [None]
    # CLOSE removed UID 1 silently; the session that saw them took the \Recent ones.
    # UID 5 has the keyword Seen, not \Seen: it is unseen.
    assert out["status_closed"] == {"MESSAGES": 7, "UNSEEN": 5, "RECENT": 0, "DELETED": 0}


async def test_the_deleted_messages_are_found_by_their_index(runtime: Runtime) -> None:
    """The statement EXPUNGE runs reads the partial index, not the folder's messages."""
    engine = runtime.store.engine
    dialect = engine.dialect.name
    sql = f"SELECT uid FROM messages WHERE folder_id = 1 AND {has_flag(chr(92) + 'Deleted', dialect)}"
    with engine.connect() as conn:
        if dialect == "sqlite":
            plan = " ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
        else:
            conn.execute(text("SET enable_seqscan = off"))  # an empty table would be scanned
            plan = " ".join(str(row[0]) for row in conn.execute(text(f"EXPLAIN {sql}")))
    assert "ix_messages_deleted" in plan, plan


async def test_a_repeated_status_reads_the_folder_row_alone(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client asking STATUS again of a folder that did not change is answered without
    counting its messages again; a flag change, a delivery and an expunge are counted."""
    store = runtime.store
    await store.ensure_account(BAL)
    for i in range(3):
        await store.deliver(make_message(to=BAL, subject=f"m{i}"), "dr.martin@demo.mssante.fr", [BAL])
    counted: list[int] = []
    read = store.read

    async def counting(fn: Any, **kwargs: Any) -> Any:
        counted.append(1)
        return await read(fn, **kwargs)

    monkeypatch.setattr(store, "read", counting)
    inbox = await store.folder(BAL, "INBOX")
    asked = "MESSAGES UNSEEN DELETED"

    def ask() -> tuple[dict[str, int], int]:
        imap = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client)
        imap.login("alice", "wonderland")
        try:
            return _status(imap, asked), len(counted)
        finally:
            imap.logout()

    async with running_server(store, tmp_path / "tls") as running:
        first = await asyncio.to_thread(ask)
        again = await asyncio.to_thread(ask)
        await store.store_flags(inbox.id, [1], "add", ["\\Seen"], actor=BAL, bal=BAL)
        seen = await asyncio.to_thread(ask)
        await store.deliver(make_message(to=BAL, subject="m3"), "dr.martin@demo.mssante.fr", [BAL])
        delivered = await asyncio.to_thread(ask)
        await store.store_flags(inbox.id, [2], "add", ["\\Deleted"], actor=BAL, bal=BAL)
        await store.expunge(inbox.id, actor=BAL, bal=BAL)
        expunged = await asyncio.to_thread(ask)
    assert first[0] == again[0] == {"MESSAGES": 3, "UNSEEN": 3, "DELETED": 0}
    assert again[1] == first[1]  # the second STATUS counted nothing
    assert seen[0] == {"MESSAGES": 3, "UNSEEN": 2, "DELETED": 0}
    assert delivered[0] == {"MESSAGES": 4, "UNSEEN": 3, "DELETED": 0}
    assert expunged[0] == {"MESSAGES": 3, "UNSEEN": 2, "DELETED": 0}
