"""``server.workers = 2``: two processes share the SMTP and IMAP ports of one demo server.

Seen from outside, over real sockets: connections land in both workers; a message accepted by
either wakes every IDLE session at once, whichever worker serves it (SQLite: the workers'
datagrams; PostgreSQL: NOTIFY); UIDs stay unique and consecutive when both deliver at once; a
worker killed is started again while the other keeps serving; SIGTERM stops them all, with
every acknowledged message kept.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.conftest import DEMO_ENV, PG_URL, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message

USER = "claire.martin@demo.mssante.fr"
WATCHERS = 8


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {**DEMO_ENV, "MSSANTE_SERVER__WORKERS": "2"}
    database = None
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("MSSANTE_TEST_PG_URL is not set")
        database, env["MSSANTE_DATABASE__URL"] = _create_pg_database()
    started = start_demo(tmp_path_factory.mktemp(f"workers-{request.param}") / "data", env)
    try:
        _wait_serving(started, 2)
        yield started
    finally:
        code = started.stop()
        if database is not None:
            _drop_pg_database(database)
        assert code == 0, f"server exited with {code}:\n{started.log()}"
        assert not _workers(started), "workers left running after the supervisor stopped"


def _wait_serving(server: DemoServer, count: int) -> None:
    """demo.json is written when the first worker serves; wait for the others too."""
    deadline = time.monotonic() + 30
    while server.log().count("listening: imaps") < count:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)


def _wait_gone(pid: int) -> None:
    """Until the process has exited (a zombie, or reaped): its sockets are closed."""
    deadline = time.monotonic() + 10
    status = Path(f"/proc/{pid}/status")
    while status.exists():
        try:
            if "\nState:\tZ" in status.read_text():
                return
        except OSError:
            return
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _workers(server: DemoServer) -> list[int]:
    path = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def _established_on(port: int, pids: list[int]) -> Counter[int]:
    """Established connections on local ``port`` held by each process (from /proc, no tool)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    held: Counter[int] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                held[inodes[fields[9]]] += 1
    return held


def _password(server: DemoServer) -> str:
    return str(server.account(USER)["password"])


def _imap(server: DemoServer) -> IMAPClient:
    context = ssl.create_default_context(cafile=server.ca_cert)
    client = IMAPClient("127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=context, timeout=10)
    client.login(USER, _password(server))
    return client


def _send(server: DemoServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        client.login(USER, _password(server))
        client.sendmail(USER, [USER], make_message(USER, USER, subject))


def _seen_within(client: IMAPClient, subject: str, count: int, timeout: float = 2.0) -> None:
    """A selected session hears of what another worker committed at its next command (the
    sibling's datagram may still be on its way when the 250 arrives)."""
    deadline = time.monotonic() + timeout
    while len(client.search(["SUBJECT", subject])) < count:
        assert time.monotonic() < deadline, client.search(["SUBJECT", subject])
        client.noop()
        time.sleep(0.02)


def _wait_for(client: IMAPClient, want: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        for response in client.idle_check(timeout=max(0.05, deadline - time.monotonic())):
            seen.append(response)
            if want in response:
                return
    raise AssertionError(f"no {want!r} within {timeout} s; saw {seen}")


def test_every_idle_session_hears_a_delivery_whichever_worker_took_it(server: DemoServer) -> None:
    workers = _workers(server)
    assert len(workers) == 2, workers
    watchers = [_imap(server) for _ in range(WATCHERS)]
    try:
        held = _established_on(server.port("imaps"), workers)
        # The kernel spreads connections over both workers (8 connections all in one worker
        # by chance: 1 in 128).
        assert len(held) == 2 and sum(held.values()) == WATCHERS, held
        for client in watchers:
            client.select_folder("INBOX")
            client.idle()
        for n in range(3):  # new SMTP connections: some land in each worker
            _send(server, f"heard by all {n}")
            for client in watchers:
                _wait_for(client, b"EXISTS", timeout=10.0)  # (CI: 2 cores, 4 test workers)
        for client in watchers:
            client.idle_done()
    finally:
        for client in watchers:
            client.logout()


def test_concurrent_deliveries_through_both_workers_get_distinct_consecutive_uids(
    server: DemoServer,
) -> None:
    reader = _imap(server)
    try:
        before = reader.select_folder("INBOX")[b"UIDNEXT"]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: _send(server, f"race {n}"), range(24)))
        _seen_within(reader, "race", 24)
        uids = sorted(reader.search(["SUBJECT", "race"]))
        assert len(uids) == 24
        assert uids == list(range(before, before + 24)), uids
    finally:
        reader.logout()


def test_a_killed_worker_is_started_again_and_the_other_keeps_serving(server: DemoServer) -> None:
    first, second = _workers(server)
    os.kill(second, signal.SIGKILL)
    _wait_gone(second)
    try:
        _send(server, "while one worker restarts")  # only the live worker listens meanwhile
    except (ConnectionResetError, smtplib.SMTPServerDisconnected):
        # A connection the kernel had queued for the dying worker is reset: a client tries
        # again, as after any temporary failure, and the live worker takes it.
        _send(server, "while one worker restarts")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = _workers(server)
        if len(now) == 2 and second not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker not started again: {_workers(server)}\n{server.log()[-3000:]}")
    assert first in _workers(server)
    _wait_serving(server, 3)  # the new worker has bound its ports
    reader = _imap(server)
    try:
        reader.select_folder("INBOX")
        assert reader.search(["SUBJECT", "while one worker restarts"])
        for n in range(6):
            _send(server, f"after restart {n}")
        _seen_within(reader, "after restart", 6)
    finally:
        reader.logout()
