"""SEARCH BODY/TEXT over sealed messages read chunk by chunk: hits anywhere in a body (first
chunk, last chunk, inside a base64 part cut by chunk boundaries), headers first for TEXT, and a
body left partly unread once the needle is found."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from mssante.config import Settings, load_settings
from mssante.imap import search
from mssante.imap.commands.values import SearchKey
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.parser import parse_command
from mssante.runtime import Runtime, initialise, open_runtime
from tests.conftest import PG_URL
from tests.helpers import make_message

BAL = "dr.durand@demo.mssante.fr"
FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod.\r\n" * 500


@pytest.fixture
def small_chunks(tmp_path: Path, db_url: str) -> Iterator[Runtime]:
    settings: Settings = load_settings(
        None,
        server={"data_dir": str(tmp_path / "data")},
        database={"url": db_url},
        storage={"chunk_size": 4096},
    )
    initialise(settings)
    rt = open_runtime(settings)
    try:
        yield rt
    finally:
        rt.close()


def _base64_message(text: str) -> bytes:
    encoded = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    return (
        b"From: labo@demo.mssante.fr\r\nTo: " + BAL.encode() + b"\r\nSubject: base64\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--XX--\r\n"
    )


def _key(program: str) -> SearchKey:
    return parse_command(f"a SEARCH {program}".encode()).args.key  # type: ignore[union-attr,no-any-return]


async def test_body_search_reads_chunks_until_the_first_hit(small_chunks: Runtime) -> None:
    store = small_chunks.store
    messages = [
        make_message(to=BAL, subject="early", body="hémoglobine glyquée\r\n" + FILLER),
        make_message(to=BAL, subject="late", body=FILLER + "glyquée en fin\r\n"),
        _base64_message(FILLER + "Hémoglobine GLYQUÉE au milieu\r\n" + FILLER),
        make_message(to=BAL, subject="nothing", body=FILLER),
        make_message(to=BAL, subject="Sujet glyquée", body=FILLER),
    ]
    for raw in messages:
        assert len(raw) > 4 * 4096  # several chunks each
        await store.deliver(raw, "labo@demo.mssante.fr", [BAL])
    folder = await store.folder(BAL, "INBOX")
    box = SelectedMailbox.from_rows(folder, await store.messages(folder.id), readonly=True)
    batch = [(n, box.entries[uid]) for n, uid in enumerate(box.uids, 1)]

    async def found(program: str) -> list[int]:
        return [n for n, _ in await search.select(store, _key(program), batch, box.exists, box.uids[-1])]

    assert await found('BODY "glyquée"') == [1, 2, 3]
    assert await found('TEXT "GLYQUÉE"') == [1, 2, 3, 5]  # the subject counts for TEXT
    assert await found("UNSEEN BODY absent") == []

    # The early hit leaves the rest of its body unread (and undecrypted).
    entry = box.entries[box.uids[0]]
    with Session(small_chunks.engine) as session:
        prefix = store.reader.prefixes(session, [entry.blob_id])[entry.blob_id]
        candidate = search.Candidate(
            1, entry, 5, 5, store.reader.meta(session, [entry.blob_id])[entry.blob_id], prefix
        )
        assert search.matches(_key('BODY "hémoglobine"'), candidate)
        assert not prefix.complete and len(prefix.data) == 4096
        # A miss reads it all, and finds what a whole read finds.
        assert not search.matches(_key("BODY absent"), candidate)
        assert prefix.complete and prefix.data == messages[0]


async def test_each_group_s_first_chunks_are_asked_for_before_the_previous_group_is_scanned(
    small_chunks: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body search reads the first chunks of a group of messages per statement. On a kept
    connection the next group's statement is sent before the current group is handed over (on
    PostgreSQL in pipeline mode, so the server reads while the scan decrypts); a message read
    further mid-scan (its later chunks, on the same connection) comes out whole while that
    statement is in flight, and the search finds what it finds one group at a time."""
    from mssante.store.kept import Kept, KeptConnections

    store = small_chunks.store
    kinds = [FILLER + "glyquée\r\n", "glyquée\r\n" + FILLER, FILLER]  # a hit last, first, none
    messages = [make_message(to=BAL, subject=f"m{i}", body=kinds[i % 3]) for i in range(7)]
    for raw in messages:
        await store.deliver(raw, "labo@demo.mssante.fr", [BAL])
    folder = await store.folder(BAL, "INBOX")
    box = SelectedMailbox.from_rows(folder, await store.messages(folder.id), readonly=True)
    blob_ids = [box.entries[uid].blob_id for uid in box.uids]
    groups = [blob_ids[i : i + 2] for i in range(0, len(blob_ids), 2)]

    events: list[str] = []
    send = Kept.send

    def counted(self: Kept, sql: str, params: dict[str, object] | None = None) -> object:
        events.append("sent")
        return send(self, sql, params)

    monkeypatch.setattr(Kept, "send", counted)
    connections = KeptConnections(small_chunks.engine)
    try:
        kept = connections.get()
        read: list[bytes] = []
        for number, prefixes in enumerate(store.reader.prefix_groups(kept, groups)):
            events.append(f"scan {number}")
            for blob_id in groups[number]:
                prefix = prefixes[blob_id]
                while prefix.grow():  # later chunks, asked for while the next group's are on their way
                    pass
                read.append(prefix.data)
    finally:
        connections.close()
    assert read == messages
    assert events == ["sent", "sent", "scan 0", "sent", "scan 1", "sent", "scan 2", "scan 3"]

    monkeypatch.setattr(search, "BODY_READ_AHEAD", 2)
    batch = [(n, box.entries[uid]) for n, uid in enumerate(box.uids, 1)]
    found = await search.select(store, _key('BODY "glyquée"'), batch, box.exists, box.uids[-1])
    assert [n for n, _ in found] == [1, 2, 4, 5, 7]


@pytest.mark.skipif(not PG_URL, reason="a PostgreSQL server is needed (MSSANTE_TEST_PG_URL)")
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_a_pipelined_body_search_goes_on_after_the_server_closed_its_connection(
    small_chunks: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL ends every connection of the store (a restart, a failover) between two body
    searches: the pipeline on the dead kept connection fails, and the search is run again on a
    new connection with the same hits."""
    monkeypatch.setattr(search, "BODY_READ_AHEAD", 2)
    store = small_chunks.store
    for i in range(5):
        body = FILLER + ("glyquée\r\n" if i % 2 else "")
        await store.deliver(make_message(to=BAL, subject=f"m{i}", body=body), "labo@demo.mssante.fr", [BAL])
    folder = await store.folder(BAL, "INBOX")
    box = SelectedMailbox.from_rows(folder, await store.messages(folder.id), readonly=True)
    batch = [(n, box.entries[uid]) for n, uid in enumerate(box.uids, 1)]

    async def found() -> list[int]:
        return [n for n, _ in await search.select(store, _key('BODY "glyquée"'), batch, 5, box.uids[-1])]

    assert await found() == [2, 4]
    from mssante.store.core import READ_THREADS
    from mssante.store.kept import KeptConnections

    # Every reader thread holds its kept connection, so the next search meets a dead one
    # whichever thread runs it.
    together = threading.Barrier(READ_THREADS, timeout=10)

    def hold(session: object) -> None:
        together.wait()

    await asyncio.gather(*(store.read(hold, kept=True) for _ in range(READ_THREADS)))

    dropped: list[bool] = []
    drop = KeptConnections.drop

    def counted(self: KeptConnections) -> None:
        dropped.append(True)
        drop(self)

    monkeypatch.setattr(KeptConnections, "drop", counted)
    admin = create_engine(PG_URL)
    with admin.connect() as conn:
        database = make_url(small_chunks.settings.database_url).database
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        )
    admin.dispose()
    await asyncio.sleep(0.2)
    assert await found() == [2, 4]
    assert dropped  # the search met the dead connection, and ran again on a new one
    assert await found() == [2, 4]
