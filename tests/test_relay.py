"""Operator-to-operator relay: two real ``mssante serve`` processes with their own domains, data
directories and certificates from a shared test CA, plus scripted peers for the failure cases."""

from __future__ import annotations

import json
import os
import random
import signal
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from annuaire.whitelist import import_whitelist
from mssante.auth.devpki import DevCA
from mssante.config import load_settings
from mssante.db import make_engine
from mssante.smtp.dkim import txt_record
from tests.demo_server import DemoServer, start_demo
from tests.helpers import operator_env
from tests.mailbox import StoredMail

OP1, OP2 = "demo.mssante.fr", "autre.mssante.fr"
FAKE = "scripted.mssante.fr"
SENDER = f"claire.martin@{OP1}"
# Temporary failures retried after 1, 1 and 2 seconds (the production schedule is in minutes).
QUICK_RETRIES = {"MSSANTE_RELAY__RETRY_SCHEDULE": "[1, 1, 2]"}


def free_port() -> int:
    """A free port below the kernel's range of ephemeral ports. A peer of these tests is
    stopped and started again on its port; while it is down, a port of that range may be handed
    to an outgoing connection meanwhile (the other operator's retries to that very port can
    even connect to themselves: TCP's simultaneous open), and the restart would find it taken."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def whitelist(data_dir: Path, *domains: str) -> None:
    settings = load_settings(None, server={"data_dir": str(data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    with Session(engine) as session, session.begin():
        for domain in domains:
            annuaire_service.add_operator_domain(session, domain=domain, actor="test")
    engine.dispose()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.2)


def send(server: DemoServer, sender: str, to: str, subject: str) -> None:
    account = server.account(sender)
    ctx = ssl.create_default_context(cafile=server.ca_cert)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=60) as client:
        client.starttls(context=ctx)
        client.login(account["login"], account["password"])
        text = (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
            "\r\nBonjour confrère.\r\n"
        )
        client.sendmail(sender, [to], text.encode())


@dataclass
class Operator:
    domain: str
    data_dir: Path
    env: dict[str, str]
    relay_port: int
    server: DemoServer | None = None

    def start(self) -> DemoServer:
        self.server = start_demo(self.data_dir, self.env)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            assert self.server.stop() == 0, self.server.log()
            self.server = None

    def kill(self) -> None:
        assert self.server is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait()
        self.server = None

    def mail(self) -> StoredMail:
        return StoredMail(self.data_dir)


@dataclass
class World:
    ca: DevCA
    root: Path
    op1: Operator
    op2: Operator
    fake_port: int
    extra: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("relay")
    ca = DevCA.create(root / "shared-ca", name="test trust space CA")
    p1, p2, fake = free_port(), free_port(), free_port()
    (root / "dkim-records").mkdir()
    op1 = Operator(
        OP1, root / "op1", {**operator_env(ca, root, OP1, p1, {OP2: p2, FAKE: fake}), **QUICK_RETRIES}, p1
    )
    op2 = Operator(OP2, root / "op2", {**operator_env(ca, root, OP2, p2, {OP1: p1}), **QUICK_RETRIES}, p2)
    for op in (op1, op2):
        op.start()
        whitelist(op.data_dir, OP1, OP2, FAKE)
        # Publish the operator's DKIM key where the other one looks it up.
        key = op.data_dir / "dkim" / f"{op.domain}.mssante.key"
        (root / "dkim-records" / f"mssante._domainkey.{op.domain}.txt").write_text(
            txt_record(key, op.domain, "mssante").split(" IN TXT ", 1)[1].strip('"')
        )
    world = World(ca, root, op1, op2, fake)
    try:
        yield world
    finally:
        for op in (op1, op2):
            if op.server is not None:
                op.stop()


def queue_of(op: Operator) -> list[tuple[str, list[str], bytes]]:
    view = op.mail()
    try:
        return view.queued()
    finally:
        view.close()


def delivered(op: Operator, bal: str, subject: str) -> list[bytes]:
    view = op.mail()
    try:
        return view.with_subject(bal, subject)
    finally:
        view.close()


def test_two_operators_exchange_mail_both_ways_over_mutual_tls(world: World) -> None:
    assert world.op1.server is not None and world.op2.server is not None
    there = f"Avis {uuid.uuid4().hex[:8]}"
    send(world.op1.server, SENDER, f"paul.durand@{OP2}", there)
    [raw] = wait_until(lambda: delivered(world.op2, f"paul.durand@{OP2}", there), what="delivery to op2")
    assert b"with ESMTPS" in raw and b"TLSv1." in raw
    assert f"Authentication-Results: mx.{OP2}; dkim=pass header.d={OP1}".encode() in raw
    back = f"Reponse {uuid.uuid4().hex[:8]}"
    send(world.op2.server, f"paul.durand@{OP2}", SENDER, back)
    wait_until(lambda: delivered(world.op1, SENDER, back), what="delivery back to op1")
    wait_until(lambda: not queue_of(world.op1) and not queue_of(world.op2), what="empty queues")


def test_peer_down_then_up_delivers_once(world: World) -> None:
    assert world.op1.server is not None
    world.op2.stop()
    subject = f"Pendant la panne {uuid.uuid4().hex[:8]}"
    send(world.op1.server, SENDER, f"paul.durand@{OP2}", subject)
    entry = wait_until(
        lambda: [q for q in queue_of(world.op1) if subject.encode() in q[2]], what="queued entry"
    )
    assert entry[0][0] == OP2
    time.sleep(2.5)  # a few failed attempts
    world.op2.start()
    wait_until(lambda: delivered(world.op2, f"paul.durand@{OP2}", subject), what="delivery after restart")
    wait_until(lambda: not queue_of(world.op1), what="empty queue")
    time.sleep(1.5)
    assert len(delivered(world.op2, f"paul.durand@{OP2}", subject)) == 1


class ScriptedPeer:
    """An SMTP peer with TLS (certificate for FAKE from the shared CA) and scripted replies."""

    def __init__(self, ca: DevCA, root: Path, port: int, *, foreign_ca: bool = False) -> None:
        self.replies: list[str] = []
        self.received: list[bytes] = []
        issuer = (
            DevCA.create(root / f"foreign-{uuid.uuid4().hex[:6]}", name="foreign CA") if foreign_ca else ca
        )
        certs = root / f"pki-fake-{uuid.uuid4().hex[:6]}"
        certs.mkdir()
        issued = issuer.issue_server(certs, [FAKE, "localhost"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(issued.cert_file, issued.key_file)
        self.controller = Controller(
            self, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True
        )

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.replies.pop(0) if self.replies else "250 2.0.0 OK"
        if reply.startswith("250"):
            self.received.append(envelope.original_content)
        return reply

    def __enter__(self) -> ScriptedPeer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def test_temporary_failure_then_success(world: World) -> None:
    assert world.op1.server is not None
    subject = f"4xx puis 250 {uuid.uuid4().hex[:8]}"
    with ScriptedPeer(world.ca, world.root, world.fake_port) as peer:
        peer.replies = ["451 4.3.0 Try again later", "250 2.0.0 Queued"]
        send(world.op1.server, SENDER, f"someone@{FAKE}", subject)
        wait_until(lambda: peer.received, what="second attempt accepted")
        wait_until(lambda: not queue_of(world.op1), what="empty queue")
    assert len(peer.received) == 1 and subject.encode() in peer.received[0]
    assert b"DKIM-Signature:" in peer.received[0]


def _dsns(op: Operator, about: str) -> list[bytes]:
    view = op.mail()
    try:
        return [
            m for m in view.messages(SENDER) if b"report-type=delivery-status" in m and about.encode() in m
        ]
    finally:
        view.close()


def test_permanent_failure_returns_a_dsn_to_the_sender(world: World) -> None:
    assert world.op1.server is not None
    subject = f"5xx {uuid.uuid4().hex[:8]}"
    with ScriptedPeer(world.ca, world.root, world.fake_port) as peer:
        peer.replies = ["550 5.1.1 No such user here"]
        send(world.op1.server, SENDER, f"nobody@{FAKE}", subject)
        [report] = wait_until(lambda: _dsns(world.op1, subject), what="DSN")
    assert b"Action: failed" in report and b"Status: 5.1.1" in report
    assert f"Final-Recipient: rfc822; nobody@{FAKE}".encode() in report
    assert b"Diagnostic-Code: smtp; 550 5.1.1 No such user here" in report
    assert b"Bonjour confr" not in report  # the original body is never copied into the DSN
    assert not queue_of(world.op1)


def test_peer_certificate_from_another_ca_is_never_trusted(world: World) -> None:
    assert world.op1.server is not None
    subject = f"CA inconnue {uuid.uuid4().hex[:8]}"
    with ScriptedPeer(world.ca, world.root, world.fake_port, foreign_ca=True) as peer:
        send(world.op1.server, SENDER, f"someone@{FAKE}", subject)
        [report] = wait_until(lambda: _dsns(world.op1, subject), what="DSN")
        assert peer.received == []
    assert b"Status: 5.7.10" in report and b"certificate verify failed" in report


def _relay_in(op: Operator, cert: Path, key: Path, ca: Path) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    with smtplib.SMTP("127.0.0.1", op.relay_port, timeout=30) as client:
        client.starttls(context=ctx)
        client.ehlo("peer.test")
        return client.mail(f"x@{FAKE}")


def test_relay_in_refuses_unlisted_operators_and_foreign_certificates(world: World) -> None:
    certs = world.root / "clients"
    unlisted = world.ca.issue_client(certs, "mx.tiers.mssante.fr")
    code, reply = _relay_in(world.op2, unlisted.cert_file, unlisted.key_file, world.ca.cert_file)
    assert code == 550 and b"names no whitelisted operator domain" in reply
    foreign = DevCA.create(world.root / "foreign-client-ca", name="foreign CA")
    stranger = foreign.issue_client(certs / "foreign", f"mx.{OP1}")
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        _relay_in(world.op2, stranger.cert_file, stranger.key_file, world.ca.cert_file)


def test_unlisted_sender_operator_gets_its_mail_back(world: World) -> None:
    """op2 stops whitelisting op1: op1's message is refused at relay-in and returned with a DSN."""
    assert world.op1.server is not None
    settings = load_settings(None, server={"data_dir": str(world.op2.data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    listed = world.root / "liste-blanche.xml"

    def publish(*domains: str) -> None:
        names = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
        listed.write_text(
            f'<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">{names}</ListeBlanche>'
        )
        import_whitelist(engine, listed, actor="test")

    publish(OP2, FAKE)  # a new liste blanche without op1
    try:
        time.sleep(1.2)  # op2's annuaire cache notices within a second
        subject = f"hors liste {uuid.uuid4().hex[:8]}"
        send(world.op1.server, SENDER, f"paul.durand@{OP2}", subject)
        [report] = wait_until(lambda: _dsns(world.op1, subject), what="DSN")
        assert b"Status: 5.7.1" in report and b"no whitelisted operator domain" in report
    finally:
        publish(OP1, OP2, FAKE)
        engine.dispose()
        time.sleep(1.2)


def test_sigkill_with_queued_mail_then_restart_delivers_each_exactly_once(world: World) -> None:
    assert world.op1.server is not None
    world.op2.stop()
    subjects = [f"crash {uuid.uuid4().hex[:8]} {i}" for i in range(3)]
    for subject in subjects:
        send(world.op1.server, SENDER, f"paul.durand@{OP2}", subject)
    wait_until(lambda: len(queue_of(world.op1)) >= 3, what="three queued entries")
    world.op1.kill()
    world.op2.start()
    world.op1.start()
    for subject in subjects:
        wait_until(lambda s=subject: delivered(world.op2, f"paul.durand@{OP2}", s), what=subject)  # type: ignore[misc]
    wait_until(lambda: not queue_of(world.op1), what="empty queue")
    time.sleep(1.5)
    for subject in subjects:
        assert len(delivered(world.op2, f"paul.durand@{OP2}", subject)) == 1


def test_queue_cli_lists_retries_and_drops_with_a_dsn(world: World) -> None:
    import subprocess
    import sys

    assert world.op1.server is not None
    world.op2.stop()
    subject = f"a retirer {uuid.uuid4().hex[:8]}"
    send(world.op1.server, SENDER, f"paul.durand@{OP2}", subject)
    wait_until(lambda: queue_of(world.op1), what="queued entry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mssante", "--data-dir", str(world.op1.data_dir), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    listed = json.loads(cli("queue", "list", "--json").stdout)
    assert listed["depth"] == 1
    entry = listed["entries"][0]
    assert entry["recipients"] == [f"paul.durand@{OP2}"] and entry["domain"] == OP2
    assert cli("queue", "retry", str(entry["id"])).returncode == 0
    assert cli("queue", "drop", str(entry["id"]), "--reason", "").returncode == 2
    dropped = cli("queue", "drop", str(entry["id"]), "--reason", "destinataire parti")
    assert dropped.returncode == 0, dropped.stderr
    [report] = wait_until(lambda: _dsns(world.op1, subject), what="DSN")
    assert b"removed from the queue by the operator: destinataire parti" in report
    assert json.loads(cli("queue", "list", "--json").stdout)["depth"] == 0
    trail = cli("audit", "show", "--bal", SENDER, "--json").stdout
    assert '"action": "queue.drop"' in trail
    world.op2.start()


def test_health_reports_queue_depth(world: World) -> None:
    import httpx

    assert world.op1.server is not None
    http = world.op1.server.listener("http")
    answer = httpx.get(
        f"https://127.0.0.1:{http['port']}/health",
        verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
        timeout=5,
    )
    assert answer.json()["queue"] == {"depth": 0, "oldest_age_seconds": 0.0}


def test_delay_warning_then_expiry_each_tell_the_sender_once(tmp_path: Path) -> None:
    """A peer that never answers: one "delayed" DSN after relay.delay_warning_seconds, then the
    message is returned ("failed", 4.4.7) after relay.max_age_seconds and leaves the queue."""
    dead = free_port()  # nothing listens there
    server = start_demo(
        tmp_path / "data",
        {
            "MSSANTE_RELAY__ROUTES": json.dumps({OP2: f"127.0.0.1:{dead}"}),
            "MSSANTE_RELAY__RETRY_SCHEDULE": "[0.5]",
            "MSSANTE_RELAY__POLL_SECONDS": "0.2",
            "MSSANTE_RELAY__DELAY_WARNING_SECONDS": "1",
            "MSSANTE_RELAY__MAX_AGE_SECONDS": "4",
        },
    )
    op = Operator(OP1, tmp_path / "data", {}, 0, server)
    try:
        whitelist(op.data_dir, OP2)
        time.sleep(1.2)  # the annuaire cache notices the whitelist
        subject = f"en attente {uuid.uuid4().hex[:8]}"
        send(server, SENDER, f"paul.durand@{OP2}", subject)

        def reports(action: str) -> list[bytes]:
            return [m for m in _dsns(op, subject) if f"Action: {action}".encode() in m]

        [delayed] = wait_until(lambda: reports("delayed"), what="delay warning")
        assert b"Status: 4.0.0" in delayed and queue_of(op)  # still queued, still retried
        [failed] = wait_until(lambda: reports("failed"), what="expiry DSN")
        assert b"Status: 4.4.7" in failed and b"gave up after" in failed
        wait_until(lambda: not queue_of(op), what="entry removed")
        time.sleep(1.0)
        assert len(reports("delayed")) == 1 and len(reports("failed")) == 1
    finally:
        assert server.stop() == 0
