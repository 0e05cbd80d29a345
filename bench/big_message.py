"""Memory a big message adds to the serving process, on every path a big message takes.

Usage:
    .venv/bin/python bench/big_message.py [--mib 20] [--rounds 2] [--out FILE]

Two operators of the trust space run as two real ``mssante serve --demo`` processes (SQLite
stores in a temporary directory, certificates from one test CA, each other's DKIM keys
published, static routes), exactly as ``tests/test_relay.py`` sets them up. Paths, each with
one ``--mib`` MiB message (text lines of 76 characters), in this order per round:

- ``submission``: op1's submission port (STARTTLS, AUTH PLAIN) to a local recipient, until
  the message is visible in the store;
- ``submission-remote`` then ``relay-out``: op1's submission to a recipient of op2 (DKIM
  signed, queued), then op1's outbound queue delivering it to op2 (until op1's queue is empty);
  the sampled series of op1 is split at the ``250``;
- ``relay-in``: the same message received by op2 from op1 (mutual TLS, DKIM verified);
- ``imap-fetch``: ``UID FETCH BODY.PEEK[]`` of the message over IMAPS from op2;
- ``imap-append``: ``APPEND`` of the message over IMAPS to op2 (a synchronising literal).

Every message that arrives is compared with what was sent (SHA-256 of the body; the server
adds trace fields on top). Memory = RSS of the serving process only (``/proc/<pid>/status``
VmRSS every 10 ms): growth = peak during the path minus the value just before it, and
``after_mib`` = the value 1 s after the path ended minus before (what is not given back).
The machine's load average is recorded before and after each path. It measures; nothing
passes or fails.

A first round runs on the fresh servers before the ``--rounds`` measured ones and is reported
apart (``fresh``), out of the medians, as the baselines of ``bench/smtp_ingest.py`` are taken
on warm servers: the first big message a fresh server takes also fills SQLite's page caches
from empty (2 MiB per connection by default, whatever the message's size; a database larger
than the demo's fills them with ordinary traffic). Later rounds may fill one again, and are
measured as they are: a commit from another connection (the node heartbeat, every 2 s) empties
a connection's cache, and the trim after IMAP logouts gives its pages back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import imaplib
import json
import os
import platform
import shutil
import smtplib
import sqlite3
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from bench._common import emit, free_port
from mssante.auth.devpki import DevCA
from mssante.config import load_settings
from mssante.db import make_engine
from mssante.smtp.dkim import txt_record
from tests.demo_server import DemoServer, start_demo
from tests.helpers import body_digest, operator_env, rss_kib

OP1, OP2 = "demo.mssante.fr", "autre.mssante.fr"
SENDER = f"claire.martin@{OP1}"
LOCAL = f"paul.durand@{OP1}"
REMOTE = f"paul.durand@{OP2}"


def make_message(size: int, label: str, to: str) -> bytes:
    """A text/plain message of exactly ``size`` bytes (CRLF lines of 76 characters)."""
    head = (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: big {label}\r\n"
        f"Date: {dt.datetime.now(dt.UTC).strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
        f"Message-ID: <{label}@bench.invalid>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    message = head + body[: size - len(head) - 2] + b"\r\n"
    assert len(message) == size
    return message


# -- the serving processes ---------------------------------------------------------------------


class Sampler:
    """VmRSS of one process every 10 ms in a thread: the series, to split at moments."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_kib(pid)
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.series.append((time.monotonic(), rss_kib(self.pid)))

    def stop(self) -> None:
        time.sleep(1.0)  # what is given back after the message
        self._stop.set()
        self._thread.join()

    def figures(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        values = [kib for at, kib in self.series if start <= at <= end] or [self.before]
        return {
            "rss_before_mib": round(self.before / 1024, 1),
            "rss_growth_mib": round((max(values) - self.before) / 1024, 1),
            "rss_after_mib": round((self.series[-1][1] - self.before) / 1024, 1),
        }


def start_operators(root: Path) -> tuple[DemoServer, DemoServer]:
    ca = DevCA.create(root / "ca", name="bench trust space CA")
    p1, p2 = free_port(), free_port()
    (root / "dkim-records").mkdir()
    servers = []
    for domain, port, routes in ((OP1, p1, {OP2: p2}), (OP2, p2, {OP1: p1})):
        data_dir = root / domain
        server = start_demo(data_dir, operator_env(ca, root, domain, port, routes))
        settings = load_settings(None, server={"data_dir": str(data_dir)})
        engine = make_engine(settings.database_url, writer=True)
        with Session(engine) as session, session.begin():
            for listed in (OP1, OP2):
                annuaire_service.add_operator_domain(session, domain=listed, actor="bench")
        engine.dispose()
        key = data_dir / "dkim" / f"{domain}.mssante.key"
        (root / "dkim-records" / f"mssante._domainkey.{domain}.txt").write_text(
            txt_record(key, domain, "mssante").split(" IN TXT ", 1)[1].strip('"')
        )
        servers.append(server)
    time.sleep(1.5)  # the annuaire caches notice the liste blanche
    return servers[0], servers[1]


def query(server: DemoServer, sql: str, *params: Any) -> Any:
    with sqlite3.connect(f"file:{server.data_dir / 'mssante.db'}?mode=ro", uri=True, timeout=30) as db:
        return db.execute(sql, params).fetchone()[0]


def inbox_count(server: DemoServer, bal: str) -> int:
    return int(
        query(
            server,
            "SELECT count(*) FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.bal = ? AND f.name = 'INBOX'",
            bal,
        )
    )


def wait(predicate: Callable[[], Any], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


# -- the paths -----------------------------------------------------------------------------------


def submit(server: DemoServer, message: bytes, to: str, ready: Callable[[], None]) -> None:
    """STARTTLS, AUTH, then ``ready()`` (an argon2id check takes 19 MiB of its own: the
    baseline is taken after it), then the message."""
    account = server.account(SENDER)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=300) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        client.login(account["login"], account["password"])
        ready()
        client.sendmail(SENDER, [to], message)


def imap(server: DemoServer, address: str) -> imaplib.IMAP4_SSL:
    account = server.account(address)
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=ssl.create_default_context(cafile=server.ca_cert)
    )
    client.login(account["login"], account["password"])
    return client


def fetch_last(server: DemoServer, address: str, ready: Callable[[], None] = lambda: None) -> bytes:
    client = imap(server, address)
    try:
        client.select("INBOX", readonly=True)
        _, [uids] = client.uid("SEARCH", "ALL")
        last = uids.split()[-1]
        ready()
        _, data = client.uid("FETCH", last, "(BODY.PEEK[])")
        return bytes(data[0][1])  # type: ignore[index]
    finally:
        client.logout()


def append(server: DemoServer, address: str, message: bytes, ready: Callable[[], None]) -> None:
    client = imap(server, address)
    try:
        ready()
        status, _ = client.append("INBOX", None, None, message)
        assert status == "OK", status
    finally:
        client.logout()


class Measure:
    """A sampler of one server started by ``ready()``, once the client is logged in."""

    def __init__(self, server: DemoServer) -> None:
        self.server = server
        self.sampler: Sampler | None = None
        self.load = (0.0, 0.0)

    def ready(self) -> None:
        self.load = (round(os.getloadavg()[0], 2), 0.0)
        self.sampler = Sampler(self.server.process.pid)
        time.sleep(0.2)

    def stop(self) -> Sampler:
        assert self.sampler is not None
        self.sampler.stop()
        self.load = (self.load[0], round(os.getloadavg()[0], 2))
        return self.sampler

    def row(self, start: float = 0.0, end: float = float("inf"), **extra: Any) -> dict[str, Any]:
        assert self.sampler is not None
        return {**self.sampler.figures(start, end), "loadavg_before_after": self.load, **extra}


def one_round(op1: DemoServer, op2: DemoServer, mib: int) -> dict[str, Any]:
    size = mib * 1024 * 1024
    out: dict[str, Any] = {}

    # submission to a local recipient
    local_message = make_message(size, uuid.uuid4().hex, LOCAL)
    before = inbox_count(op1, LOCAL)
    measure = Measure(op1)
    submit(op1, local_message, LOCAL, measure.ready)
    wait(lambda: inbox_count(op1, LOCAL) > before, "local delivery")
    measure.stop()
    out["submission"] = measure.row()

    # submission to op2, relay-out from op1, relay-in at op2
    message = make_message(size, uuid.uuid4().hex, REMOTE)
    before = inbox_count(op2, REMOTE)
    measure, relay_in = Measure(op1), Measure(op2)

    def both() -> None:
        relay_in.ready()
        measure.ready()

    submit(op1, message, REMOTE, both)
    acked = time.monotonic()
    wait(lambda: inbox_count(op2, REMOTE) > before, "relayed delivery")
    wait(lambda: int(query(op1, "SELECT count(*) FROM outbound_queue")) == 0, "empty queue")
    measure.stop()
    relay_in.stop()
    out["submission-remote"] = measure.row(end=acked)
    out["relay-out"] = measure.row(start=acked)
    out["relay-in"] = relay_in.row()

    # IMAP FETCH of what op2 received
    measure = Measure(op2)
    received = fetch_last(op2, REMOTE, measure.ready)
    measure.stop()
    same = body_digest(received) == body_digest(message)
    out["imap-fetch"] = measure.row(identical=same)
    out["relay-in"]["identical"] = same
    del received

    # IMAP APPEND
    before = inbox_count(op2, REMOTE)
    measure = Measure(op2)
    append(op2, REMOTE, message, measure.ready)
    measure.stop()
    out["imap-append"] = measure.row(stored=inbox_count(op2, REMOTE) == before + 1)
    out["imap-append"]["identical"] = fetch_last(op2, REMOTE) == message
    out["submission"]["identical"] = body_digest(fetch_last(op1, LOCAL)) == body_digest(local_message)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=20, help="size of the message")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measured rounds, after one on the fresh servers"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "big_message",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg(),
        },
        "message_mib": args.mib,
    }
    root = Path(tempfile.mkdtemp(prefix="mssante-big-bench-"))
    servers: list[DemoServer] = []
    try:
        op1, op2 = start_operators(root)
        servers = [op1, op2]
        rounds = []
        for n in range(args.rounds + 1):
            found = one_round(op1, op2, args.mib)
            print(json.dumps({"round": n, **found}), file=sys.stderr)
            rounds.append(found)
        fresh, rounds = rounds[0], rounds[1:]
        result["fresh"] = {
            path: {
                "rss_growth_mib": row["rss_growth_mib"],
                "growth_over_message_size": round(row["rss_growth_mib"] / args.mib, 2),
            }
            for path, row in fresh.items()
        }
        result["paths"] = {
            path: {
                "rss_growth_mib": {
                    "median": round(statistics.median(r[path]["rss_growth_mib"] for r in rounds), 1),
                    "min": min(r[path]["rss_growth_mib"] for r in rounds),
                    "max": max(r[path]["rss_growth_mib"] for r in rounds),
                },
                "growth_over_message_size": round(
                    statistics.median(r[path]["rss_growth_mib"] for r in rounds) / args.mib, 2
                ),
                "rounds": [r[path] for r in rounds],
            }
            for path in rounds[0]
        }
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    result["machine"]["loadavg_after"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
