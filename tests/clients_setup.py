"""What the end-to-end client tests share: people made with the real command line on the demo
server (a secretary of two doctors, a pharmacy assistant), mail delivered to a BAL, and a check of
what a BAL's folders hold, read with Python's imaplib as the holder would.

The people are new logins of each test module, so the grants other modules change on the demo's
own secretary cannot affect them.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from annuaire.lookup import Annuaire
from delegation import grants
from mssante.config import load_settings
from mssante.db import make_engine, transaction
from tests.demo_server import DemoServer

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
PHARMACY = f"pharmacie.parc@{DOMAIN}"
PHARMACIST = f"sophie.bernard@{DOMAIN}"  # the pharmacy's responsible: its login opens the pharmacy


def cli(demo: DemoServer, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    done = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(demo.data_dir), *args],
        capture_output=True, text=True, env=env, timeout=60, input=stdin,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass(frozen=True)
class Person:
    login: str
    password: str

    def as_delegate(self, bal: str) -> str:
        """Dovecot's master-user form: the user name that opens ``bal`` as the session's own."""
        return f"{bal}*{self.login}"


_GRANTED: list[tuple[str, str]] = []  # (BAL, grantee principal) given by staff(), revoked after


def staff(demo: DemoServer, label: str, grants: dict[str, str]) -> Person:
    """A new staff login (``mssante user add``) with the grants ``{BAL: rights}``; each test
    module revokes them when it ends (:func:`revoke_grants`), so no other module sees them."""
    local = f"{label}.{uuid.uuid4().hex[:6]}"
    person = Person(f"{local}@{DOMAIN}", uuid.uuid4().hex)
    cli(demo, "user", "add", person.login, "--kind", "staff", "--id", local, "--password-stdin",
        stdin=person.password + "\n")  # fmt: skip
    for bal, rights in grants.items():
        cli(demo, "delegation", "grant", bal, person.login, rights, "--reason", "test des clients")
        _GRANTED.append((bal, f"staff:{local}"))
    return person


def revoke_grants(demo: DemoServer) -> None:
    """Revoke what :func:`staff` granted, in the demo's database (as the CLI would, faster)."""
    settings = load_settings(None, server={"data_dir": str(demo.data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    try:
        annuaire = Annuaire(engine)
        while _GRANTED:
            address, grantee = _GRANTED.pop()
            bal = annuaire.bal(address)
            assert bal is not None
            with transaction(engine) as session:
                grants.revoke(session, bal=bal, grantee=grantee, actor=None, operator="test", reason="fin")
    finally:
        engine.dispose()


def demo_person(demo: DemoServer, address: str) -> Person:
    account = demo.account(address)
    return Person(account["login"], account["password"])


def tls(demo: DemoServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=demo.ca_cert)


def smtp(demo: DemoServer, user: str, password: str) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL("localhost", demo.port("submissions"), context=tls(demo), timeout=30)
    client.login(user, password)
    return client


def letter(sender: str, to: str, subject: str, body: str = "Bonjour,\n\nCordialement.\n") -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=DOMAIN)
    message.set_content(body)
    return message


def deliver(demo: DemoServer, to: str, subject: str, body: str = "Patient vu ce jour.\n") -> EmailMessage:
    """Dr DURAND writes to ``to`` (the mail a delegate then handles)."""
    message = letter(DURAND, to, subject, body)
    durand = demo_person(demo, DURAND)
    with smtp(demo, durand.login, durand.password) as client:
        client.send_message(message)
    return message


def folders_of(demo: DemoServer, bal: str, holder: Person) -> dict[str, list[bytes]]:
    """Each folder's raw messages, read over IMAPS by a person who may open ``bal``."""
    client = imaplib.IMAP4_SSL("localhost", demo.port("imaps"), ssl_context=tls(demo))
    try:
        user = holder.login if bal == holder.login else holder.as_delegate(bal)
        client.login(user, holder.password)
        out: dict[str, list[bytes]] = {}
        for folder in ("INBOX", "Sent", "Trash"):
            client.select(folder, readonly=True)
            _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
            out[folder] = [part[1] for part in data if isinstance(part, tuple)]
        return out
    finally:
        client.logout()


def headers(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


def check_reply(demo: DemoServer, bal: str, person: Person, subject: str, *, delegate: bool = True) -> None:
    """The reply reached Dr DURAND with From: the BAL and, from a delegate, one Sender: its
    login; the copy is in the BAL's Sent; the original is in its Trash, no longer in its INBOX."""
    durand = demo_person(demo, DURAND)
    got = [headers(m) for m in folders_of(demo, DURAND, durand)["INBOX"]]
    [reply] = [m for m in got if m["Subject"] == f"Re: {subject}"]
    assert reply["From"].addresses[0].addr_spec == bal
    senders = reply.get_all("Sender") or []
    assert len(senders) == (1 if delegate else 0), senders
    if delegate:
        assert reply["Sender"].addresses[0].addr_spec == person.login
    held = folders_of(demo, bal, person)
    assert [m for m in held["Sent"] if headers(m)["Subject"] == f"Re: {subject}"]
    assert [m for m in held["Trash"] if headers(m)["Subject"] == subject]
    assert not [m for m in held["INBOX"] if headers(m)["Subject"] == subject]
