"""How the store reads: streamed large results, small reads on asynchronous connections
(PostgreSQL), connections that the server closed, and the driver settings of the engines."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from mssante.config import load_settings
from mssante.db import driver_connect_args, make_engine
from mssante.runtime import Runtime
from mssante.sqlfast import adapt, numbered
from mssante.store import kept
from mssante.store.blobs import rows_of
from mssante.store.pgread import AsyncReads
from tests.conftest import PG_URL
from tests.helpers import make_message

DOC = "dr.durand@demo.mssante.fr"


async def _fill(runtime: Runtime, n: int) -> list[bytes]:
    raws = [make_message(subject=f"lecture {i}", size=2000 + i) for i in range(n)]
    await asyncio.gather(*(runtime.store.deliver(raw, "dr.martin@demo.mssante.fr", [DOC]) for raw in raws))
    return raws


async def test_a_large_range_streamed_in_chunks_gives_the_rows_of_one_fetch(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder's messages arrive in chunks of STREAM_ROWS (libpq's chunked rows on
    PostgreSQL, one statement stepped on SQLite): with chunks of 3, eleven messages come out in
    order, the same as a plain query gives."""
    monkeypatch.setattr(kept, "STREAM_ROWS", 3)
    await _fill(runtime, 11)
    inbox = await runtime.store.folder(DOC, "INBOX")
    rows = await runtime.store.messages(inbox.id)
    since = await runtime.store.messages(inbox.id, since_uid=4)
    with Session(runtime.engine) as s:
        plain = rows_of(
            s,
            "SELECT uid, size, modseq, blob_id FROM messages WHERE folder_id = :f ORDER BY uid",
            {"f": inbox.id},
        )
    assert [(m.uid, m.size, m.modseq, m.blob_id) for m in rows] == [tuple(r) for r in plain]
    assert [m.uid for m in rows] == list(range(1, 12))
    assert [m.uid for m in since] == list(range(5, 12))
    assert all(m.internaldate.tzinfo is UTC for m in rows)


def test_an_abandoned_stream_on_sqlite_keeps_no_statement_open(tmp_path: Path) -> None:
    """A reader that stops early (its generator closed) must not keep the stepped statement,
    and with it a read snapshot of the WAL: while the stream is open another connection's
    truncating checkpoint is held back, once it is closed the checkpoint completes."""
    engine = make_engine(f"sqlite:///{tmp_path / 'stream.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
        conn.exec_driver_sql(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 5000) "
            "INSERT INTO t SELECT n FROM s"
        )
    reader = kept.Kept(engine)
    rows = reader.stream("SELECT n FROM t ORDER BY n")
    assert next(rows) == (1,)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (0)")  # a WAL frame the checkpoint must move
    with engine.connect() as other:
        busy = other.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()[0]
    assert busy == 1  # the open statement's snapshot holds the WAL
    rows.close()
    with engine.connect() as other:
        busy = other.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()[0]
    assert busy == 0
    reader.release()
    engine.dispose()


async def test_small_reads_give_what_the_large_ones_give(runtime: Runtime) -> None:
    """Body ranges, structures and folder rows read as small statements (the event loop's
    own connections on PostgreSQL) equal what the thread-side reads return."""
    raws = await _fill(runtime, 20)
    inbox = await runtime.store.folder(DOC, "INBOX")
    rows = await runtime.store.messages(inbox.id)
    by_size = {len(raw): raw for raw in raws}
    ids = [m.blob_id for m in rows]
    few = await runtime.store.meta(ids[:5], "envelope")  # small: one statement
    many = await runtime.store.meta(ids)  # large: a reader thread
    assert set(few) == set(ids[:5]) and set(many) == set(ids)
    assert all(few[b]["envelope"] == many[b]["envelope"] for b in few)
    for m in rows[:5]:
        raw = by_size[m.size]
        assert await runtime.store.body(m.blob_id, 0, m.size) == raw  # small
        assert await runtime.store.body(m.blob_id) == raw  # whole, in a thread
        assert await runtime.store.body(m.blob_id, 7, 7) == b""
        assert b"".join([p async for p in runtime.store.stream(m.blob_id, 10)]) == raw[10:]
    assert (await runtime.store.folder(DOC, "INBOX")).uidnext == 21


@pytest.mark.skipif(not PG_URL, reason="a PostgreSQL server is needed (MSSANTE_TEST_PG_URL)")
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_reads_and_writes_go_on_after_the_server_closed_every_connection(
    runtime: Runtime,
) -> None:
    """PostgreSQL terminates every connection of the store (a restart, a failover): the next
    small read reconnects its asynchronous connection, the next large read its kept one, and
    the writer's next transaction a live one (the kept connection's closed socket is seen
    before the batch, with no ping to the server before every transaction)."""
    raws = await _fill(runtime, 3)
    inbox = await runtime.store.folder(DOC, "INBOX")
    [first, *_] = await runtime.store.messages(inbox.id)
    assert await runtime.store.body(first.blob_id, 0, first.size) in raws
    admin = make_engine(runtime.settings.database_url)
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    admin.dispose()
    assert killed >= 3  # the writer's, a kept reader's, an asynchronous reader's at least
    await asyncio.sleep(0.2)  # the sockets see the server's goodbye
    assert await runtime.store.body(first.blob_id, 0, first.size) in raws
    assert (await runtime.store.folder(DOC, "INBOX")).uidnext == 4
    assert [m.uid for m in await runtime.store.messages(inbox.id)] == [1, 2, 3]
    uids = await runtime.store.deliver(make_message(subject="après"), "dr.martin@demo.mssante.fr", [DOC])
    assert uids == {DOC: 4}


def test_named_parameters_become_numbered_ones() -> None:
    """What libpq is sent: ``$n`` in order of first use, a name used twice is one parameter,
    and a cast (``::``) is left alone."""
    assert numbered("SELECT :b::int8, :a WHERE x = :b") == ("SELECT $1::int8, $2 WHERE x = $1", ("b", "a"))


async def test_small_reads_on_libpq_give_the_types_psycopg_gives(pg_server_url: str) -> None:
    """The asynchronous reads drive libpq themselves with psycopg's adapters: integers of any
    size, text, bytes, NULL, arrays and timestamps go and come back as through a cursor; a
    statement's error is psycopg's, and the next read runs on a fresh connection."""
    import psycopg

    engine = make_engine(pg_server_url)
    reads = AsyncReads(engine, size=1)
    try:
        sql = (
            "SELECT CAST(:small AS int8) + 0, CAST(:big AS int8), CAST(:t AS text), CAST(:b AS bytea), "
            "CAST(:none AS text), 3 = ANY(:ids), now() > CAST(:at AS timestamptz)"
        )
        params = {"small": 1, "big": 1 << 62, "t": "é", "b": b"\0\xff", "none": None, "ids": [1, 3]}
        params["at"] = datetime(2020, 1, 1, tzinfo=UTC)
        with engine.connect() as conn:
            expected = conn.exec_driver_sql(adapt(sql, "postgresql"), params).all()
        for _ in range(8):  # past the threshold: prepared
            assert await reads.rows(sql, params) == [tuple(expected[0])]
        assert await reads.rows("SELECT 1 WHERE false") == []
        with pytest.raises(psycopg.errors.DivisionByZero):
            await reads.rows("SELECT 1 / CAST(:z AS int4)", {"z": 0})
        assert await reads.rows("SELECT CAST(:v AS int4)", {"v": 7}) == [(7,)]
    finally:
        reads.close()
        engine.dispose()


async def test_a_small_read_connection_is_watched_once_and_let_go_when_it_ends(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket of an asynchronous connection is registered with the loop once, not at each
    read. When the server ends the connection while it is idle, the loop reads the goodbye and
    stops watching it (it does not spin on a socket that stays readable), and the next read
    runs on a new connection. Once closed, no socket of the reads is left in the loop."""
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_reader = loop.add_reader

    def counted(fd: Any, callback: Any, *args: Any) -> None:
        watched.append(fd)
        add_reader(fd, callback, *args)

    monkeypatch.setattr(loop, "add_reader", counted)
    engine = make_engine(pg_server_url)
    reads = AsyncReads(engine, size=1)
    try:
        [(pid,)] = await reads.rows("SELECT pg_backend_pid()")  # connected (psycopg's own waits)
        fd, watched[:] = watched[-1], []
        pids = {(await reads.rows("SELECT pg_backend_pid()"))[0][0] for _ in range(10)}
        assert pids == {pid} and watched == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        busy = time.process_time()
        await asyncio.sleep(0.5)  # the goodbye arrives while nobody reads
        assert time.process_time() - busy < 0.2
        assert not loop.remove_reader(fd)  # already let go
        assert (await reads.rows("SELECT pg_backend_pid()"))[0][0] != pid
        assert watched
    finally:
        reads.close()
        engine.dispose()
    assert not any(loop.remove_reader(fd) for fd in watched)


@pytest.mark.parametrize(("threshold", "prepared"), [(None, 0), (0, 1), (5, 0)])
async def test_small_reads_are_prepared_after_the_threshold(
    pg_server_url: str, threshold: int | None, prepared: int
) -> None:
    """``database.prepare_threshold`` holds for the asynchronous reads as for psycopg's cursors:
    a text run more times than the threshold is prepared on the server, never with None."""
    engine = make_engine(pg_server_url, prepare_threshold=threshold)
    reads = AsyncReads(engine, size=1)
    try:
        for _ in range(3):
            assert await reads.rows("SELECT CAST(:v AS int4)", {"v": 1}) == [(1,)]
        found = await reads.rows(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :s", {"s": "SELECT CAST($1%"}
        )
        assert found == [(prepared,)]
    finally:
        reads.close()
        engine.dispose()


def test_prepare_threshold_reaches_the_driver(pg_server_url: str) -> None:
    """``database.prepare_threshold`` is psycopg's, on the pool's connections and on those
    opened beside it; -1 never prepares (PgBouncer in transaction mode)."""
    assert load_settings(None, database={"prepare_threshold": -1}).database.prepare_threshold == -1
    for threshold, expected in ((None, None), (-1, None), (0, 0), (5, 5)):
        engine = make_engine(pg_server_url, prepare_threshold=threshold)
        try:
            raw = engine.raw_connection()
            assert raw.driver_connection.prepare_threshold == expected  # type: ignore[union-attr]
            raw.close()
            assert driver_connect_args(engine)[1]["prepare_threshold"] == expected
        finally:
            engine.dispose()


def test_a_stale_pooled_connection_is_replaced_at_check_out(pg_server_url: str) -> None:
    """A pooled connection whose server side ended is not handed out: the check-out sees the
    socket closed and opens another (what the ping before every check-out did, without it)."""
    engine, other = make_engine(pg_server_url, pool_size=1), make_engine(pg_server_url)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with other.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        time.sleep(0.2)  # the socket sees the server's goodbye
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        engine.dispose()
        other.dispose()


async def test_an_idle_loop_polls_for_a_small_answer_without_sleeping(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing else for the loop to do, a small read's answer is polled for in place (no
    wait on the loop: on this kind of machine the wake-up after a sleep cost half a primary-key
    read); with another callback ready to run, the read waits on the loop as before and that
    callback runs meanwhile."""
    from mssante.store import pgread

    monkeypatch.setattr(pgread, "BUSY_WAIT_S", 2.0)  # a slow CI machine's answer still counts
    waits: list[bool] = []
    wait = pgread._Link._wait

    async def counted(self: Any, write: bool = False) -> None:
        waits.append(write)
        await wait(self, write)

    monkeypatch.setattr(pgread._Link, "_wait", counted)
    engine = make_engine(pg_server_url)
    reads = AsyncReads(engine, size=1)
    try:
        await reads.rows("SELECT 1")  # connected
        waits.clear()
        for i in range(20):
            assert await reads.rows("SELECT CAST(:i AS int4), repeat('x', 20000)", {"i": i}) == [
                (i, "x" * 20000)
            ]
        assert waits == []
        ran: list[bool] = []
        asyncio.get_running_loop().call_soon(ran.append, True)
        assert await reads.rows("SELECT 2") == [(2,)]
        assert waits and ran == [True]
    finally:
        reads.close()
        engine.dispose()


@pytest.mark.parametrize("other", ["socket", "thread"])
async def test_polling_for_an_answer_gives_way_to_anything_else_for_the_loop(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """A slow statement polled for in place does not hold the loop: bytes for another
    connection, or a worker thread's callback, are served at once (the poll watches the loop's
    selector too); the statement's answer still arrives. A timer is late by the poll's bound
    at most."""
    import socket
    import threading

    from mssante.store import pgread

    loop = asyncio.get_running_loop()
    engine = make_engine(pg_server_url)
    reads = AsyncReads(engine, size=1)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    served: list[float] = []
    try:
        await reads.rows("SELECT 1")
        if other == "socket":

            async def serve() -> None:
                await loop.sock_recv(ours, 10)
                served.append(time.monotonic())

            waiting = asyncio.ensure_future(serve())
            await asyncio.sleep(0.01)  # the other connection's wait is set up, the loop idle
            threading.Timer(0.1, theirs.send, (b"x",)).start()
        else:
            mark = lambda: served.append(time.monotonic())  # noqa: E731
            threading.Timer(0.1, loop.call_soon_threadsafe, (mark,)).start()
        monkeypatch.setattr(pgread, "BUSY_WAIT_S", 30.0)
        started = time.monotonic()
        assert await reads.rows("SELECT 3 FROM pg_sleep(1)") == [(3,)]
        assert time.monotonic() - started >= 1
        assert served and served[0] - started < 0.8
        if other == "socket":
            await waiting
        monkeypatch.setattr(pgread, "BUSY_WAIT_S", 0.0003)
        fired: list[float] = []
        started = time.monotonic()
        loop.call_later(0.1, lambda: fired.append(time.monotonic()))
        assert await reads.rows("SELECT 4 FROM pg_sleep(1)") == [(4,)]
        assert fired and fired[0] - started < 0.8
    finally:
        ours.close()
        theirs.close()
        reads.close()
        engine.dispose()
