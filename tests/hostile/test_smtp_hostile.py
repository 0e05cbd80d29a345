"""Hostile SMTP clients and peers against a real ``mssante serve --demo``, over sockets.

The spoofing attacks of issue 13 (EHLO line injection, header line breaks the policy and mail
readers would cut differently, another operator writing as one of our doctors, the null sender
for ordinary mail) each end in a clear protocol error with nothing stored, checked through what
a reader sees (IMAP ENVELOPE, Python's ``email``). Then a seeded, bounded command fuzzer: every
reply well formed or a clean close, nothing stored, and a fresh client served within a second.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import random
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from mssante.auth.devpki import DevCA
from mssante.config import load_settings
from mssante.db import make_engine
from tests.demo_server import DemoServer
from tests.hostile.smtp_wire import REPLY_LINE, Wire, client_tls, served_within
from tests.mailbox import StoredMail

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"
PEER = "hostile-peer.mssante.fr"  # a whitelisted operator whose certificate we hold
THIRD = "third-peer.mssante.fr"  # another whitelisted operator
SPOOF = f'"Dr Paul DURAND" <{DURAND}>'


@pytest.fixture
def stored(demo: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(demo.data_dir)
    yield view
    view.close()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def martin(demo: DemoServer) -> Wire:
    """Dr MARTIN logged in on submissions (implicit TLS)."""
    wire = Wire.open(demo, "submissions", tls=client_tls(demo))
    assert wire.command("EHLO client.test")[-1].startswith(b"250 ")
    account = demo.account(MARTIN)
    wire.login(account["login"], account["password"])
    return wire


def envelopes(demo: DemoServer, login: str, subject: str) -> list[object]:
    """IMAP ENVELOPEs of the messages of ``login``'s INBOX whose subject holds ``subject``."""
    account = demo.account(login)
    with IMAPClient("127.0.0.1", port=demo.port("imaps"), ssl=True, ssl_context=client_tls(demo)) as imap:
        imap.login(account["login"], account["password"])
        imap.select_folder("INBOX", readonly=True)
        found = imap.search(["SUBJECT", subject])
        return [data[b"ENVELOPE"] for data in imap.fetch(found, ["ENVELOPE"]).values()] if found else []


def message(sender: str, subject: str, *, extra: bytes = b"") -> bytes:
    head = f"From: {sender}\r\nTo: {DURAND}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
    return extra + head.encode() + b"\r\nbody\r\n"


# -- issue 13 item 2: the EHLO name --------------------------------------------------------------
@pytest.mark.parametrize(
    ("ehlo", "reply"),
    [
        (f"EHLO x\rFrom: {SPOOF}".encode(), b"500 5.5.2 Bare CR in a command line"),
        (f"EHLO x\r\rFrom: {SPOOF}".encode(), b"500 5.5.2 Bare CR in a command line"),
        (f"EHLO x\x0bFrom: {SPOOF}".encode(), b"500 5.5.2 Control character 0x0B in a command line"),
        (f"EHLO x\x1cFrom: {SPOOF}".encode(), b"500 5.5.2 Control character 0x1C in a command line"),
        (f"EHLO x From: {SPOOF}".encode(), b"501 5.5.2 Invalid HELO/EHLO name"),
        ("EHLO x\u2028From: z".encode(), b"501 5.5.2 Invalid HELO/EHLO name"),
        (b"EHLO [999.1.1.1]", b"501 5.5.2 Invalid HELO/EHLO name"),
        (b"HELO -bad-.example", b"501 5.5.2 Invalid HELO/EHLO name"),
    ],
)
def test_ehlo_injection_cannot_spoof_from(demo: DemoServer, ehlo: bytes, reply: bytes) -> None:
    subject = unique("ehlo")
    wire = Wire.open(demo, "submissions", tls=client_tls(demo))
    try:
        answer = wire.command(ehlo)
        assert answer[-1].startswith(reply), answer
        # The attacker goes on as if the name had been taken: no EHLO, no AUTH.
        assert wire.command("AUTH PLAIN AGFiYwBk")[-1].startswith(b"503"), "AUTH without EHLO"
        # A valid EHLO, then Dr MARTIN's own message: what is stored names her alone.
        assert wire.command("EHLO client.test")[-1].startswith(b"250 ")
        account = demo.account(MARTIN)
        wire.login(account["login"], account["password"])
        for line in (f"MAIL FROM:<{MARTIN}>", f"RCPT TO:<{DURAND}>", "DATA"):
            wire.command(line)
        answer = wire.command(message(MARTIN, subject) + b".")
        assert answer[-1].startswith(b"250 2.0.0"), answer
    finally:
        wire.close()
    [envelope] = envelopes(demo, DURAND, subject)
    assert [(a.mailbox, a.host) for a in envelope.from_] == [(b"claire.martin", DOMAIN.encode())]
    assert [(a.mailbox, a.host) for a in envelope.sender] == [(b"claire.martin", DOMAIN.encode())]
    view = StoredMail(demo.data_dir)
    try:
        [raw] = view.with_subject(DURAND, subject)
    finally:
        view.close()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_all("From") == [MARTIN]
    assert b"from client.test ([127.0.0.1])" in raw.split(b"\r\n\r\n")[0]


def test_helo_accepts_domains_and_address_literals(demo: DemoServer) -> None:
    wire = Wire.open(demo, "submission")
    try:
        for name in ("client.test", "localhost", "[127.0.0.1]", "[IPv6:::1]", "PC_ACCUEIL.hopital.local"):
            assert wire.command(f"EHLO {name}")[-1].startswith(b"250 "), name
        # Bare LF ending a command: refused, the next well-ended command is served.
        wire.send(b"NOOP\nNOOP\r\n")
        assert wire.reply()[-1].startswith(b"500 5.5.2 Bare LF in a command line")
        assert wire.reply()[-1].startswith(b"250 ")
    finally:
        wire.close()


# -- issue 13 item 3: header lines cut where readers cut them ---------------------------------------
@pytest.mark.parametrize(
    ("hidden", "status", "reason"),
    [
        (f"X-Hide: x\x1cFrom: <{MARTIN}>\x0c\r\n", b"5.6.0", b"control character 0x1C in header line 1"),
        (f"X-Hide: x\x0bFrom: <{MARTIN}>\r\n", b"5.6.0", b"control character 0x0B in header line 1"),
        (f"X-Hide: x\x00\r\nFrom: <{MARTIN}>\r\n", b"5.6.0", b"control character 0x00"),
        (f"X-Hide: x\x85From: <{MARTIN}>\r\n", b"5.6.7", b"needs an SMTPUTF8 transaction"),
        (f"X-Hide: x\u2028From: <{MARTIN}>\r\n", b"5.6.7", b"needs an SMTPUTF8 transaction"),
        (f"From : <{MARTIN}>\r\n", b"5.6.0", b"is not a 'Name: value' field"),
        (f" From: <{MARTIN}>\r\n", b"5.6.0", b"starts with a continuation line"),
        (f"From <{MARTIN}>\r\n", b"5.6.0", b"is not a 'Name: value' field"),
    ],
)
def test_header_line_breaks_cannot_spoof_from(
    demo: DemoServer, stored: StoredMail, hidden: str, status: bytes, reason: bytes
) -> None:
    subject = unique("hidden")
    wire = martin(demo)
    try:
        for line in (f"MAIL FROM:<{MARTIN}>", f"RCPT TO:<{DURAND}>", "DATA"):
            wire.command(line)
        answer = wire.command(message(SPOOF, subject, extra=hidden.encode("utf-8", "surrogateescape")) + b".")
    finally:
        wire.close()
    assert answer[-1].startswith(b"550 " + status) and reason in answer[-1], answer
    assert stored.with_subject(DURAND, subject) == []


def test_unicode_line_separator_in_an_smtputf8_header_is_refused(
    demo: DemoServer, stored: StoredMail
) -> None:
    subject = unique("utf8-hidden")
    wire = martin(demo)
    try:
        for line in (f"MAIL FROM:<{MARTIN}> SMTPUTF8", f"RCPT TO:<{DURAND}>", "DATA"):
            wire.command(line)
        hidden = f"X-Hide: x\u2028From: <{MARTIN}>\u0085\r\n".encode()
        answer = wire.command(message(SPOOF, subject, extra=hidden) + b".")
    finally:
        wire.close()
    assert answer[-1].startswith(b"550 5.6.0 Unicode control or line separator in header line 1"), answer
    assert stored.with_subject(DURAND, subject) == []


# -- issue 13 item 4: relay-in --------------------------------------------------------------------
@pytest.fixture(scope="module")
def peer_cert(demo: DemoServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate of the demo's CA for a whitelisted peer operator (as IGC-Santé would issue)."""
    settings = load_settings(None, server={"data_dir": str(demo.data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    with Session(engine) as session, session.begin():
        for domain in (PEER, THIRD):
            annuaire_service.add_operator_domain(session, domain=domain, actor="test")
    engine.dispose()
    issued = DevCA.load(demo.data_dir / "certs").issue_server(
        tmp_path_factory.mktemp("peer"), [f"mx.{PEER}", PEER]
    )
    time.sleep(1.2)  # the server's annuaire cache notices the new whitelist within a second
    return issued.cert_file, issued.key_file


def relay(demo: DemoServer, cert: tuple[Path, Path], mail_from: str, data: bytes) -> list[list[bytes]]:
    wire = Wire.open(demo, "relay")
    try:
        assert wire.command(f"EHLO mx.{PEER}")[-1].startswith(b"250 ")
        wire.starttls(client_tls(demo, cert))
        assert wire.command(f"EHLO mx.{PEER}")[-1].startswith(b"250 ")
        replies = [wire.command(f"MAIL FROM:<{mail_from}>"), wire.command(f"RCPT TO:<{DURAND}>")]
        if all(r and r[-1].startswith(b"250") for r in replies):
            replies.append(wire.command("DATA"))
            replies.append(wire.command(data + b"."))
        return replies
    finally:
        wire.close()


def test_peer_delivers_its_own_mail(demo: DemoServer, peer_cert: tuple[Path, Path]) -> None:
    subject = unique("peer-ok")
    replies = relay(demo, peer_cert, f"dr.y@{PEER}", message(f"Dr Y <dr.y@{PEER}>", subject))
    assert replies[-1][-1].startswith(b"250 2.0.0"), replies
    [envelope] = envelopes(demo, DURAND, subject)
    assert [(a.mailbox, a.host) for a in envelope.from_] == [(b"dr.y", PEER.encode())]


@pytest.mark.parametrize(
    ("mail_from", "author", "reply"),
    [
        (f"dr.y@{PEER}", SPOOF, b"550 5.7.1 From: <paul.durand@demo.mssante.fr> claims a domain hosted here"),
        (
            f"dr.y@{PEER}",
            f"<x@mx.{DOMAIN}>",
            b"550 5.7.1 From: <x@mx.demo.mssante.fr> claims a domain hosted here",
        ),
        (
            f"dr.y@{PEER}",
            f"<dr.t@{THIRD}>",
            b"550 5.7.1 From: <dr.t@third-peer.mssante.fr>: domain third-peer",
        ),
        (f"dr.t@{THIRD}", f"<dr.t@{THIRD}>", b"550 5.7.1 <dr.t@third-peer.mssante.fr>: domain third-peer"),
        (MARTIN, SPOOF, b"550 5.7.1 <claire.martin@demo.mssante.fr> claims a domain hosted here"),
        ("", f"<dr.y@{PEER}>", b"550 5.7.1 The null sender <> is only for delivery and disposition reports"),
    ],
)
def test_peer_cannot_write_as_our_doctors_or_another_operator(
    demo: DemoServer,
    stored: StoredMail,
    peer_cert: tuple[Path, Path],
    mail_from: str,
    author: str,
    reply: bytes,
) -> None:
    subject = unique("peer-spoof")
    replies = relay(demo, peer_cert, mail_from, message(author, subject))
    refusal = next(r[-1] for r in replies if not r[-1].startswith((b"250", b"354")))
    assert refusal.startswith(reply), replies
    assert stored.with_subject(DURAND, subject) == []


def test_null_sender_delivers_a_dsn(demo: DemoServer, peer_cert: tuple[Path, Path]) -> None:
    subject = unique("dsn")
    report = (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.{PEER}>\r\nTo: <{DURAND}>\r\nSubject: {subject}\r\n"
        f"Date: {formatdate()}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nNon remis.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.{PEER}\r\n\r\n"
        f"Final-Recipient: rfc822; x@{PEER}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
    ).encode()
    replies = relay(demo, peer_cert, "", report)
    assert replies[-1][-1].startswith(b"250 2.0.0"), replies
    assert len(envelopes(demo, DURAND, subject)) == 1


# -- the command fuzzer ---------------------------------------------------------------------------
FUZZ_SEED = int(os.environ.get("MSSANTE_FUZZ_SEED", "1313"))
FUZZ_CASES = int(os.environ.get("MSSANTE_FUZZ_CASES", "400"))

COMMANDS = [
    b"EHLO client.test",
    b"HELO client.test",
    f"MAIL FROM:<{DPI}>".encode(),
    f"MAIL FROM:<{DPI}> SIZE=100 BODY=8BITMIME SMTPUTF8".encode(),
    f"RCPT TO:<{DURAND}>".encode(),
    "RCPT TO:<amélie@demo.mssante.fr>".encode(),
    b"DATA",
    b"BDAT 100 LAST",
    b"BDAT 0",
    b"AUTH PLAIN",
    b"AUTH EXTERNAL =",
    b"AUTH XOAUTH2 dXNlcj0BYXV0aD1CZWFyZXIgeAEB",
    b"STARTTLS",
    b"RSET",
    b"NOOP",
    b"VRFY postmaster",
    b"HELP DATA",
    b"ETRN demo.mssante.fr",
]
# A message every variant of which must be refused: From: is another doctor than the sender.
SPOOFED = message(SPOOF, "fuzz", extra=f"X-Hide: x\x1cFrom: <{DPI}>\x0c\r\n".encode())
SMUGGLE = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n"]
CONTROLS = [bytes([c]) for c in (*range(0, 32), 127)] + ["\u2028".encode(), b"\x85", b"\xff", b"\xc3"]


def mutate(rng: random.Random, line: bytes) -> bytes:
    """One line with a hostile twist (or none)."""
    choice = rng.randrange(10)
    if choice == 0:
        at = rng.randrange(len(line) + 1)
        return line[:at] + rng.choice(CONTROLS) + line[at:]
    if choice == 1:
        return line + rng.choice([b"\r", b"\n", b"\r\r", b"\n\r"]) + rng.choice(COMMANDS)
    if choice == 2:
        return (
            line + b" " + bytes(rng.randrange(33, 127) for _ in range(rng.choice([600, 1100, 5000, 70000])))
        )
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    if choice == 4:
        return line.lower() if rng.random() < 0.5 else line.replace(b" ", b"\t")
    if choice == 5:
        return line + b" " + SPOOF.encode()
    return line


def case(rng: random.Random) -> bytes:
    """A pipelined burst: a few commands, maybe DATA with a spoofed, mangled message."""
    out = bytearray()
    for _ in range(rng.randrange(1, 7)):
        line = mutate(rng, rng.choice(COMMANDS))
        out += line + rng.choice([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
        if line == b"DATA" and rng.random() < 0.7:
            body = bytearray(SPOOFED)
            at = rng.randrange(len(body))
            body[at:at] = rng.choice(SMUGGLE + CONTROLS)
            out += body + rng.choice([b".\r\n", b"\r\n.\r\n", b".\n", b"\n.\n"])
    # Whatever state the burst left: end a DATA or a line, then leave.
    return bytes(out) + b"\r\n.\r\nQUIT\r\n"


def well_formed(lines: list[bytes]) -> None:
    for line in lines:
        assert REPLY_LINE.fullmatch(line), f"malformed reply line {line[:200]!r}"
        assert not line.startswith(b"250 2.0.0 Message accepted"), "a fuzzed message was stored"


def authenticated_dpi(demo: DemoServer) -> Wire:
    """The DPI software logged in with its certificate (SASL EXTERNAL: no password hashing)."""
    account = demo.account(DPI)
    wire = Wire.open(
        demo, "submissions", tls=client_tls(demo, (account["client_cert"], account["client_key"]))
    )
    assert wire.command("EHLO dpi.test")[-1].startswith(b"250 ")
    assert wire.command("AUTH EXTERNAL =")[-1].startswith(b"235")
    return wire


def test_command_fuzzer(demo: DemoServer, stored: StoredMail) -> None:
    rng = random.Random(FUZZ_SEED)
    before = {bal: len(stored.messages(bal)) for bal in (DURAND, MARTIN, DPI)}
    started = time.monotonic()
    for number in range(FUZZ_CASES):
        burst = case(rng)
        where = rng.randrange(4)
        if where == 0:
            wire = Wire.open(demo, "submission")  # clear text, before STARTTLS
        elif where == 1:
            wire = Wire.open(demo, "relay")  # another operator's door, no certificate
        else:
            wire = authenticated_dpi(demo)  # past AUTH: MAIL, RCPT, DATA, BDAT reached
        try:
            wire.sock.settimeout(2)
            with contextlib.suppress(OSError):  # the server may close while we still write
                wire.send(burst)
            lines, waiting = wire.drain()
        finally:
            wire.close()
        try:
            well_formed(lines)
            # Silence is only allowed from a server that said yes to STARTTLS and now waits for a
            # TLS handshake (the clear-text rest of the burst is discarded, RFC 3207 §4.2).
            assert not waiting or lines[-1].startswith(b"220 Ready to start TLS"), lines[-3:]
        except AssertionError as exc:
            raise AssertionError(f"case {number} (seed {FUZZ_SEED}) sent {burst[:300]!r}: {exc}") from exc
        if number % 50 == 49:
            served_within(demo)
    elapsed = time.monotonic() - started
    assert elapsed < 90, f"{FUZZ_CASES} cases took {elapsed:.0f} s"
    assert {bal: len(stored.messages(bal)) for bal in before} == before
    served_within(demo)


def test_millions_of_empty_lines_do_not_freeze_the_server(demo: DemoServer, stored: StoredMail) -> None:
    """8 MiB of bare-LF empty lines in one DATA: other clients are served meanwhile, and the
    message (no From:) is refused whole."""
    wire = authenticated_dpi(demo)
    try:
        for line in (f"MAIL FROM:<{DPI}>", f"RCPT TO:<{DURAND}>", "DATA"):
            assert wire.command(line)[-1][:1] in (b"2", b"3")
        wire.send(b"\n" * (8 * 1024 * 1024))
        waits = [served_within(demo) for _ in range(3)]
        answer = wire.command(b"\r\n.")  # a bare LF before the dot would not end it
    finally:
        wire.close()
    assert answer[-1].startswith(b"550 5.6.0 the message must have exactly one From: header"), answer
    assert max(waits) < 1.0
