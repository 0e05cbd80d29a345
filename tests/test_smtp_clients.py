"""What ordinary clients send, accepted as they send it (issue 15), on the demo server over TLS:
a script's ``smtp.sendmail(from, to, msg.as_bytes())`` with LF line ends, a delegate's client
writing its own ``Sender:``, internationalised (SMTPUTF8) addresses and headers. Read back
through IMAP, as the recipient's client would."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest
from imapclient import IMAPClient

from tests.demo_server import DemoServer

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
CARDIO = f"cardiologie@{DOMAIN}"
ACCUEIL = f"accueil.cardiologie@{DOMAIN}"  # front desk, member of the cardiology ORG BAL


def context(demo: DemoServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=demo.ca_cert)


def smtp(demo: DemoServer, login: str) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL("127.0.0.1", demo.port("submissions"), context=context(demo), timeout=30)
    account = demo.account(login)
    client.login(account["login"], account["password"])
    return client


def fetch(demo: DemoServer, login: str, subject: str) -> list[tuple[bytes, object]]:
    """(BODY[], ENVELOPE) of each message of ``login``'s INBOX whose subject holds ``subject``."""
    account = demo.account(login)
    with IMAPClient("127.0.0.1", port=demo.port("imaps"), ssl=True, ssl_context=context(demo)) as imap:
        imap.login(account["login"], account["password"])
        imap.select_folder("INBOX", readonly=True)
        found = imap.search(["SUBJECT", subject])
        data = imap.fetch(found, ["BODY.PEEK[]", "ENVELOPE"]) if found else {}
        return [(d[b"BODY[]"], d[b"ENVELOPE"]) for d in data.values()]


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


# -- line endings (issue 15 item 4) ---------------------------------------------------------------
def test_script_sending_lf_only_message_arrives_with_crlf(demo: DemoServer) -> None:
    subject = unique("script")
    msg = EmailMessage()  # default policy: LF line ends in as_bytes()
    msg["From"] = MARTIN
    msg["To"] = DURAND
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=DOMAIN)
    msg.set_content("Bonjour,\n.ligne qui commence par un point\n..deux points\nrésultats joints.\n")
    sent = msg.as_bytes()
    assert b"\r" not in sent
    with smtp(demo, MARTIN) as client:
        assert client.sendmail(MARTIN, [DURAND], sent) == {}
    [(raw, _)] = fetch(demo, DURAND, subject)
    # smtplib dot-stuffs, and ends the data with CRLF "." CRLF after the LF-ended last line.
    expected = sent.replace(b"\n", b"\r\n") + b"\r\n"
    assert raw.endswith(expected), raw[-300:]
    trace = raw[: -len(expected)]
    assert trace.startswith(b"Received: from ") and trace.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")


def test_mixed_line_ends_are_normalised_and_lone_dot_next_to_bare_lf_refused(demo: DemoServer) -> None:
    subject = unique("mixed")
    head = f"From: {MARTIN}\r\nTo: {DURAND}\nSubject: {subject}\r\nDate: {formatdate()}\n\n"
    with smtp(demo, MARTIN) as client:
        client.mail(MARTIN)
        client.rcpt(DURAND)
        code, reply = client.data((head + "ligne LF\nligne CRLF\r\n").encode())
        assert code == 250, reply
        client.mail(MARTIN)
        client.rcpt(DURAND)
        # smtplib does not stuff a dot after a bare CR: a lone "." next to a bare LF remains.
        client.send(b"DATA\r\n")
        assert client.getreply()[0] == 354
        client.send((head + "avant\n.\r\napres\r\n.\r\n").encode())
        code, reply = client.getreply()
    assert code == 550 and reply.startswith(b"5.6.0 A lone '.' line next to a bare LF"), reply
    [(raw, _)] = fetch(demo, DURAND, subject)
    sent = (head + "ligne LF\nligne CRLF\r\n").replace("\r\n", "\n").replace("\n", "\r\n")
    assert raw.endswith(sent.encode()), raw


# -- one Sender: (issue 15 item 2) ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("login", "bal", "client_sender", "stored_sender"),
    [
        # The delegate's own client names her (Nodemailer, neomutt do): kept, display name and all.
        (ACCUEIL, CARDIO, f'"Accueil cardiologie" <{ACCUEIL}>', f'"Accueil cardiologie" <{ACCUEIL}>'),
        # It names someone else: replaced by the authenticated delegate.
        (ACCUEIL, CARDIO, f"<{DURAND}>", ACCUEIL),
        # None: the server names the delegate.
        (ACCUEIL, CARDIO, None, ACCUEIL),
        # The owner's client names another doctor: dropped (the author sends).
        (MARTIN, MARTIN, f"<{DURAND}>", None),
    ],
)
def test_exactly_one_sender(
    demo: DemoServer, login: str, bal: str, client_sender: str | None, stored_sender: str | None
) -> None:
    subject = unique("sender")
    header = f"From: {bal}\r\nTo: {DURAND}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
    if client_sender is not None:
        header += f"Sender: {client_sender}\r\n"
    with smtp(demo, login) as client:
        assert client.sendmail(bal, [DURAND], (header + "\r\nbonjour\r\n").encode()) == {}
    [(raw, envelope)] = fetch(demo, DURAND, subject)
    fields = [
        line for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(b"sender:")
    ]
    assert fields == ([] if stored_sender is None else [f"Sender: {stored_sender}".encode()])
    shown = envelope.sender[0]  # type: ignore[attr-defined]
    expected = stored_sender or bal
    assert f"{shown.mailbox.decode()}@{shown.host.decode()}" in expected


# -- SMTPUTF8 (issue 15 item 3) -------------------------------------------------------------------
def test_utf8_addresses_in_smtputf8_transactions(demo: DemoServer) -> None:
    with smtp(demo, MARTIN) as client:
        code, reply = client.mail(MARTIN, ["SMTPUTF8"])
        assert code == 250, reply
        code, reply = client.rcpt("amélie.martin@demo.mssante.fr")
        assert code == 550 and reply.startswith(
            "5.1.1 <amélie.martin@demo.mssante.fr>: no such mailbox".encode()
        )
        code, reply = client.rcpt("ame\u0301lie.martin@demo.mssante.fr")  # decomposed: the same
        assert code == 550 and reply.startswith("5.1.1 <amélie.martin@demo.mssante.fr>".encode())
        code, reply = client.rcpt("Paul.Durand@Demo.MSSante.FR")
        assert code == 250, reply
        client.rset()
        # Outside SMTPUTF8, a UTF-8 address is refused as such (RFC 6531 §3.5).
        client.mail(MARTIN)
        client.send("RCPT TO:<amélie.martin@demo.mssante.fr>\r\n".encode())
        code, reply = client.getreply()
        assert code == 553 and reply.startswith(b"5.6.7"), reply


def test_8bit_headers_only_in_smtputf8_transactions(demo: DemoServer) -> None:
    subject = unique("entete")
    text = (
        f"From: Dr Claire MARTIN <{MARTIN}>\r\nTo: {DURAND}\r\nSubject: {subject} élevé\r\n"
        f"Date: {formatdate()}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nRésultats.\r\n"
    ).encode()
    with smtp(demo, MARTIN) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(MARTIN, [DURAND], text)
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.startswith(b"5.6.7 8-bit text in header line 3 needs an SMTPUTF8")
        assert client.sendmail(MARTIN, [DURAND], text, mail_options=["SMTPUTF8"]) == {}
    [(raw, _)] = fetch(demo, DURAND, subject)
    assert raw.endswith(text)
