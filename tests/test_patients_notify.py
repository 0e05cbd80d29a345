"""Patient notifications end to end: a demo server of our own with a webhook, a real HTTP
receiver that checks the HMAC signature, and a webhook that goes down while mail keeps flowing."""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from mssante.audit import AuditRecord
from mssante.auth.devpki import DevCA
from mssante.config import load_settings
from mssante.db import make_engine
from mssante.notify import ATTEMPT_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign, verify
from tests.demo_server import DemoServer, start_demo
from tests.mailbox import StoredMail
from tests.test_patients_smtp import CARDIO, MARTIN, mail, patients, send

SECRET = "webhook-secret-for-patients"


class Receiver:
    """A webhook on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mssante/notifications"

    def events(self, recipient: str) -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        with self.lock:
            items = list(self.received)
        out = []
        for headers, body in items:
            event = json.loads(body)
            # the demo's DMP documents notify the patients too: only messages matter here
            if event["recipient"] == recipient and event["kind"] == "patient.message.received":
                out.append((headers, event, body))
        return out

    def wait(
        self, recipient: str, count: int, timeout: float = 15.0
    ) -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        deadline = time.monotonic() + timeout
        while len(found := self.events(recipient)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} notifications for {recipient} arrived")
            time.sleep(0.05)
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    if r.server is not None:
        r.stop()


@pytest.fixture(scope="module")
def server(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {
        "MSSANTE_NOTIFY__WEBHOOK_URL": receiver.url,
        "MSSANTE_NOTIFY__SECRET": SECRET,
        "MSSANTE_NOTIFY__BACKOFF_BASE_SECONDS": "0.2",
        "MSSANTE_NOTIFY__BACKOFF_MAX_SECONDS": "0.5",
        "MSSANTE_NOTIFY__MAX_ATTEMPTS": "60",
    }
    demo = start_demo(tmp_path_factory.mktemp("patients-notify") / "data", env)
    try:
        yield demo
    finally:
        code = demo.stop()
        assert code == 0, f"demo server exited with {code}:\n{demo.log()}"


def _ins(patient: str) -> str:
    return patient.partition("@")[0]


def test_a_new_message_to_a_patient_is_notified_signed_and_without_content(
    server: DemoServer, receiver: Receiver
) -> None:
    patient = patients(server)[0]
    subject = f"Compte rendu confidentiel {uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC).replace(microsecond=0)
    _, raw = mail(MARTIN, [patient], subject, from_name="Quelqu'un d'autre")
    assert send(server, MARTIN, MARTIN, [patient], raw).ok
    [(headers, event, body)] = receiver.wait(patient, 1)
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("another secret", body, headers[SIGNATURE_HEADER])
    assert headers[SIGNATURE_HEADER] == sign(SECRET, body)
    assert headers[EVENT_HEADER] == "patient.message.received"
    assert set(event) == {"id", "kind", "recipient", "at", "data"}
    # The recipient's INS, the time and the sender as the annuaire names it (not the From: name),
    # and the channel the patient chose for notices (the app's webhook unless they chose e-mail).
    assert event["data"] == {"ins": _ins(patient), "sender": "Claire MARTIN", "channel": "webhook"}
    at = datetime.fromisoformat(event["at"])
    assert before <= at <= datetime.now(UTC) + timedelta(seconds=1)
    assert subject.encode() not in body and b"message de test" not in body


def test_an_org_bal_is_named_by_its_structure_and_service(server: DemoServer, receiver: Receiver) -> None:
    patient = patients(server)[1]
    already = len(receiver.events(patient))
    _, raw = mail(CARDIO, [patient], "Convocation")
    assert send(server, CARDIO, CARDIO, [patient], raw).ok
    events = receiver.wait(patient, already + 1)
    assert events[-1][1]["data"]["sender"] == "Centre hospitalier de Démo — Cardiologie"


def test_webhook_down_mail_flows_and_notifications_are_retried(
    server: DemoServer, receiver: Receiver
) -> None:
    patient = patients(server)[0]
    already = len(receiver.events(patient))
    receiver.stop()
    subjects = [f"Pendant la panne {uuid.uuid4().hex[:8]}" for _ in range(3)]
    durations = []
    for subject in subjects:
        _, raw = mail(MARTIN, [patient], subject)
        started = time.monotonic()
        assert send(server, MARTIN, MARTIN, [patient], raw).ok
        durations.append(time.monotonic() - started)
    assert max(durations) < 2.0, durations  # the dead webhook holds nothing up
    stored = StoredMail(server.data_dir)
    try:
        for subject in subjects:
            assert len(stored.with_subject(patient, subject)) == 1
    finally:
        stored.close()
    time.sleep(1.0)  # several attempts fail meanwhile
    receiver.start()
    events = receiver.wait(patient, already + 3)[already:]
    assert len({e[1]["id"] for e in events}) == 3
    for headers, _, body in events:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert int(headers[ATTEMPT_HEADER]) >= 2
    assert "notification" in server.log() and "retry in" in server.log()


def test_replies_from_patients_notify_nobody(server: DemoServer, receiver: Receiver) -> None:
    patient = patients(server)[1]
    already = len(receiver.events(patient))
    msgid, raw = mail(MARTIN, [patient], "Question")
    assert send(server, MARTIN, MARTIN, [patient], raw).ok
    count = len(receiver.wait(patient, already + 1))
    _, raw = mail(patient, [MARTIN], "Re: Question", in_reply_to=msgid)
    assert send(server, patient, patient, [MARTIN], raw).ok
    time.sleep(0.5)
    assert len(receiver.events(patient)) == count
    assert all(json.loads(b)["recipient"] != MARTIN for _, b in receiver.received)


EXTERNAL_OPERATOR = "cabinet-externe.mssante.fr"


def test_a_professional_of_another_operator_opens_a_conversation_through_relay_in(
    server: DemoServer, receiver: Receiver
) -> None:
    """Relay-in: the conversation is recorded against the remote professional's BAL; the
    patient's reply goes back through the outbound queue; the notification uses the From: name
    (the remote BAL is not in this operator's annuaire)."""
    settings = load_settings(None, server={"data_dir": str(server.data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    with Session(engine) as session, session.begin():
        annuaire_service.add_operator_domain(session, domain=EXTERNAL_OPERATOR, actor="test")
    engine.dispose()
    issued = DevCA.load(server.data_dir / "certs").issue_client(server.data_dir / "peer", EXTERNAL_OPERATOR)
    context = ssl.create_default_context(cafile=server.ca_cert)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    patient = patients(server)[0]
    remote = f"dr.externe@{EXTERNAL_OPERATOR}"
    already = len(receiver.events(patient))
    msgid, raw = mail(remote, [patient], "Avis", from_name="Dr Externe")
    deadline = time.monotonic() + 10
    with smtplib.SMTP("127.0.0.1", server.port("relay"), timeout=30) as client:
        client.starttls(context=context)
        client.ehlo("mx.cabinet-externe.test")
        while (reply := client.mail(remote))[0] != 250 and time.monotonic() < deadline:
            time.sleep(0.3)  # the server sees the new whitelist entry within a second
            client.rset()
        assert reply[0] == 250, reply
        assert client.rcpt(patient)[0] == 250
        assert client.data(raw)[0] == 250
    [(_, event, _)] = receiver.wait(patient, already + 1)[already:]
    assert event["data"]["sender"] == "Dr Externe"
    # The patient may answer the remote professional, and only them.
    reply_id, raw = mail(patient, [remote], "Re: Avis", in_reply_to=msgid)
    assert send(server, patient, patient, [remote], raw).ok
    # Queued for the other operator in the accepting transaction (read from the audit trail:
    # the relay worker may already have taken the queue entry).
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        details = session.scalars(
            select(AuditRecord.detail).where(
                AuditRecord.action == "message.queue", AuditRecord.object == EXTERNAL_OPERATOR
            )
        ).all()
    engine.dispose()
    assert [d for d in map(json.loads, details) if d["message_id"] == reply_id] == [
        {"from": patient, "to": [remote], "message_id": reply_id}
    ]
    other = f"dr.autre@{EXTERNAL_OPERATOR}"
    _, raw = mail(patient, [other], "Re: Avis", in_reply_to=msgid)
    reply = send(server, patient, patient, [other], raw)
    assert (reply.stage, reply.code) == ("DATA", 550) and f"pas à <{other}>" in reply.text, reply
