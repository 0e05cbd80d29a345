"""Two ``mssante serve`` nodes on one PostgreSQL database: a change committed through node A
wakes an IDLE session on node B within a second (LISTEN/NOTIFY), for new messages, flag
changes and expunges alike; a SELECTed session on B sees them at its next command."""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mssante.store.feed import FolderChange
from mssante.store.pgfeed import MAX_PAYLOAD, parse_payload, payloads
from tests.conftest import PG_URL, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message

USER = "claire.martin@demo.mssante.fr"


def test_payloads_name_each_folder_once_with_its_highest_modseq() -> None:
    notes = [
        FolderChange(7, 3, "append", 1),
        FolderChange(7, 5, "flags", 1, "\\Seen"),
        FolderChange(2, 9, "expunge", 4),
    ]
    assert payloads("n1", notes) == ["n1 2:9 7:5"]
    assert parse_payload("n1 2:9 7:5") == ("n1", [(2, 9), (7, 5)])
    assert payloads("n1", []) == []
    # Garbage in a payload (another program on the channel) is skipped, not fatal.
    assert parse_payload("x 1:2 ; DROP 3:z :4 5:6") == ("x", [(1, 2), (5, 6)])


def test_a_large_batch_is_split_under_postgresql_payload_limit() -> None:
    notes = [FolderChange(1_000_000 + i, 123456, "append", 1) for i in range(2000)]
    out = payloads("node", notes)
    assert len(out) > 1 and all(len(p) <= MAX_PAYLOAD for p in out)
    heard = [f for p in out for f in parse_payload(p)[1]]
    assert sorted(heard) == sorted((n.folder_id, n.modseq) for n in notes)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoServer, DemoServer]]:
    if not PG_URL:
        pytest.skip("MSSANTE_TEST_PG_URL is not set: the cluster feed needs PostgreSQL")
    name, url = _create_pg_database()
    data = tmp_path_factory.mktemp("cluster") / "data"
    started: list[DemoServer] = []
    try:
        for node in ("a", "b"):
            env = {"MSSANTE_DATABASE__URL": url, "MSSANTE_SERVER__HOSTNAME": f"node-{node}.demo.mssante.fr"}
            started.append(start_demo(Path(data), env=env))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()
        _drop_pg_database(name)


def _password(node: DemoServer) -> str:
    """The password of the last node started: its demo set-up wrote the shared database."""
    accounts = json.loads((node.data_dir / "demo.json").read_text())["accounts"]
    return str(next(a["password"] for a in accounts if a["address"] == USER))


def _imap(node: DemoServer) -> IMAPClient:
    context = ssl.create_default_context(cafile=node.ca_cert)
    client = IMAPClient("127.0.0.1", port=node.port("imaps"), ssl=True, ssl_context=context, timeout=10)
    client.login(USER, _password(node))
    return client


def _deliver(node: DemoServer, subject: str) -> float:
    """Submit through ``node``; the time the 250 came back."""
    with smtplib.SMTP("127.0.0.1", node.port("submission"), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=node.ca_cert))
        client.login(USER, _password(node))
        client.sendmail(USER, [USER], make_message(USER, USER, subject))
        return time.monotonic()


def _wait_idle(client: IMAPClient, want: bytes, timeout: float = 3.0) -> tuple[float, list[Any]]:
    """Responses until one of kind ``want`` arrives; the time it did."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for response in client.idle_check(timeout=max(0.05, deadline - time.monotonic())):
            seen.append(response)
            if want in response:
                return time.monotonic(), seen
    raise AssertionError(f"no {want!r} within {timeout} s; saw {seen}")


def test_idle_on_node_b_hears_what_node_a_commits(nodes: tuple[DemoServer, DemoServer]) -> None:
    a, b = nodes
    # demo.json is rewritten by each node: both share the data directory, accounts and keys.
    assert a.port("imaps") != b.port("imaps")
    watcher = _imap(b)
    actor = _imap(a)
    try:
        watcher.select_folder("INBOX")
        actor.select_folder("INBOX")
        watcher.idle()
        acked = _deliver(a, "cross-node")
        woke, _ = _wait_idle(watcher, b"EXISTS")
        assert woke - acked < 1.0, f"IDLE on node B woke {woke - acked:.3f} s after the 250 on node A"

        uid = max(actor.search(["SUBJECT", "cross-node"]))
        actor.add_flags([uid], [b"\\Flagged"])
        _, seen = _wait_idle(watcher, b"FETCH")
        assert any(b"\\Flagged" in str(r).encode() for r in seen), seen

        actor.add_flags([uid], [b"\\Deleted"])
        actor.expunge()
        _wait_idle(watcher, b"EXPUNGE")
        watcher.idle_done()

        # Not idling: a SELECTed session on B hears of A's next commit at its next command.
        _deliver(a, "seen at next command")
        time.sleep(0.5)
        responses = watcher.noop()[1]
        assert any(b"EXISTS" in r for r in responses if isinstance(r, tuple)), responses
    finally:
        for client in (watcher, actor):
            client.logout()
