"""``mssante demo peers``: two operators on one machine, through the public CLI: a message
crosses over mutual TLS, a DSN comes back for an unknown mailbox, and with the peer stopped
``mssante queue list`` shows the retries."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from tests.demo_server import PORT_KEYS
from tests.mailbox import StoredMail

SENDER = "claire.martin@demo.mssante.fr"
PEER = "autre.mssante.fr"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    env.update({key: "0" for key in PORT_KEYS})
    # Retries every second, and the message kept (not bounced) while the peer is away.
    env.update({"MSSANTE_RELAY__RETRY_SCHEDULE": "[1, 1, 600]", "MSSANTE_RELAY__POLL_SECONDS": "0.5"})
    return env


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    data = tmp_path_factory.mktemp("peers") / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "mssante", "--data-dir", str(data), "demo", "peers"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def ready() -> dict[str, Any] | None:
        assert process.poll() is None, process.stdout and process.stdout.read()
        path = data / "demo.json"
        doc = json.loads(path.read_text()) if path.exists() else {}
        return doc if doc.get("peers") else None

    try:
        yield _wait(ready, "both operators", timeout=120), data
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0


def _send(doc: dict[str, Any], to: str, subject: str) -> None:
    account = next(a for a in doc["accounts"] if a["address"] == SENDER)
    port = next(item["port"] for item in doc["listeners"] if item["name"] == "submission")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.starttls(context=ssl.create_default_context(cafile=doc["ca_cert"]))
        client.login(account["login"], account["password"])
        text = f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n\r\nBonjour.\r\n"
        client.sendmail(SENDER, [to], text.encode())


def _mail(data_dir: Path, bal: str, subject: str) -> list[bytes]:
    view = StoredMail(data_dir)
    try:
        return view.with_subject(bal, subject)
    finally:
        view.close()


def _dsns(data_dir: Path, about: str) -> list[bytes]:
    view = StoredMail(data_dir)
    try:
        return [
            m for m in view.messages(SENDER) if b"report-type=delivery-status" in m and about.encode() in m
        ]
    finally:
        view.close()


def test_demo_json_lists_the_peer(peers: tuple[dict[str, Any], Path]) -> None:
    doc, _ = peers
    [peer] = doc["peers"]
    assert peer["domain"] == PEER and Path(peer["data_dir"]).is_dir()
    assert {a["address"] for a in peer["accounts"]} >= {f"paul.durand@{PEER}"}
    assert {item["name"] for item in peer["listeners"]} >= {"submission", "imaps", "relay"}
    assert peer["ca_cert"] == doc["ca_cert"]  # one development CA for both
    back = json.loads((Path(peer["data_dir"]) / "demo.json").read_text())
    assert back["peers"][0]["domain"] == "demo.mssante.fr"


def test_mail_crosses_then_a_dsn_then_retries_while_the_peer_is_stopped(
    peers: tuple[dict[str, Any], Path],
) -> None:
    doc, data = peers
    peer = doc["peers"][0]
    peer_dir = Path(peer["data_dir"])
    subject = f"entre operateurs {uuid.uuid4().hex[:8]}"
    _send(doc, f"paul.durand@{PEER}", subject)
    [message] = _wait(lambda: _mail(peer_dir, f"paul.durand@{PEER}", subject), "delivery to the peer")
    assert b"DKIM-Signature:" in message and b"Authentication-Results:" in message

    unknown = f"inconnu {uuid.uuid4().hex[:8]}"
    _send(doc, f"personne@{PEER}", unknown)
    [report] = _wait(lambda: _dsns(data, unknown), "DSN for an unknown mailbox")
    assert b"Action: failed" in report and f"personne@{PEER}".encode() in report

    os.kill(peer["pid"], signal.SIGTERM)  # the other operator goes away
    _wait(lambda: _gone(peer["pid"]), "peer stopped")
    waiting = f"en attente {uuid.uuid4().hex[:8]}"
    _send(doc, f"paul.durand@{PEER}", waiting)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}

    def retried() -> dict[str, Any] | None:
        listed = subprocess.run(
            [sys.executable, "-m", "mssante", "--data-dir", str(data), "queue", "list", "--json"],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        entries = [e for e in json.loads(listed.stdout)["entries"] if e["domain"] == PEER]
        return entries[0] if entries and entries[0]["attempts"] >= 2 else None

    entry = _wait(retried, "two failed attempts in the queue")
    assert entry["recipients"] == [f"paul.durand@{PEER}"] and entry["last_error"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
