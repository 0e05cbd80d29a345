"""Delegates in Python mail libraries we did not write (imapclient, aioimaplib), against the demo
server over TLS: a secretary of two BALs configures one account per BAL — one with the SASL
authorization identity, one with the ``<BAL>*<login>`` user name — reads INBOX, replies (sent by
SMTP with the same credentials), files the reply into the BAL's Sent and the original into its
Trash, both found by their special-use attributes; a pharmacist whose login only opens the
pharmacy does the same with a plain login; UTF-8 subject, body and folder names round-trip.
"""

from __future__ import annotations

import email.policy
import imaplib
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import aioimaplib
import pytest
from imapclient import IMAPClient
from imapclient.imapclient import SEEN, SENT, TRASH

from tests.clients_setup import (
    DURAND,
    MARTIN,
    PHARMACIST,
    PHARMACY,
    Person,
    check_reply,
    cli,
    deliver,
    demo_person,
    headers,
    letter,
    revoke_grants,
    smtp,
    staff,
    tls,
)
from tests.demo_server import DemoServer


@pytest.fixture(scope="module", autouse=True)
def _grants_revoked_after(demo: DemoServer) -> Iterator[None]:
    yield
    revoke_grants(demo)


CARDIO = "cardiologie@demo.mssante.fr"


@pytest.fixture(scope="module")
def secretary(demo: DemoServer) -> Person:
    """Julie, secretary of Dr MARTIN and of the cardiology service."""
    return staff(demo, "julie", {MARTIN: "lrswite send", CARDIO: "lrswite send"})


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


def imapclient(demo: DemoServer) -> IMAPClient:
    return IMAPClient("localhost", port=demo.port("imaps"), ssl=True, ssl_context=tls(demo), timeout=30)


def reply_to(original: Any, bal: str) -> Any:
    reply = letter(bal, DURAND, f"Re: {original['Subject']}", "Bien reçu, merci.\n")
    reply["In-Reply-To"] = original["Message-ID"]
    return reply


def handle_with_imapclient(demo: DemoServer, client: IMAPClient, bal: str, smtp_user: str, pw: str) -> str:
    """Read the newest mail from Dr DURAND, reply, file the reply in Sent, the original in Trash."""
    subject = unique("Compte rendu")
    deliver(demo, bal, subject)
    sent, trash = client.find_special_folder(SENT), client.find_special_folder(TRASH)
    assert (sent, trash) == ("Sent", "Trash")  # the BAL's own, announced by SPECIAL-USE
    client.select_folder("INBOX")
    [uid] = client.search(["SUBJECT", subject])
    original = headers(client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"])
    assert original["Subject"] == subject and "Patient vu ce jour." in original.get_content()
    reply = reply_to(original, bal)
    with smtp(demo, smtp_user, pw) as sender:
        sender.send_message(reply)
    client.append(sent, reply.as_bytes(), flags=[SEEN])
    client.move([uid], trash)
    return subject


def test_secretary_with_authzid_in_imapclient(demo: DemoServer, secretary: Person) -> None:
    client = imapclient(demo)
    try:
        client.plain_login(secretary.login, secretary.password, authorization_identity=MARTIN)
        assert client.namespace().personal == (("", "/"),)
        subject = handle_with_imapclient(
            demo, client, MARTIN, secretary.as_delegate(MARTIN), secretary.password
        )
    finally:
        client.logout()
    check_reply(demo, MARTIN, secretary, subject)
    trail = [json.loads(line) for line in cli(demo, "audit", "show", "--bal", MARTIN, "--json").splitlines()]
    actor = f"staff:{secretary.login.split('@')[0]}"
    assert any(e["action"] == "mailbox.open_on_behalf" and e["actor"] == actor for e in trail)


def test_read_only_delegate_gets_read_only_and_noperm(demo: DemoServer) -> None:
    reader = staff(demo, "lecture", {MARTIN: "read-only"})
    client = imapclient(demo)
    try:
        client.login(reader.as_delegate(MARTIN), reader.password)
        with pytest.raises(imaplib.IMAP4.readonly):  # imaplib's word for SELECT's [READ-ONLY]
            client.select_folder("INBOX")
    finally:
        client.shutdown()  # imaplib refuses any further command, LOGOUT included
    client = imapclient(demo)
    try:
        client.login(reader.as_delegate(MARTIN), reader.password)
        with pytest.raises(Exception, match=r"NOPERM"):
            client.append("Sent", letter(MARTIN, DURAND, "Brouillon").as_bytes())
    finally:
        client.logout()
    with smtp(demo, reader.as_delegate(MARTIN), reader.password) as sender:
        code, text = sender.mail(MARTIN)
    assert code == 550 and b"may not send as" in text  # no "send" right: SMTP refuses


async def test_secretary_with_bal_star_login_in_aioimaplib(demo: DemoServer, secretary: Person) -> None:
    subject = unique("Demande d'avis")
    deliver(demo, CARDIO, subject)
    client = aioimaplib.IMAP4_SSL("localhost", demo.port("imaps"), ssl_context=tls(demo), timeout=30)
    await client.wait_hello_from_server()
    user = secretary.as_delegate(CARDIO)
    assert (await client.login(user, secretary.password)).result == "OK"
    listed = b"\n".join(line for line in (await client.list('""', "*")).lines if isinstance(line, bytes))
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in listed and b"\\Trash" in listed
    assert (await client.select("INBOX")).result == "OK"
    found = await client.uid_search(f'SUBJECT "{subject}"')
    [uid] = found.lines[0].decode().split()
    fetched = await client.uid("fetch", uid, "(BODY.PEEK[])")
    original = headers(bytes(next(line for line in fetched.lines if isinstance(line, bytearray))))
    reply = reply_to(original, CARDIO)
    with smtp(demo, user, secretary.password) as sender:
        sender.send_message(reply)
    appended = await client.append(reply.as_bytes(), mailbox="Sent", flags="(\\Seen)")
    assert appended.result == "OK"
    assert (await client.uid("move", uid, "Trash")).result == "OK"
    await client.logout()
    check_reply(demo, CARDIO, secretary, subject)


def test_pharmacist_plain_login_opens_the_pharmacy(demo: DemoServer) -> None:
    pharmacist = demo_person(demo, PHARMACY)
    assert pharmacist.login == PHARMACIST
    client = imapclient(demo)
    try:
        client.login(pharmacist.login, pharmacist.password)  # no BAL named: her one BAL is INBOX
        assert client.namespace().other is None
        # A plain LOGIN sends as the pharmacy too: the SMTP policy checks her send right.
        subject = handle_with_imapclient(demo, client, PHARMACY, pharmacist.login, pharmacist.password)
    finally:
        client.logout()
    check_reply(demo, PHARMACY, pharmacist, subject, delegate=False)  # she holds it: no Sender:


def test_utf8_subject_body_and_folder_round_trip(demo: DemoServer, secretary: Person) -> None:
    subject = unique("Échographie cardiaque — résultats ✓")
    body = "Épanchement péricardique minime ; FEVG à 55 %.\n"
    message = letter(DURAND, MARTIN, subject, body)
    durand = demo_person(demo, DURAND)
    with smtp(demo, durand.login, durand.password) as sender:
        # SMTPUTF8: the Subject travels as UTF-8, unencoded (RFC 6532).
        raw = message.as_bytes(policy=email.policy.SMTPUTF8)
        assert subject.encode() in raw
        sender.sendmail(DURAND, [MARTIN], raw, mail_options=["SMTPUTF8"])
    client = imapclient(demo)
    try:
        client.login(secretary.as_delegate(MARTIN), secretary.password)
        client.select_folder("INBOX", readonly=True)
        [uid] = client.search(["SUBJECT", subject.split()[-1]])
        raw = client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"]
        got = headers(raw)
        assert got["Subject"] == subject and got.get_content().replace("\r\n", "\n") == body
        # Her rights have no "k": the refusal names the folder in modified UTF-7.
        with pytest.raises(Exception, match=r"NOPERM\] Permission denied on R&AOk-sultats"):
            client.create_folder("Résultats")
    finally:
        client.logout()
    # A folder with a non-ASCII name: imapclient speaks modified UTF-7, the store keeps Unicode.
    client = imapclient(demo)
    try:
        client.login(durand.login, durand.password)
        folder = f"Comptes rendus/Échographies {uuid.uuid4().hex[:4]}"
        client.create_folder(folder)
        assert folder in [name for _flags, _delim, name in client.list_folders("Comptes rendus/")]
        client.append(folder, raw)
        client.select_folder(folder)
        [uid] = client.search(["ALL"])
        assert headers(client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"])["Subject"] == subject
    finally:
        client.logout()


class Raw:
    """Exact IMAP responses over TLS, to see mailbox names as they are on the wire."""

    def __init__(self, demo: DemoServer) -> None:
        sock = socket.create_connection(("127.0.0.1", demo.port("imaps")), timeout=15)
        self.sock = ssl.create_default_context(cafile=demo.ca_cert).wrap_socket(
            sock, server_hostname="localhost"
        )
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.count = 0

    def command(self, text: str) -> list[bytes]:
        self.count += 1
        tag = f"r{self.count}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.file.readline().rstrip(b"\r\n")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.command("LOGOUT")
        self.file.close()
        self.sock.close()


def test_mailbox_names_are_modified_utf7_unless_utf8_accept(demo: DemoServer) -> None:
    durand = demo_person(demo, DURAND)
    label = uuid.uuid4().hex[:6]
    raw = Raw(demo)
    try:
        assert b"UTF8=ACCEPT" in raw.command("CAPABILITY")[0]
        assert raw.command(f"LOGIN {durand.login} {durand.password}")[-1].split()[1] == b"OK"
        missing = raw.command('SELECT "Partag&AOk-/nobody@demo.mssante.fr/INBOX"')[-1]
        expected = b"NO [NONEXISTENT] Mailbox Partag&AOk-/nobody@demo.mssante.fr/INBOX does not exist"
        assert missing.endswith(expected)
        raw.command(f'CREATE "R&AOk-sultats {label}"')
        assert any(
            line.endswith(f'"/" "R&AOk-sultats {label}"'.encode()) for line in raw.command('LIST "" "R*"')
        )
        # RFC 6855: once enabled, names are UTF-8 quoted strings, both ways.
        assert raw.command("ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
        assert any(line.endswith(f'"/" "Résultats {label}"'.encode()) for line in raw.command('LIST "" "R*"'))
        assert raw.command(f'SELECT "Résultats {label}"')[-1].split()[1] == b"OK"
        missing = raw.command('SELECT "Partagé/nobody@demo.mssante.fr/INBOX"')[-1]
        assert missing.endswith("Mailbox Partagé/nobody@demo.mssante.fr/INBOX does not exist".encode())
        namespace = raw.command("NAMESPACE")[0]
        assert namespace == '* NAMESPACE (("" "/")) NIL (("Partagé/" "/"))'.encode()
    finally:
        raw.close()


def test_a_secretary_of_several_bals_works_in_the_shared_namespace(
    demo: DemoServer, secretary: Person
) -> None:
    raw = Raw(demo)
    try:
        assert raw.command(f"LOGIN {secretary.login} {secretary.password}")[-1].split()[1] == b"OK"
        # Two BALs and none of her own: no personal namespace, each BAL under Partagé/.
        assert raw.command("NAMESPACE")[0] == b'* NAMESPACE NIL NIL (("Partag&AOk-/" "/"))'
        listed = b"\n".join(raw.command('LIST "" "*"'))
        for bal in (MARTIN, CARDIO):
            assert (
                f'"Partag&AOk-/{bal}/INBOX"'.encode() in listed
                or f"Partag&AOk-/{bal}/INBOX".encode() in listed
            )
        assert raw.command("SELECT INBOX")[-1].split()[1:3] == [b"NO", b"[NONEXISTENT]"]
    finally:
        raw.close()
