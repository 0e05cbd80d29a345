"""Big messages on every path, through real clients over TLS: submission (STARTTLS, AUTH),
DKIM signing, the outbound queue to another operator (relay-out, streamed DATA), relay-in
with DKIM verification, IMAP FETCH and APPEND. Each arrives byte-identical (SHA-256), and the
serving process grows by about the message once, not by copies of it."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
import threading
import time
import uuid
from email.utils import formatdate
from typing import Any

import pytest

from mssante.smtp.relay import send_data
from tests import test_relay
from tests.demo_server import DemoServer
from tests.helpers import body_digest, rss_kib
from tests.test_relay import OP1, OP2, SENDER, World, queue_of, wait_until

world = test_relay.world  # the two operators of the relay tests (module scope: started once here)

SIZE = 6 * 1024 * 1024
LOCAL = f"paul.durand@{OP1}"
REMOTE = f"paul.durand@{OP2}"


def big_message(to: str, subject: str, size: int = SIZE) -> bytes:
    """Lines that test the transformations on the way: dot-stuffing (lines starting with a
    dot), DKIM relaxed canonicalisation (runs of blanks, trailing blanks, empty lines)."""
    head = (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    lines = [
        b".point de depart\r\n",
        b"texte  avec \t des blancs   \r\n",
        b"\r\n",
        b"..deux points\r\n",
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
    ]
    block = b"".join(lines)
    body = block * (size // len(block) + 1)
    return head + body[: size - len(head)].rsplit(b"\r\n", 1)[0] + b"\r\n\r\n\r\n"


class PeakRss:
    """Peak RSS growth of one process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> PeakRss:
        self.before = rss_kib(self.pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return (self.peak - self.before) * 1024


def submit(server: DemoServer, message: bytes, to: list[str]) -> int:
    """Send over STARTTLS + AUTH; returns the server's peak RSS growth (bytes) from after AUTH
    (an argon2id check takes 19 MiB of its own) to the ``250``."""
    account = server.account(SENDER)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=120) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        client.login(account["login"], account["password"])
        with PeakRss(server.process.pid) as peak:
            client.sendmail(SENDER, to, message)
    return peak.growth


def imap(server: DemoServer, address: str) -> imaplib.IMAP4_SSL:
    account = server.account(address)
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=ssl.create_default_context(cafile=server.ca_cert)
    )
    client.login(account["login"], account["password"])
    return client


def fetch(server: DemoServer, address: str, subject: str) -> tuple[bytes | None, int]:
    """The message with this subject over IMAPS (``UID FETCH BODY.PEEK[]``), or None yet, and
    the server's peak RSS growth (bytes) during the FETCH."""
    client = imap(server, address)
    try:
        client.select("INBOX", readonly=True)
        _, [found] = client.uid("SEARCH", "HEADER", "Subject", subject)
        if not found:
            return None, 0
        with PeakRss(server.process.pid) as peak:
            _, data = client.uid("FETCH", found.split()[-1], "(BODY.PEEK[])")
        return bytes(data[0][1]), peak.growth  # type: ignore[index]
    finally:
        client.logout()


def test_big_message_through_submission_relay_and_imap_arrives_identical(world: World) -> None:
    op1, op2 = world.op1.server, world.op2.server
    assert op1 is not None and op2 is not None
    subject = f"gros-{uuid.uuid4().hex[:8]}"
    message = big_message(LOCAL, subject)
    accepting = submit(op1, message, [LOCAL, REMOTE])
    here, _ = fetch(op1, LOCAL, subject)
    assert here is not None and body_digest(here) == body_digest(message)
    there = wait_until(lambda: fetch(op2, REMOTE, subject)[0], timeout=60, what="relayed delivery")
    assert body_digest(there) == body_digest(message)
    # Signed while streaming on op1, verified while streaming on op2: the hashes agree.
    assert f"Authentication-Results: mx.{OP2}; dkim=pass header.d={OP1}".encode() in there
    wait_until(lambda: not queue_of(world.op1), what="empty queue")
    # The buffer received is the one stored, signed and sealed: one copy of the message
    # (+ the 64 KiB pieces in flight), where dkimpy alone used to add 35 copies.
    assert accepting < 2 * SIZE, accepting


def test_big_append_then_fetch_arrive_identical(world: World) -> None:
    op2 = world.op2.server
    assert op2 is not None
    subject = f"append-{uuid.uuid4().hex[:8]}"
    message = big_message(REMOTE, subject)
    client = imap(op2, REMOTE)
    try:
        with PeakRss(op2.process.pid) as appending:
            status, _ = client.append("INBOX", None, None, message)
        assert status == "OK"
    finally:
        client.logout()
    stored, fetching = fetch(op2, REMOTE, subject)
    assert stored == message
    client = imap(op2, REMOTE)
    try:
        client.select("INBOX", readonly=True)
        _, [uid] = client.uid("SEARCH", "HEADER", "Subject", subject)
        _, data = client.uid("FETCH", uid, "(BINARY.SIZE[] BINARY.PEEK[])")
    finally:
        client.logout()
    assert f"BINARY.SIZE[] {len(message)}".encode() in data[0][0]  # type: ignore[index]
    assert bytes(data[0][1]) == message  # type: ignore[index]
    assert appending.growth < 2 * SIZE, appending.growth
    assert fetching < SIZE // 2, fetching


class _Wire:
    """What ``send_data`` writes, with the replies a server would give."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    async def _drain_helper(self) -> None:
        await asyncio.sleep(0)

    async def read_response(self, timeout: Any = None) -> Any:
        return type("Reply", (), {"code": 250, "message": "ok"})()


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([b"a\r\n", b".b\r\n.", b"c\r\n"], b"a\r\n..b\r\n..c\r\n.\r\n"),
        ([b".x\r\n.", b".y"], b"..x\r\n...y\r\n.\r\n"),
        ([b"no end"], b"no end\r\n.\r\n"),
    ],
)
def test_streamed_data_stuffs_dots_across_reads(chunks: list[bytes], wire: bytes) -> None:
    """Relay-out streams DATA from the store a read at a time: a line starting with a dot
    is doubled wherever the reads cut it (RFC 5321 §4.5.2)."""
    protocol = _Wire()

    class Client:
        timeout = 5.0

        def __init__(self) -> None:
            self.protocol = protocol

        async def execute_command(self, *args: bytes) -> Any:
            protocol.write(b" ".join(args) + b"\r\n")
            return type("Reply", (), {"code": 354, "message": "go"})()

    async def stream() -> Any:
        for chunk in chunks:
            yield chunk

    asyncio.run(send_data(Client(), stream()))  # type: ignore[arg-type]
    assert bytes(protocol.written) == b"DATA\r\n" + wire


def test_big_message_memory_comes_back(world: World) -> None:
    """After a few big messages the process is back near where it was: buffers are mmap'd
    (fixed glibc threshold) and the heaps trimmed after each. Once the first has filled
    SQLite's page cache (2 MiB, whatever the message's size), each adds the message once and
    little more: the DATA lines go from the read buffer into the message, the body hash and
    the sealing work a few tens of KiB at a time."""
    op1 = world.op1.server
    assert op1 is not None
    before = rss_kib(op1.process.pid) * 1024
    growths = [
        submit(op1, big_message(LOCAL, f"retour-{n}-{uuid.uuid4().hex[:8]}"), [LOCAL]) for n in range(3)
    ]
    time.sleep(1.0)
    after = rss_kib(op1.process.pid) * 1024
    assert after - before < SIZE, after - before
    assert max(growths[1:]) < SIZE + 1024 * 1024, growths
