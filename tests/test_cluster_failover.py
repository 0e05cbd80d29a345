"""Database failover under SMTP load: two ``mssante serve`` nodes on a PostgreSQL primary with
a synchronous streaming-replication hot standby (libpq multi-host URL,
``target_session_attrs=read-write``); the primary crashes and the standby is promoted while
clients submit through both nodes. Every message acknowledged with 250 is there afterwards,
once (twice only if an attempt's outcome was unknown to the client and it retried); sessions
caught mid-transaction got a 4xx (never a 5xx) and their retry succeeded."""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message
from tests.mailbox import StoredMail
from tests.pgcluster import PrimaryStandby, missing_tools

USER = "claire.martin@demo.mssante.fr"
TO = "paul.durand@demo.mssante.fr"
RELAXED = {
    "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "200",
    "MSSANTE_AUTH__BRUTEFORCE__BASE_DELAY_SECONDS": "0.01",
    "MSSANTE_AUTH__BRUTEFORCE__MAX_DELAY_SECONDS": "0.05",
    "MSSANTE_AUTH__BRUTEFORCE__IP_LOCKOUT_FAILURES": "100000",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrimaryStandby, list[DemoServer]]]:
    why = missing_tools()
    if why:
        pytest.skip(f"cannot make local PostgreSQL clusters: {why}")
    pg = PrimaryStandby()
    nodes: list[DemoServer] = []
    try:
        pg.start()
        data = tmp_path_factory.mktemp("failover") / "data"
        for name in ("a", "b"):
            env = {
                **RELAXED,
                "MSSANTE_DATABASE__URL": pg.url(),
                "MSSANTE_SERVER__HOSTNAME": f"node-{name}.test",
            }
            nodes.append(start_demo(data, env))
        yield pg, nodes
    finally:
        for node in nodes:
            node.stop()
        pg.stop()


@dataclass
class Outcomes:
    acked: dict[str, float] = field(default_factory=dict)  # subject -> time of its 250
    unknown: Counter[str] = field(default_factory=Counter)  # attempts that may have committed
    replies: Counter[str] = field(default_factory=Counter)  # refusals seen, by code
    lock: threading.Lock = field(default_factory=threading.Lock)


def _password(data_dir: Path) -> str:
    accounts = json.loads((data_dir / "demo.json").read_text())["accounts"]
    return str(next(a["password"] for a in accounts if a["address"] == USER))


def _submit(port: int, ca: str, password: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=ssl.create_default_context(cafile=ca))
        client.login(USER, password)
        client.sendmail(USER, [TO], make_message(USER, TO, subject))


def _client(node: DemoServer, password: str, out: Outcomes, stop: threading.Event) -> None:
    """A sending MTA: each message retried until acknowledged, as RFC 5321 asks after a 4xx."""
    while not stop.is_set():
        subject = f"failover {uuid.uuid4().hex}"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                _submit(node.port("submission"), node.ca_cert, password, subject)
            except smtplib.SMTPResponseException as exc:
                with out.lock:
                    out.replies[str(exc.smtp_code)] += 1
                    if isinstance(exc, smtplib.SMTPDataError):
                        out.unknown[subject] += 1  # refused at end of data: nothing committed, or ...
                time.sleep(0.2)
                continue
            except (OSError, smtplib.SMTPException):
                with out.lock:
                    out.replies["disconnect"] += 1
                    out.unknown[subject] += 1  # the connection broke: the outcome is unknown
                time.sleep(0.2)
                continue
            with out.lock:
                out.acked[subject] = time.monotonic()
            break


def test_promoting_the_standby_under_load_loses_no_acknowledged_message(
    cluster: tuple[PrimaryStandby, list[DemoServer]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg, nodes = cluster
    password = _password(nodes[0].data_dir)
    out, stop = Outcomes(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(node, password, out, stop)) for node in nodes for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        before = len(out.acked)
        assert before > 0, "no message acknowledged before the failover"
        failed_at = time.monotonic()
        pg.fail_over()
        promoted_at = time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not [t for t in out.acked.values() if t > promoted_at]:
            time.sleep(0.2)
        time.sleep(2)  # both nodes at work on the new primary
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    after = [t for t in out.acked.values() if t > promoted_at]
    assert after, f"nothing acknowledged after the promotion; refusals: {dict(out.replies)}"
    # Mid-transaction sessions were refused with a 4xx or cut; never a 5xx (a bounce).
    assert all(code.startswith("4") or code == "disconnect" for code in out.replies), dict(out.replies)
    gap = min(after) - max([t for t in out.acked.values() if t <= failed_at] or [failed_at])
    print(f"acknowledged {len(out.acked)}, refusals {dict(out.replies)}, gap {gap:.2f} s")

    monkeypatch.setenv("MSSANTE_DATABASE__URL", pg.url())
    view = StoredMail(nodes[0].data_dir)
    try:
        stored = Counter(
            line.split(b":", 1)[1].strip().decode()
            for raw in view.messages(TO)
            for line in raw.split(b"\r\n")
            if line.startswith(b"Subject: failover ")
        )
    finally:
        view.close()
    missing = [s for s in out.acked if stored[s] == 0]
    assert not missing, f"{len(missing)} acknowledged messages lost"
    extra = {s: n for s, n in stored.items() if s in out.acked and n > 1 + out.unknown[s]}
    assert not extra, f"duplicated beyond the client's uncertain attempts: {extra}"
