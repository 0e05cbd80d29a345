"""Notices by e-mail to the patient's personal address: a real SMTP server on loopback
(aiosmtpd) stands for the outbound relay of ``[notify] smtp_host``; a demo server of its own is
configured to use it. The patient chooses the e-mail channel on the settings page; a
professional deposits a document and reads the record through /pro/; the notices arrive, say
who and when, link to /patient/, and carry no medical content."""

from __future__ import annotations

import email
import email.policy
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from mssante.config import NotifySection
from mssante.notify import Event, Notifier
from tests.demo_server import DemoServer, start_demo
from tests.helpers import csrf_of, web_client

MARTIN, MARIE = "810100000011", "280017512345610"
PERSONAL = "marie.dupont.perso@example.org"
TITLE = "Bilan oncologique confidentiel"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


class Inbox:
    """An aiosmtpd handler keeping what it receives; ``refuse`` first answers 451 that often."""

    def __init__(self, refuse: int = 0) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.refuse = refuse

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            return "451 4.3.0 Try again later"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 2.0.0 OK"

    def wait(self, count: int, timeout: float = 20) -> list[tuple[list[str], EmailMessage]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _relay(inbox: Inbox) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    return controller


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    controller = _relay(inbox)
    try:
        yield controller, inbox
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, relay: tuple[Controller, Inbox]) -> Iterator[DemoServer]:
    controller, _ = relay
    env = {
        "MSSANTE_NOTIFY__SMTP_HOST": "127.0.0.1",
        "MSSANTE_NOTIFY__SMTP_PORT": str(controller.port),
        "MSSANTE_NOTIFY__SMTP_STARTTLS": "false",
        "MSSANTE_NOTIFY__SMTP_FROM": "ne-pas-repondre@demo.mssante.fr",
        "MSSANTE_NOTIFY__PATIENT_URL": "https://espace.demo.mssante.fr/patient/",
    }
    demo = start_demo(tmp_path_factory.mktemp("notify") / "data", env)
    try:
        yield demo
    finally:
        demo.stop()


def _login(demo: DemoServer, space: str, identifier: str, kind: str) -> httpx.Client:
    client = web_client(demo)
    form = client.get(f"/{space}/connexion")
    done = client.post(
        f"/{space}/connexion", data={"csrf": csrf_of(form.text), "token": demo.token(identifier, kind)}
    )
    assert done.status_code == 303, done.text
    return client


def test_notices_reach_the_personal_address_without_medical_content(
    server: DemoServer, relay: tuple[Controller, Inbox]
) -> None:
    _, inbox = relay
    marie = _login(server, "patient", MARIE, "patient")
    settings = marie.get("/patient/profil")
    assert 'id="email-off"' not in settings.text  # the relay is configured: no warning
    chosen = marie.post(
        "/patient/notifications",
        data={"csrf": csrf_of(settings.text), "channel": "email", "email": PERSONAL},
    )
    assert chosen.status_code == 303

    martin = _login(server, "pro", MARTIN, "professional")
    record = martin.get(f"/pro/patients/{MARIE}")  # a consultation: first of the day → a notice
    assert record.status_code == 200
    deposited = martin.post(
        f"/pro/patients/{MARIE}/documents",
        data={"csrf": csrf_of(record.text), "type_code": "11488-4", "title": TITLE},
        files={"file": ("cr.pdf", PDF)},
    )
    assert deposited.status_code == 303, deposited.text

    received = inbox.wait(2)
    assert len(received) >= 2, server.log()[-3000:]
    subjects = {msg["Subject"]: (rcpt, msg) for rcpt, msg in received}
    rcpt, added = subjects["Un nouveau document est disponible dans votre dossier"]
    assert rcpt == [PERSONAL] and added["To"] == PERSONAL
    assert added["From"] == "ne-pas-repondre@demo.mssante.fr"
    body = added.get_content()
    assert "Un nouveau document est disponible dans votre dossier" in body
    assert "Dr Claire MARTIN" in body and re.search(r"le \d+ \w+ \d{4} à \d\d:\d\d", body)
    assert "https://espace.demo.mssante.fr/patient/" in body
    consulted = subjects["Votre dossier a été consulté"][1].get_content()
    assert "Dr Claire MARTIN" in consulted and "a consulté votre dossier médical" in consulted
    for _, msg in received:  # no medical content: no title, no type code or label, no attachment
        raw = msg.as_string()
        for secret in (TITLE, "oncolog", "11488-4", "Compte rendu", "consultation", ".pdf"):
            assert secret.lower() not in raw.lower(), secret
        assert not msg.is_multipart()


def test_settings_page_says_when_email_is_not_configured(demo: DemoServer) -> None:
    marie = _login(demo, "patient", MARIE, "patient")
    assert 'id="email-off"' in marie.get("/patient/profil").text


def test_a_refusing_relay_is_retried_in_the_background(tmp_path: Path) -> None:
    inbox = Inbox(refuse=2)
    controller = _relay(inbox)
    try:
        config = NotifySection(
            smtp_host="127.0.0.1",
            smtp_port=controller.port,
            smtp_starttls=False,
            smtp_from="ne-pas-repondre@demo.mssante.fr",
            backoff_base_seconds=0.05,
        )
        notifier = Notifier(config, patient_url="https://x.example/patient/")
        started = time.monotonic()
        notifier.notify(
            Event(
                "dmp.break_glass",
                f"{MARIE}@patient.demo.mssante.fr",
                {"channel": "email", "email": PERSONAL, "actor": MARTIN, "actor_role": "professional"},
                at=datetime(2026, 12, 6, 0, 30, tzinfo=UTC),
            )
        )
        assert time.monotonic() - started < 0.05  # never waits on the relay
        assert notifier.flush(10)
        notifier.close()
    finally:
        controller.stop()
    assert notifier.attempts == 3 and notifier.delivered == 1
    ((_, msg),) = inbox.messages
    text = msg.get_content()
    assert "l'accès d'urgence (bris de glace)" in text and "le 6 décembre 2026 à 01:30" in text
    assert "Le professionnel n° 810100000011" in text  # no annuaire here: named by number
