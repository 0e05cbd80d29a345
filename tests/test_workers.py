"""``server.workers = 2``: two processes share the SMTP and IMAP ports of one demo server.

Seen from outside, over real sockets: connections land in both workers; a message accepted by
either wakes every IDLE session at once, whichever worker serves it (SQLite: the workers'
datagrams; PostgreSQL: NOTIFY); UIDs stay unique and consecutive when both deliver at once; a
worker killed is started again while the other keeps serving; SIGTERM stops them all, with
every acknowledged message kept. Worker 0's ``/metrics`` counts the traffic of both workers,
and goes on counting, never backwards, across a worker's restart; ``/health`` tells while a
worker is down.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from imapclient import IMAPClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEMO_ENV, PG_URL, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message

USER = "claire.martin@demo.mssante.fr"
WATCHERS = 8
T = TypeVar("T")


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


def _submission(server: DemoServer) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30)
    smtp.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
    smtp.login(USER, _password(server))
    return smtp


def _held_by_both(server: DemoServer, connect: Callable[[], T], port: str) -> list[T]:
    """At least WATCHERS logged-in connections, and more until both workers hold some (the
    kernel spreads them by a hash: all 8 in one worker happens 1 time in 128)."""
    clients = [connect() for _ in range(WATCHERS)]
    while len(_established_on(server.port(port), _workers(server))) < 2:
        assert len(clients) < 64, "every connection landed in the same worker"
        clients.append(connect())
    return clients


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
    watchers = _held_by_both(server, lambda: _imap(server), "imaps")
    try:
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
    """Worker 1 killed (SIGKILL: nothing of its own to save): worker 0 keeps serving and says so
    in ``/health``; once worker 1 is back, no count went backwards and every message and login
    since the kill is counted, worker 1's counts from before the kill still in the sum."""
    pids = {w["worker"]: w["pid"] for w in _http(server, "/health").json()["workers"]}
    first, second = pids[0], pids[1]
    for client in _held_by_both(server, lambda: _imap(server), "imaps"):  # worker 1 counts logins
        client.logout()
    assert (server.data_dir / "worker-metrics" / f"counter_{second}.db").exists()
    counted = _counted(_scrape(server))
    transactions, logins = _sent(server)
    os.kill(second, signal.SIGKILL)
    _wait_gone(second)
    health = _http(server, "/health").json()  # restarted after a second: still down now
    assert health["status"] == "degraded", health
    assert [(w["worker"], w["serving"]) for w in health["workers"]] == [(0, True), (1, False)]
    assert _value(_scrape(server), "mssante_worker_up", worker="1") == 0
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
    health = _http(server, "/health").json()
    assert health["status"] == "ok", health
    assert {w["pid"] for w in health["workers"]} == set(_workers(server))
    after = _counted(_scrape(server))
    backwards = {key: (v, after.get(key, 0.0)) for key, v in counted.items() if after.get(key, 0.0) < v}
    assert not backwards, backwards
    # 1 + 6 messages, each with its SMTP login, and the reader's IMAP login.
    assert _sent(server) == (transactions + 7, logins + 8)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _http(server: DemoServer, path: str) -> httpx.Response:
    context = ssl.create_default_context(cafile=server.ca_cert)
    answer = httpx.get(f"https://127.0.0.1:{server.port('http')}{path}", verify=context, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer


def _scrape(server: DemoServer) -> Samples:
    """Every sample of worker 0's ``/metrics`` (the default ``[metrics] allow``: loopback)."""
    found: Samples = {}
    for family in text_string_to_metric_families(_http(server, "/metrics").text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _counted(samples: Samples) -> Samples:
    """The samples of the counters and histograms (what must never go backwards)."""
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("mssante_") and key[0].endswith(("_total", "_count", "_sum", "_bucket"))
    }


def _sent(server: DemoServer) -> tuple[int, int]:
    """(transactions accepted on submission, successful logins): what the counters must show."""
    samples = _scrape(server)
    return (
        int(_value(samples, "mssante_smtp_transactions_total", listener="submission", result="2xx")),
        int(
            sum(
                v
                for (name, labels), v in samples.items()
                if name == "mssante_logins_total" and ("result", "success") in labels
            )
        ),
    )


def test_metrics_count_the_traffic_of_both_workers(server: DemoServer) -> None:
    workers = _workers(server)
    before = _scrape(server)
    smtps: list[smtplib.SMTP] = []
    watchers: list[IMAPClient] = []
    try:
        smtps = _held_by_both(server, lambda: _submission(server), "submission")
        watchers = _held_by_both(server, lambda: _imap(server), "imaps")
        for n, smtp in enumerate(smtps):
            smtp.sendmail(USER, [USER], make_message(USER, USER, f"counted {n}"))
        during = _scrape(server)
        # Sessions are summed over the workers; process metrics are per worker.
        assert _value(during, "mssante_smtp_sessions") == len(smtps)
        assert _value(during, "mssante_imap_sessions", state="authenticated") == len(watchers)
        for index in ("0", "1"):
            assert _value(during, "mssante_worker_up", worker=index) == 1
            assert _value(during, "process_resident_memory_bytes", worker=index) > 0
        assert not any(
            name == "process_resident_memory_bytes" and not dict(labels).get("worker")
            for name, labels in during
        )
    finally:
        for smtp in smtps:
            smtp.quit()
        for client in watchers:
            client.logout()
    after = _scrape(server)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    # As many as were opened: WATCHERS, more when the first ones all landed in one worker.
    sent, watched = len(smtps), len(watchers)
    assert moved("mssante_smtp_transactions_total", listener="submission", result="2xx") == sent
    assert moved("mssante_smtp_message_size_bytes_count", listener="submission") == sent
    assert moved("mssante_smtp_ack_seconds_count", listener="submission") == sent
    assert moved("mssante_logins_total", mechanism="PLAIN", listener="submission", result="success") == sent
    assert moved("mssante_imap_commands_total", command="LOGIN", status="OK") == watched
    assert _value(after, "mssante_smtp_sessions") == 0
    health = _http(server, "/health").json()
    assert health["status"] == "ok"
    assert [(w["worker"], w["serving"]) for w in health["workers"]] == [(0, True), (1, True)]
    assert {w["pid"] for w in health["workers"]} == set(workers)
