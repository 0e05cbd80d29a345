"""End to end in demo configuration: a message submitted over SMTP (STARTTLS, AUTH) is read
over IMAP by its recipient, byte-identical to what the store holds, the submitted message
intact after the trace headers the server adds."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest

from mssante import demo
from mssante.config import load_settings
from mssante.imap.listeners import start_imap
from mssante.runtime import Runtime, initialise, open_runtime
from mssante.smtp.listeners import start_smtp

MARTIN = "claire.martin@demo.mssante.fr"
DURAND = "paul.durand@demo.mssante.fr"


@dataclass
class Demo:
    runtime: Runtime
    ports: dict[str, int]
    ca_file: str
    document: dict[str, Any]

    def password(self, address: str) -> str:
        return str(next(a["password"] for a in self.document["accounts"] if a["address"] == address))


@pytest.fixture
async def demo_doors(tmp_path: Path) -> AsyncIterator[Demo]:
    settings = load_settings(
        None,
        server={"data_dir": str(tmp_path / "data")},
        smtp={"submission_port": 0, "submissions_port": 0, "relay_port": 0},
        imap={"port": 0, "tls_port": 0},
    )
    demo.demo_settings(settings)
    initialise(settings)
    document = demo.setup(settings)
    runtime = open_runtime(settings)
    listeners = [*(await start_smtp(runtime)), *(await start_imap(runtime))]
    try:
        yield Demo(runtime, {item.name: item.port for item in listeners}, document["ca_cert"], document)
    finally:
        for item in reversed(listeners):
            await item.close()
        runtime.close()


def _submit(d: Demo, raw: str) -> None:
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=d.ca_file))
        client.login(MARTIN, d.password(MARTIN))
        assert client.sendmail(MARTIN, [DURAND], raw.encode()) == {}


def _read(d: Demo) -> tuple[bytes, bytes]:
    context = ssl.create_default_context(cafile=d.ca_file)
    with imaplib.IMAP4_SSL("localhost", d.ports["imaps"], ssl_context=context) as imap:
        imap.login(DURAND, d.password(DURAND))
        assert imap.select("INBOX")[1] == [b"1"]
        _, data = imap.fetch("1", "(BODY.PEEK[] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        whole, subject = data[0][1], data[1][1] if isinstance(data[1], tuple) else b""
        imap.logout()
    # The STARTTLS door serves the same mailbox.
    imap = imaplib.IMAP4("127.0.0.1", d.ports["imap"])
    try:
        imap.starttls(ssl_context=ssl.create_default_context(cafile=d.ca_file))
        imap.login(DURAND, d.password(DURAND))
        assert imap.status("INBOX", "(MESSAGES)")[1] == [b"INBOX (MESSAGES 1)"]
    finally:
        imap.logout()
    return whole, subject


async def test_submitted_message_is_read_over_imap_byte_identical(demo_doors: Demo) -> None:
    raw = (
        f"From: {MARTIN}\r\nTo: {DURAND}\r\nSubject: Avis cardiologique\r\nDate: {formatdate()}\r\n"
        f"Message-ID: {make_msgid(domain='demo.mssante.fr')}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Cher confrère,\r\nmerci de voir ce patient.\r\n"
    )
    await asyncio.to_thread(_submit, demo_doors, raw)
    store = demo_doors.runtime.store
    for _ in range(100):
        folder = await store.folder(DURAND, "INBOX")
        rows = await store.messages(folder.id)
        if rows:
            break
        await asyncio.sleep(0.02)
    stored = await store.body(rows[0].blob_id)
    fetched, subject = await asyncio.to_thread(_read, demo_doors)
    assert fetched == stored
    assert fetched.endswith(raw.encode())
    assert subject == b"Subject: Avis cardiologique\r\n\r\n"


async def test_refusals_wrong_password_and_a_login_whose_one_bal_is_delegated(demo_doors: Demo) -> None:
    pharmacy = next(a for a in demo_doors.document["accounts"] if a["address"].startswith("pharmacie.parc@"))

    def attempt(login: str, password: str) -> str | list[bytes]:
        context = ssl.create_default_context(cafile=demo_doors.ca_file)
        with imaplib.IMAP4_SSL("localhost", demo_doors.ports["imaps"], ssl_context=context) as imap:
            try:
                imap.login(login, password)
            except imaplib.IMAP4.error as exc:
                return str(exc)
            return imap.list()[1]

    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(attempt, MARTIN, "not the password")
    # The pharmacist's login is not itself a BAL: its only BAL, the pharmacy's ORG BAL (she is its
    # responsible), opens as her mailbox, with its special-use folders.
    listed = await asyncio.to_thread(attempt, pharmacy["login"], pharmacy["password"])
    assert isinstance(listed, list)
    names = [line.rsplit(b' "/" ', 1)[1] for line in listed if isinstance(line, bytes)]
    assert sorted(names) == [b"Archive", b"Drafts", b"INBOX", b"Sent", b"Trash"]
    assert any(b"\\Sent" in line for line in listed if isinstance(line, bytes))


async def test_application_authenticates_with_its_certificate(demo_doors: Demo) -> None:
    app = next(a for a in demo_doors.document["accounts"] if a["address"].startswith("dpi@"))

    def attempt() -> tuple[str, list[bytes]]:
        context = ssl.create_default_context(cafile=demo_doors.ca_file)
        context.load_cert_chain(app["client_cert"], app["client_key"])
        with imaplib.IMAP4_SSL("localhost", demo_doors.ports["imaps"], ssl_context=context) as imap:
            assert "AUTH=EXTERNAL" in imap.capabilities
            typ, _ = imap.authenticate("EXTERNAL", lambda _: b"")
            listing = imap.list()[1]
            imap.logout()
            return typ, listing

    typ, listing = await asyncio.to_thread(attempt)
    assert typ == "OK"
    assert b'(\\HasNoChildren) "/" INBOX' in listing
