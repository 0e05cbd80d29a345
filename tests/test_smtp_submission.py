"""SMTP submission end to end: a real demo server, real TLS, smtplib and swaks as clients."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.demo_server import DemoServer, start_demo
from tests.mailbox import StoredMail

MARTIN = "claire.martin@demo.mssante.fr"
DURAND = "paul.durand@demo.mssante.fr"
CARDIO = "cardiologie@demo.mssante.fr"
DPI = "dpi@demo.mssante.fr"


@pytest.fixture
def stored(demo: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(demo.data_dir)
    yield view
    view.close()


def message(sender: str, to: str, subject: str, body: str = "Bonjour,\r\nmessage de test.\r\n") -> str:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )


def tls_context(demo: DemoServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=demo.ca_cert)


def connect(demo: DemoServer, login: str | None = MARTIN, timeout: float = 30) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=timeout)
    client.ehlo("client.test")
    client.starttls(context=tls_context(demo))
    client.ehlo("client.test")
    if login is not None:
        account = demo.account(login)
        client.login(account["login"], account["password"])
    return client


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def test_professional_sends_to_a_colleague_and_the_message_is_stored(
    demo: DemoServer, stored: StoredMail
) -> None:
    subject = unique("CR consultation")
    with connect(demo) as client:
        refused = client.sendmail(MARTIN, [DURAND, CARDIO], message(MARTIN, DURAND, subject))
    assert refused == {}
    for bal in (DURAND, CARDIO):
        [raw] = stored.with_subject(bal, subject)
        assert raw.startswith(b"Received: from client.test ([127.0.0.1])")
        assert b"(authenticated as claire.martin@demo.mssante.fr)" in raw
        assert b"Message-ID: <" in raw  # added when the client gave none
        assert b"\r\n\r\nBonjour,\r\nmessage de test.\r\n" in raw


def test_implicit_tls_submission(demo: DemoServer, stored: StoredMail) -> None:
    subject = unique("implicite")
    account = demo.account(DURAND)
    with smtplib.SMTP_SSL("127.0.0.1", demo.port("submissions"), context=tls_context(demo), timeout=30) as c:
        c.login(account["login"], account["password"])
        c.sendmail(DURAND, [MARTIN], message(DURAND, MARTIN, subject))
    assert len(stored.with_subject(MARTIN, subject)) == 1


@pytest.mark.parametrize(
    ("sender", "recipient", "code", "fragment"),
    [
        # the authenticated professional may not send as a colleague
        (
            DURAND,
            MARTIN,
            550,
            b"5.7.1 professional:810100000011 may not send as <paul.durand@demo.mssante.fr>",
        ),
        # a sender that is not in the annuaire
        ("inconnu@demo.mssante.fr", DURAND, 550, b"5.7.1 <inconnu@demo.mssante.fr> is not a published"),
        # the null sender is for DSNs only
        ("", DURAND, 553, b"5.1.7"),
    ],
)
def test_sender_rules(demo: DemoServer, sender: str, recipient: str, code: int, fragment: bytes) -> None:
    with connect(demo) as client:
        reply = client.mail(sender)
    assert reply[0] == code and fragment in reply[1], reply


@pytest.mark.parametrize(
    ("recipient", "code", "fragment"),
    [
        ("personne@demo.mssante.fr", 550, b"5.1.1 <personne@demo.mssante.fr>: no such mailbox (BAL)"),
        ("someone@gmail.com", 550, b"5.7.1 <someone@gmail.com>: domain gmail.com is outside the MSSant"),
        (
            "dr.x@autre-operateur.mssante.fr",
            550,
            b"5.7.1 <dr.x@autre-operateur.mssante.fr>: domain "
            b"autre-operateur.mssante.fr is not a whitelisted operator",
        ),
        ("pas-une-adresse", 501, b"5.1.3"),
    ],
)
def test_recipient_rules_and_no_open_relay(
    demo: DemoServer, recipient: str, code: int, fragment: bytes
) -> None:
    with connect(demo) as client:
        assert client.mail(MARTIN)[0] == 250
        reply = client.rcpt(recipient)
    assert reply[0] == code and fragment in reply[1], reply


def test_unauthenticated_client_cannot_send_anything(demo: DemoServer) -> None:
    with connect(demo, login=None) as client:
        reply = client.mail(MARTIN)
        assert reply[0] == 530 and b"5.7.0" in reply[1]
        # no relaying either, to a local or an outside domain
        reply = client.rcpt("someone@gmail.com")
        assert reply[0] == 530


def test_auth_is_not_offered_before_starttls(demo: DemoServer) -> None:
    with smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30) as client:
        code, features = client.ehlo("client.test")
        assert b"STARTTLS" in features and b"AUTH" not in features
        assert b"ENHANCEDSTATUSCODES" in features and b"PIPELINING" in features
        code, reply = client.docmd("AUTH", "PLAIN AGZvbwBiYXI=")
        assert code == 530 and b"STARTTLS" in reply
        code, reply = client.docmd("MAIL", "FROM:<claire.martin@demo.mssante.fr>")
        assert code == 530


def test_wrong_password_and_malformed_sasl(demo: DemoServer) -> None:
    with connect(demo, login=None) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(MARTIN, "not-the-password")
        assert info.value.smtp_code == 535 and b"5.7.8" in info.value.smtp_error
        code, reply = client.docmd("AUTH", "PLAIN !!!notbase64!!!")
        assert code == 501 and b"5.5.2" in reply


def test_from_header_must_be_the_sending_bal(demo: DemoServer) -> None:
    with connect(demo) as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail(MARTIN, [DURAND], message(DURAND, MARTIN, unique("usurpation")))
    assert info.value.smtp_code == 550
    assert b"5.7.1 From: <paul.durand@demo.mssante.fr> must be the sending mailbox" in info.value.smtp_error


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (
            "To: x@demo.mssante.fr\r\nSubject: sans expediteur\r\nDate: Thu, 26 Nov 2026 10:00:00 +0100\r\n",
            b"5.6.0 the message must have exactly one From: header",
        ),
        (
            f"From: {MARTIN}\r\nTo: x\r\nSubject: sans date\r\n",
            b"5.6.0 the message must have exactly one Date:",
        ),
        (f"From: {MARTIN}\r\nSubject: date fausse\r\nDate: hier soir\r\n", b"5.6.0 the Date: header"),
    ],
)
def test_messages_without_valid_from_or_date_are_refused(
    demo: DemoServer, headers: str, fragment: bytes
) -> None:
    with connect(demo) as client, pytest.raises(smtplib.SMTPDataError) as info:
        client.sendmail(MARTIN, [DURAND], headers + "\r\ncorps\r\n")
    assert info.value.smtp_code == 550 and fragment in info.value.smtp_error


def test_application_logs_in_with_its_certificate_only(demo: DemoServer, stored: StoredMail) -> None:
    account = demo.account(DPI)
    ctx = tls_context(demo)
    ctx.load_cert_chain(account["client_cert"], account["client_key"])
    subject = unique("resultat automatique")
    with smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30) as client:
        client.ehlo("dpi.test")
        client.starttls(context=ctx)
        code, features = client.ehlo("dpi.test")
        assert b"EXTERNAL" in features
        code, reply = client.docmd("AUTH", "EXTERNAL =")
        assert code == 235, reply
        client.sendmail(DPI, [DURAND], message(DPI, DURAND, subject))
    assert len(stored.with_subject(DURAND, subject)) == 1


def _pipeline(demo: DemoServer, chunks: list[bytes]) -> list[bytes]:
    """Log in over TLS, send raw bytes, collect the server's reply lines."""
    account = demo.account(MARTIN)
    import base64

    raw = socket.create_connection(("127.0.0.1", demo.port("submissions")), timeout=15)
    sock = tls_context(demo).wrap_socket(raw, server_hostname="localhost")
    reader = sock.makefile("rb")
    reader.readline()
    token = base64.b64encode(f"\0{account['login']}\0{account['password']}".encode()).decode()
    sock.sendall(f"EHLO x\r\nAUTH PLAIN {token}\r\n".encode())
    lines: list[bytes] = []
    while not (lines and lines[-1].startswith(b"235")):
        lines.append(reader.readline())
    replies = []
    for chunk in chunks:
        sock.sendall(chunk)
    sock.sendall(b"QUIT\r\n")
    while True:
        line = reader.readline()
        if not line:
            break
        replies.append(line)
    sock.close()
    return replies


@pytest.mark.parametrize("vector", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"])
def test_smuggling_vectors_never_split_a_message(demo: DemoServer, stored: StoredMail, vector: bytes) -> None:
    smuggled = unique("smuggled")
    outer = unique("outer")
    data = (
        f"From: {MARTIN}\r\nTo: {DURAND}\r\nSubject: {outer}\r\nDate: {formatdate()}\r\n\r\nhello".encode()
        + vector
        + f"MAIL FROM:<{MARTIN}>\r\nRCPT TO:<{DURAND}>\r\nDATA\r\nFrom: {MARTIN}\r\nSubject: {smuggled}\r\n"
        f"Date: {formatdate()}\r\n\r\nsmuggled\r\n".encode()
        + b".\r\n"
    )
    replies = _pipeline(demo, [f"MAIL FROM:<{MARTIN}>\r\nRCPT TO:<{DURAND}>\r\nDATA\r\n".encode(), data])
    codes = [r[:3] for r in replies]
    # one transaction: 250 MAIL, 250 RCPT, 354 DATA, then a single verdict, then 221 for QUIT
    assert codes[:3] == [b"250", b"250", b"354"], replies
    assert replies[3].startswith(b"550 5.6.0 "), replies
    assert b"SMTP smuggling" in replies[3] or b"Bare CR" in replies[3], replies
    assert codes[4:] == [b"221"], replies
    assert stored.with_subject(DURAND, smuggled) == [] and stored.with_subject(DURAND, outer) == []


def test_commands_pipelined_before_starttls_handshake_are_discarded(demo: DemoServer) -> None:
    raw = socket.create_connection(("127.0.0.1", demo.port("submission")), timeout=15)
    reader = raw.makefile("rb")
    reader.readline()
    raw.sendall(b"EHLO x\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    # The injected command rides in the same packet as STARTTLS, in the clear.
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<claire.martin@demo.mssante.fr>\r\n")
    assert reader.readline().startswith(b"220")
    sock = tls_context(demo).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"NOOP\r\n")
    first = sock.recv(4096)
    # Had the injected MAIL been executed, its reply (530: not authenticated) would come first.
    assert first.startswith(b"250 2.0.0"), first
    sock.close()


def test_hundred_concurrent_senders_each_message_stored_exactly_once(
    demo: DemoServer, stored: StoredMail
) -> None:
    batch = uuid.uuid4().hex[:8]

    def send(n: int) -> str:
        subject = f"concurrent {batch} {n}"
        # Generous time-out: 100 argon2 verifications share two cores with the rest of the suite.
        with connect(demo, timeout=180) as client:
            client.sendmail(MARTIN, [DURAND], message(MARTIN, DURAND, subject))
        return subject

    with ThreadPoolExecutor(max_workers=100) as pool:
        subjects = list(pool.map(send, range(100)))
    inbox = stored.messages(DURAND)
    for subject in subjects:
        needle = f"Subject: {subject}\r\n".encode()
        assert sum(needle in m for m in inbox) == 1, subject


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks (Debian package) is not installed")
def test_swaks_sends_and_sees_policy_refusals(demo: DemoServer, stored: StoredMail) -> None:
    account = demo.account(MARTIN)
    subject = unique("swaks")
    base = [
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        str(demo.port("submission")),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        demo.ca_cert,
        "--tls-sni",
        "localhost",
        "--auth",
        "PLAIN",
        "--auth-user",
        account["login"],
        "--auth-password",
        account["password"],
        "--from",
        MARTIN,
        "--header",
        f"Subject: {subject}",
        "--ehlo",
        "swaks.test",
    ]
    ok = subprocess.run([*base, "--to", DURAND], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "250 2.0.0 Message accepted" in ok.stdout
    assert len(stored.with_subject(DURAND, subject)) == 1
    refused = subprocess.run([*base, "--to", "someone@gmail.com"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    # No SMTPUTF8 in this transaction: the reply is folded to ASCII (RFC 6531).
    assert (
        "550 5.7.1 <someone@gmail.com>: domain gmail.com is outside the MSSante trust space" in refused.stdout
    )


def test_connections_per_client_address_are_capped_and_idle_ones_closed(tmp_path: Path) -> None:
    server = start_demo(
        tmp_path / "data", {"MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "2", "MSSANTE_SMTP__TIMEOUT_SECONDS": "3"}
    )
    try:
        port = server.port("submission")
        first, second = (socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2))
        assert first.recv(100).startswith(b"220") and second.recv(100).startswith(b"220")
        third = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert third.recv(100).startswith(b"421 4.7.0 Too many connections")
        first.close()
        time.sleep(0.3)
        fourth = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert fourth.recv(100).startswith(b"220")
        for sock in (second, third, fourth):
            sock.close()
        # An idle session is closed after smtp.timeout_seconds, and its slot freed.
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert idle.recv(100).startswith(b"220")
        time.sleep(3.5)
        closing = idle.recv(200)
        assert closing == b"" or closing.startswith(b"421"), closing
        idle.close()
    finally:
        assert server.stop() == 0


def test_replies_are_utf8_only_in_smtputf8_transactions(demo: DemoServer) -> None:
    with connect(demo) as client:
        assert client.mail(MARTIN)[0] == 250
        code, reply = client.rcpt("someone@gmail.com")
        assert code == 550 and reply.isascii() and b"MSSante trust space" in reply
        client.rset()
        assert client.mail(MARTIN, ["SMTPUTF8"])[0] == 250
        code, reply = client.rcpt("someone@gmail.com")
        assert code == 550 and "MSSanté trust space" in reply.decode()


def test_policy_refusals_are_in_the_audit_trail(demo: DemoServer, stored: StoredMail) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from mssante.audit import AuditRecord

    with connect(demo) as client:
        assert client.mail(DURAND)[0] == 550
    with Session(stored.engine) as session:
        refusals = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "smtp.refused", AuditRecord.object == DURAND)
        ).all()
    assert refusals, "the refusal was not traced"
    last = refusals[-1]
    assert (last.actor, last.outcome, last.source) == ("professional:810100000011", "5.7.1", "127.0.0.1")
    assert '"stage": "MAIL"' in (last.detail or "")


def test_oversized_messages_and_overlong_lines_are_refused_and_nothing_stored(tmp_path: Path) -> None:
    server = start_demo(tmp_path / "data", {"MSSANTE_SMTP__MAX_MESSAGE_SIZE": "100000"})
    view = StoredMail(server.data_dir)
    try:
        big, long_line = unique("trop gros"), unique("ligne longue")
        with connect(server) as client:
            code, features = client.ehlo("client.test")
            assert b"SIZE 100000" in features
            small = message(MARTIN, DURAND, big)
            assert client.sendmail(MARTIN, [DURAND], small) == {}
            # A client announcing the size is stopped at MAIL …
            oversized = message(MARTIN, DURAND, big, ("y" * 70 + "\r\n") * 2000)
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail(MARTIN, [DURAND], oversized)
            assert refused.value.smtp_code == 552
            # … one that does not is stopped after DATA, having sent everything.
            for data, code, text in (
                (oversized, 552, b"5.3.4"),
                (message(MARTIN, DURAND, long_line, "z" * 2000 + "\r\n"), 500, b"Line too long"),
            ):
                assert client.mail(MARTIN)[0] == 250 and client.rcpt(DURAND)[0] == 250
                reply = client.data(data.encode())
                assert reply[0] == code and text in reply[1], reply
            # The session is still usable after both refusals.
            assert client.sendmail(MARTIN, [DURAND], message(MARTIN, DURAND, unique("ok"))) == {}
        assert view.with_subject(DURAND, long_line) == []
        assert len(view.with_subject(DURAND, big)) == 1  # only the first, small one
    finally:
        view.close()
        assert server.stop() == 0
