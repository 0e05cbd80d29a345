"""Messages past ``smtp.spool_threshold`` received into a spool file, through real clients over
TLS against a ``mssante serve --demo`` spooling above 64 KiB and refusing above 2 MiB: stored
byte for byte (trace fields on top), refused with the in-memory path's replies (552 too big,
SMTP smuggling, line length, header hygiene), and no spool file left open by the server
whether the message was accepted, refused, or its client went away mid-DATA; APPEND alike.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

import pytest

from mssante.store.spooled import SPOOL_DIR
from tests.conftest import DEMO_ENV
from tests.demo_server import DemoServer, start_demo
from tests.hostile.smtp_wire import Wire, client_tls
from tests.mailbox import StoredMail

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
THRESHOLD = 64 * 1024
LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def spooling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {
        **DEMO_ENV,
        "MSSANTE_SMTP__SPOOL_THRESHOLD": str(THRESHOLD),
        "MSSANTE_SMTP__MAX_MESSAGE_SIZE": str(LIMIT),
    }
    server = start_demo(tmp_path_factory.mktemp("spool") / "data", env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stored(spooling: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(spooling.data_dir)
    yield view
    view.close()


def message(subject: str, size: int, *, date: bool = True, extra: bytes = b"") -> bytes:
    """A message of about ``size`` bytes whose lines exercise DATA's transformations (dots to
    unstuff, empty lines, blanks), ``extra`` lines in the middle of its body."""
    head = f"From: {MARTIN}\r\nTo: {DURAND}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n"
    head += f"Date: {formatdate()}\r\n" if date else ""
    block = b".point\r\n\r\ntexte  avec \t blancs  \r\n..deux\r\nLorem ipsum dolor sit amet.\r\n"
    half = block * (size // len(block) // 2)
    return head.encode() + b"\r\n" + half + extra + half


def spool_files(server: DemoServer) -> list[str]:
    """What the server process holds open in its spool directory."""
    spool = str(server.data_dir.resolve() / SPOOL_DIR)
    found = []
    for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(spool):
            found.append(target)
    return found


def no_spool_file_left(server: DemoServer) -> None:
    deadline = time.monotonic() + 10
    while (held := spool_files(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not held, held
    assert list((server.data_dir / SPOOL_DIR).iterdir()) == []


def logged_in(server: DemoServer) -> Wire:
    wire = Wire.open(server, "submissions", tls=client_tls(server), timeout=30)
    assert wire.command("EHLO client.test")[-1].startswith(b"250 ")
    account = server.account(MARTIN)
    wire.login(account["login"], account["password"])
    return wire


def transaction(wire: Wire) -> None:
    assert wire.command(f"MAIL FROM:<{MARTIN}>")[-1].startswith(b"250")
    assert wire.command(f"RCPT TO:<{DURAND}>")[-1].startswith(b"250")
    assert wire.command("DATA")[-1].startswith(b"354")


def send_data(wire: Wire, data: bytes) -> list[bytes]:
    wire.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    return wire.reply()


def test_a_spooled_message_is_stored_byte_for_byte(spooling: DemoServer, stored: StoredMail) -> None:
    subject = f"spool-{uuid.uuid4().hex[:8]}"
    sent = message(subject, 1024 * 1024)
    account = spooling.account(MARTIN)
    with smtplib.SMTP("127.0.0.1", spooling.port("submission"), timeout=60) as client:
        client.starttls(context=ssl.create_default_context(cafile=spooling.ca_cert))
        client.login(account["login"], account["password"])
        client.sendmail(MARTIN, [DURAND], sent)
    [kept] = stored.with_subject(DURAND, subject)
    assert kept.startswith(b"Received: from ") and kept.endswith(sent)
    assert b"\r\n\r\n" not in kept[: len(kept) - len(sent)]  # only trace fields on top
    no_spool_file_left(spooling)


def test_bare_line_feeds_past_the_threshold_are_stored_with_crlf(
    spooling: DemoServer, stored: StoredMail
) -> None:
    subject = f"lf-{uuid.uuid4().hex[:8]}"
    sent = message(subject, 300 * 1024, extra=b"ligne finie par LF\nsuite\r\n")
    wire = logged_in(spooling)
    try:
        transaction(wire)
        assert send_data(wire, sent)[-1].startswith(b"250 ")
    finally:
        wire.close()
    [kept] = stored.with_subject(DURAND, subject)
    assert kept.endswith(sent.replace(b"LF\nsuite", b"LF\r\nsuite"))
    no_spool_file_left(spooling)


@pytest.mark.parametrize(
    ("extra", "reply"),
    [
        (b"avant\n.\r\napres\r\n", b"550 5.6.0 A lone '.' line next to a bare LF"),  # smuggling
        (b"x" * 1200 + b"\r\n", b"500 5.5.2 Line too long"),
        (b"mal\rvenu\r\n", b"550 5.6.0 Bare CR"),
    ],
)
def test_refusals_past_the_threshold_are_those_of_the_memory_path(
    spooling: DemoServer, extra: bytes, reply: bytes
) -> None:
    wire = logged_in(spooling)
    try:
        transaction(wire)
        assert send_data(wire, message("refuse", 400 * 1024, extra=extra))[-1].startswith(reply)
        assert wire.command("RSET")[-1].startswith(b"250")  # the session goes on
    finally:
        wire.close()
    no_spool_file_left(spooling)


def test_too_big_and_bad_header_are_refused_and_leave_nothing(spooling: DemoServer) -> None:
    wire = logged_in(spooling)
    try:
        transaction(wire)
        assert send_data(wire, message("trop-gros", LIMIT + 100 * 1024))[-1].startswith(b"552 5.3.4")
        transaction(wire)
        assert send_data(wire, message("sans-date", 300 * 1024, date=False))[-1].startswith(b"550 5.6.0")
        transaction(wire)  # the same session still takes a good one
        assert send_data(wire, message(f"ok-{uuid.uuid4().hex[:6]}", 300 * 1024))[-1].startswith(b"250 ")
    finally:
        wire.close()
    no_spool_file_left(spooling)


def test_a_client_gone_mid_data_leaves_no_spool_file(spooling: DemoServer) -> None:
    wire = logged_in(spooling)
    transaction(wire)
    wire.send(message("parti", 1024 * 1024)[: 700 * 1024])
    time.sleep(0.3)
    assert spool_files(spooling), "the message was being spooled"
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wire.file.close()  # the socket's last reference: closed for real (a reset)
    wire.close()
    no_spool_file_left(spooling)


def imaps(server: DemoServer) -> tuple[ssl.SSLSocket, BinaryIO]:
    """A raw IMAPS connection logged in as Dr DURAND, and its reply stream."""
    account = server.account(DURAND)
    context = ssl.create_default_context(cafile=server.ca_cert)
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port("imaps")), timeout=30), server_hostname="localhost"
    )
    replies = sock.makefile("rb")
    assert replies.readline().startswith(b"* OK")
    sock.sendall(f'a LOGIN "{account["login"]}" "{account["password"]}"\r\n'.encode())
    assert tagged(replies, b"a").startswith(b"a OK")
    return sock, replies


def tagged(replies: BinaryIO, tag: bytes) -> bytes:
    while not (line := replies.readline()).startswith(tag + b" "):
        assert line, "connection closed"
    return line


def test_append_past_the_threshold_is_spooled_and_stored_byte_for_byte(
    spooling: DemoServer, stored: StoredMail
) -> None:
    subject = f"append-{uuid.uuid4().hex[:8]}"
    big, small = message(subject, 512 * 1024), message(subject + "-petit", 2 * 1024)
    sock, replies = imaps(spooling)
    try:
        # MULTIAPPEND with LITERAL+: the big one spooled, the small one after it inline.
        sock.sendall(b"b APPEND INBOX (\\Seen) {%d+}\r\n" % len(big) + big)
        sock.sendall(b" {%d+}\r\n" % len(small) + small + b"\r\n")
        assert tagged(replies, b"b").startswith(b"b OK")
    finally:
        replies.close()
        sock.close()
    assert stored.with_subject(DURAND, subject) == [big]
    assert stored.with_subject(DURAND, subject + "-petit") == [small]
    no_spool_file_left(spooling)


def test_append_cut_short_leaves_no_spool_file(spooling: DemoServer) -> None:
    sock, replies = imaps(spooling)
    big = message("coupe", 1024 * 1024)
    sock.sendall(b"b APPEND INBOX {%d+}\r\n" % len(big) + big[: 600 * 1024])
    time.sleep(0.3)
    assert spool_files(spooling), "the literal was being spooled"
    replies.close()
    sock.close()
    no_spool_file_left(spooling)


def test_imaplib_append_of_a_spooled_message(spooling: DemoServer, stored: StoredMail) -> None:
    subject = f"imaplib-{uuid.uuid4().hex[:8]}"
    sent = message(subject, 256 * 1024)
    account = spooling.account(DURAND)
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", spooling.port("imaps"), ssl_context=ssl.create_default_context(cafile=spooling.ca_cert)
    )
    try:
        client.login(account["login"], account["password"])
        assert client.append("INBOX", None, None, sent)[0] == "OK"
    finally:
        client.logout()
    assert stored.with_subject(DURAND, subject) == [sent]
    no_spool_file_left(spooling)
