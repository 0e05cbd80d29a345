"""Delegation end to end: the demo server over real sockets (IMAP over TLS, SMTP submission),
grants changed with the real ``mssante delegation`` command line against its database.

The demo has a secretary (``secretaire.martin@…``) with a delegation on Dr MARTIN's BAL and a
cardiology ORG BAL (responsible Dr DURAND, members Dr MARTIN and the front desk). Each test sets
the secretary's rights it needs first: the demo server is shared by the whole run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

import pytest

from tests.demo_server import DemoServer
from tests.mailbox import StoredMail

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
CARDIO = f"cardiologie@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"
SECRETARY = f"secretaire.martin@{DOMAIN}"
ACCUEIL = f"accueil.cardiologie@{DOMAIN}"
SHARED = "Partag&AOk-"  # "Partagé" in modified UTF-7


def named(bal: str, folder: str = "INBOX") -> str:
    """The wire name of a folder of ``bal`` in the shared namespace."""
    return f"{SHARED}/{bal}/{folder}"


def shared(bal: str, folder: str = "INBOX") -> str:
    return f'"{named(bal, folder)}"'


# -- helpers ---------------------------------------------------------------------------------------
def cli(demo: DemoServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(demo.data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def grant(
    demo: DemoServer, rights: str, *, bal: str = MARTIN, who: str = SECRETARY, expires: str = ""
) -> None:
    extra = ["--expires", expires] if expires else []
    cli(demo, "delegation", "grant", bal, who, rights, "--reason", "test", *extra)


def audit(demo: DemoServer, bal: str) -> list[dict[str, Any]]:
    out = cli(demo, "audit", "show", "--bal", bal, "--json", "--limit", "500").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    for event in events:
        if isinstance(event["detail"], str):
            event["detail"] = json.loads(event["detail"])
        event["detail"] = event["detail"] or {}
    return events


class Imap:
    """A raw IMAP client over implicit TLS: exact responses, IDLE, and no client-side magic."""

    def __init__(self, demo: DemoServer, *, cert: tuple[str, str] | None = None) -> None:
        context = ssl.create_default_context(cafile=demo.ca_cert)
        if cert is not None:
            context.load_cert_chain(*cert)
        sock = socket.create_connection(("127.0.0.1", demo.port("imaps")), timeout=15)
        self.sock = context.wrap_socket(sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.count = 0
        self.greeting = self.line()

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise EOFError("connection closed")
        return data.rstrip(b"\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def command(self, text: str) -> tuple[str, list[bytes]]:
        self.count += 1
        tag = f"t{self.count}"
        self.send(f"{tag} {text}")
        untagged: list[bytes] = []
        while True:
            line = self.line()
            literal = re.search(rb"\{(\d+)\}$", line)
            while literal:
                line += b"\r\n" + self.file.read(int(literal[1]))
                rest = self.line()
                line += rest
                literal = re.search(rb"\{(\d+)\}$", rest)
            if line.startswith(tag.encode() + b" "):
                return line[len(tag) + 1 :].decode(), untagged
            untagged.append(line)

    def ok(self, text: str) -> list[bytes]:
        status, untagged = self.command(text)
        assert status.startswith("OK"), f"{text}: {status}"
        return untagged

    def login(self, demo: DemoServer, login: str, authzid: str = "") -> str:
        password = demo.account(login)["password"]
        payload = base64.b64encode(f"{authzid}\0{demo.account(login)['login']}\0{password}".encode()).decode()
        return self.command(f"AUTHENTICATE PLAIN {payload}")[0]

    def close(self) -> None:
        try:
            self.send("z LOGOUT")
            self.file.read()
        except (OSError, ValueError):
            pass
        self.file.close()  # the socket stays open while its file object is
        self.sock.close()


@pytest.fixture
def imap(demo: DemoServer) -> Iterator[Any]:
    opened: list[Imap] = []

    def connect(login: str | None = None, authzid: str = "", **kwargs: Any) -> Imap:
        client = Imap(demo, **kwargs)
        opened.append(client)
        if login is not None:
            status = client.login(demo, login, authzid)
            assert status.startswith("OK"), status
        return client

    yield connect
    for client in opened:
        client.close()


def message(sender: str, to: str, subject: str) -> str:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
    )


def smtp(demo: DemoServer, login: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=ssl.create_default_context(cafile=demo.ca_cert))
    client.ehlo("client.test")
    account = demo.account(login)
    client.login(account["login"], account["password"])
    return client


def deliver(demo: DemoServer, to: str, subject: str) -> None:
    with smtp(demo, DURAND) as client:
        assert client.sendmail(DURAND, [to], message(DURAND, to, subject)) == {}


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


# -- the secretary ---------------------------------------------------------------------------------
def test_read_only_secretary_reads_but_cannot_flag_delete_or_send(demo: DemoServer, imap: Any) -> None:
    grant(demo, "read-only")
    subject = unique("Resultats")
    deliver(demo, MARTIN, subject)
    # SASL PLAIN authorization identity: she opens the doctor's BAL as her primary mailbox.
    primary = imap(SECRETARY, authzid=MARTIN)
    status, untagged = primary.command("SELECT INBOX")
    assert status.startswith("OK [READ-ONLY]"), status
    assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in untagged
    fetched = primary.ok("FETCH * (FLAGS BODY[HEADER.FIELDS (SUBJECT)])")
    assert subject.encode() in b"".join(fetched)
    assert b"\\Seen" not in fetched[0]  # reading without "s" leaves the doctor's \Seen alone
    assert primary.command("STORE * +FLAGS (\\Flagged)")[0].startswith("NO [READ-ONLY]")
    assert primary.command("EXPUNGE")[0].startswith("NO [READ-ONLY]")
    assert primary.command("COPY * Archive")[0].startswith("NO [NOPERM]")
    # The same BAL in her shared namespace, from a login as herself.
    own = imap(SECRETARY)
    assert own.command(f"SELECT {shared(MARTIN)}")[0].startswith("OK [READ-ONLY]")
    assert own.ok(f"MYRIGHTS {shared(MARTIN)}") == [f"* MYRIGHTS {named(MARTIN)} lr".encode()]
    with smtp(demo, SECRETARY) as client:
        code, text = client.mail(MARTIN)
    assert code == 550 and b"staff:secretaire.martin may not send as <claire.martin@" in text


def test_secretary_with_send_on_behalf_sends_and_recipients_see_both(demo: DemoServer) -> None:
    grant(demo, "read-only send")
    subject = unique("Convocation")
    with smtp(demo, SECRETARY) as client:
        assert client.sendmail(MARTIN, [DURAND], message(MARTIN, DURAND, subject)) == {}
    view = StoredMail(demo.data_dir)
    try:
        [raw] = view.with_subject(DURAND, subject)
    finally:
        view.close()
    header = raw.split(b"\r\n\r\n", 1)[0]
    assert f"From: {MARTIN}".encode() in header.split(b"\r\n")
    assert f"Sender: {SECRETARY}".encode() in header.split(b"\r\n")
    # From: must still be the BAL she sends for: not her own name, not another BAL.
    with smtp(demo, SECRETARY) as client:
        code, _ = client.mail(DURAND)
    assert code == 550
    events = [e for e in audit(demo, MARTIN) if e["action"] == "message.send_on_behalf"]
    assert any(e["actor"] == "staff:secretaire.martin" for e in events)


def test_secretary_sees_no_other_bal_and_nothing_leaks_its_existence(demo: DemoServer, imap: Any) -> None:
    grant(demo, "sort")
    client = imap(SECRETARY)
    listed = client.ok('LIST "" "*"')
    names = [line.rsplit(b' "/" ', 1)[1].strip(b'"') for line in listed]
    # Her one delegated BAL is her own mailbox, with its special uses; nothing else is listed.
    assert sorted(names) == [b"Archive", b"Drafts", b"INBOX", b"Sent", b"Trash"]
    assert any(b"\\Sent" in line for line in listed)
    for bal in (DURAND, CARDIO, "nobody@demo.mssante.fr"):  # existing but forbidden, or missing
        for command in (
            f"SELECT {shared(bal)}",
            f"EXAMINE {shared(bal)}",
            f"STATUS {shared(bal)} (MESSAGES)",
        ):
            status, untagged = client.command(command)
            # The name as it is on the wire (modified UTF-7), never raw UTF-8.
            assert status == f"NO [NONEXISTENT] Mailbox {SHARED}/{bal}/INBOX does not exist", status
            assert untagged == []
        assert client.command(f"GETACL {shared(bal)}")[0].startswith("NO [NONEXISTENT]")
    # Her INBOX is Dr MARTIN's.
    assert client.command("SELECT INBOX")[0].startswith("OK [READ-WRITE]")
    # As SASL authorization identity: refused alike for a forbidden and a missing BAL.
    answers = set()
    for bal in (DURAND, "nobody@demo.mssante.fr"):
        other = Imap(demo)
        try:
            answers.add(other.login(demo, SECRETARY, authzid=bal))
        finally:
            other.close()
    assert len(answers) == 1 and answers.pop().startswith("NO [AUTHENTICATIONFAILED]")


def test_revocation_closes_live_sessions_and_smtp(demo: DemoServer, imap: Any) -> None:
    grant(demo, "sort send")
    idler = imap(SECRETARY)
    idler.ok(f"SELECT {shared(MARTIN)}")
    idler.send("i1 IDLE")
    assert idler.line().startswith(b"+ ")
    busy = imap(SECRETARY, authzid=MARTIN)
    busy.ok("SELECT INBOX")
    submission = smtp(demo, SECRETARY)
    try:
        started = time.monotonic()
        cli(demo, "delegation", "revoke", MARTIN, SECRETARY, "--reason", "fin de contrat")
        revoked = time.monotonic()
        assert idler.line() == f"* BYE Access to {MARTIN} was revoked".encode()
        bye = time.monotonic()
        with pytest.raises(EOFError):
            idler.line()
        status, untagged = busy.command("FETCH 1 BODY.PEEK[]")
        assert status.startswith("NO [NOPERM]") and untagged == [
            b"* OK [CLOSED] Access to this mailbox was revoked"
        ]
        assert busy.command("SELECT INBOX")[0].startswith("NO [NONEXISTENT]")
        code, _ = submission.mail(MARTIN)
        assert code == 550
    finally:
        submission.close()
    print(f"revoke CLI {revoked - started:.2f}s, BYE {bye - revoked:.3f}s after the CLI returned")
    assert bye - revoked < 2.0
    trail = audit(demo, MARTIN)
    assert any(
        e["action"] == "delegation.revoke" and e["detail"]["reason"] == "fin de contrat" for e in trail
    )


def test_expired_grant_stops_working_at_expiry(demo: DemoServer, imap: Any) -> None:
    # The sessions are set up under a grant without expiry, then the grant is replaced by one
    # that expires 15 s later (a replacement keeps the same rights, so it ends nothing by
    # itself): slow CLI calls and logins on a loaded machine cannot outlive it.
    grant(demo, "read-only send")
    idler = imap(SECRETARY)
    idler.ok(f"SELECT {shared(MARTIN)}")
    idler.send("i1 IDLE")
    assert idler.line().startswith(b"+ ")
    busy = imap(SECRETARY, authzid=MARTIN)
    busy.ok("SELECT INBOX")
    grant(demo, "read-only send", expires="15s")
    out = cli(demo, "delegation", "list", MARTIN, "--history", "--json").stdout
    listed = [json.loads(line) for line in out.splitlines()]
    mine = [g for g in listed if g["grantee"] == "staff:secretaire.martin" and g.get("expires_at")]
    expiry = max(datetime.fromisoformat(g["expires_at"]) for g in mine)
    busy.ok("NOOP")
    assert idler.line() == f"* BYE Access to {MARTIN} was revoked".encode()
    ended = datetime.now(UTC)
    assert expiry - timedelta(milliseconds=50) <= ended <= expiry + timedelta(seconds=1), (ended, expiry)
    assert busy.command("NOOP")[0].startswith("NO [NOPERM]")
    with smtp(demo, SECRETARY) as client:
        assert client.mail(MARTIN)[0] == 550
    late = Imap(demo)
    try:
        assert late.login(demo, SECRETARY, authzid=MARTIN).startswith("NO")
    finally:
        late.close()
    assert "none" in cli(demo, "delegation", "rights", MARTIN, SECRETARY).stdout


def test_owner_sees_in_the_audit_trail_who_did_what(demo: DemoServer, imap: Any) -> None:
    grant(demo, "sort")
    deliver(demo, MARTIN, unique("Trace"))
    client = imap(SECRETARY)
    client.ok(f"SELECT {shared(MARTIN)}")
    client.ok("FETCH * BODY[]")
    client.ok("CLOSE")
    out = cli(demo, "audit", "show", "--bal", MARTIN).stdout
    assert "staff:secretaire.martin" in out and "delegation.grant" in out
    trail = [e for e in audit(demo, MARTIN) if e["actor"] == "staff:secretaire.martin"]
    actions = {e["action"] for e in trail}
    assert {"folder.select", "message.read"} <= actions
    assert all(
        e["detail"].get("delegated") for e in trail if e["action"] in ("folder.select", "message.read")
    )


# -- IMAP ACL ----------------------------------------------------------------------------------------
def test_acl_commands_follow_the_who_may_grant_rules(demo: DemoServer, imap: Any) -> None:
    grant(demo, "read-only")
    doctor = imap(MARTIN)
    assert "ACL" in doctor.ok("CAPABILITY")[0].decode().split()
    doctor.ok(f"SETACL INBOX {SECRETARY} lrsw")
    secretary = imap(SECRETARY)
    assert secretary.ok(f"MYRIGHTS {shared(MARTIN)}") == [f"* MYRIGHTS {named(MARTIN)} lrsw".encode()]
    [acl] = doctor.ok("GETACL INBOX")
    assert acl == f"* ACL INBOX {MARTIN} lrswikxtea {SECRETARY} lrsw".encode()
    assert doctor.ok(f"LISTRIGHTS INBOX {SECRETARY}") == [
        f'* LISTRIGHTS INBOX {SECRETARY} "" l r s w i k x t e a'.encode()
    ]
    doctor.ok(f"SETACL INBOX {SECRETARY} -sw")
    assert secretary.ok(f"MYRIGHTS {shared(MARTIN)}") == [f"* MYRIGHTS {named(MARTIN)} lr".encode()]
    # A grantee without "a" neither reads nor edits the ACL; with "a" only within her rights.
    assert secretary.command(f"GETACL {shared(MARTIN)}")[0].startswith("NO [NOPERM]")
    assert secretary.command(f"SETACL {shared(MARTIN)} {ACCUEIL} lr")[0].startswith("NO [NOPERM]")
    doctor.ok(f"SETACL INBOX {SECRETARY} +a")
    secretary.ok(f"SETACL {shared(MARTIN)} {ACCUEIL} lr")
    status, _ = secretary.command(f"SETACL {shared(MARTIN)} {ACCUEIL} lrw")
    assert status.startswith("NO [NOPERM]") and "does not hold (w)" in status
    doctor.ok(f"DELETEACL INBOX {ACCUEIL}")
    doctor.ok(f"DELETEACL INBOX {SECRETARY}")
    assert secretary.command(f"MYRIGHTS {shared(MARTIN)}")[0].startswith("NO [NONEXISTENT]")
    # A member of an ORG BAL is not its responsible: she may not grant there.
    assert doctor.command(f"SETACL {shared(CARDIO)} {SECRETARY} lr")[0].startswith("NO [NOPERM]")
    trail = [e for e in audit(demo, MARTIN) if e["action"].startswith("delegation.")]
    assert any(e["actor"].startswith("professional:") and e["action"] == "delegation.grant" for e in trail)


def test_operator_grants_need_a_reason_and_rights_are_words_or_letters(demo: DemoServer) -> None:
    done = cli(demo, "delegation", "grant", MARTIN, SECRETARY, "read-only", check=False)
    assert done.returncode == 1 and "reason" in done.stderr
    done = cli(demo, "delegation", "grant", MARTIN, SECRETARY, "lr fly", "--reason", "x", check=False)
    assert done.returncode == 2 and "unknown right 'fly'" in done.stderr
    grant(demo, "lookup,read,flags send")
    assert "lrw send" in cli(demo, "delegation", "rights", MARTIN, SECRETARY).stdout
    listed = [
        json.loads(line) for line in cli(demo, "delegation", "list", MARTIN, "--json").stdout.splitlines()
    ]
    [mine] = [g for g in listed if g["grantee"] == "staff:secretaire.martin"]
    assert mine["rights"] == "lrw send" and mine["reason"] == "test" and mine["login"] == SECRETARY


# -- ORG and APP BALs -------------------------------------------------------------------------------
def test_three_org_members_see_each_others_flag_changes(demo: DemoServer, imap: Any) -> None:
    subject = unique("Staff cardio")
    deliver(demo, CARDIO, subject)
    members = {DURAND: "\\Flagged", MARTIN: "\\Answered", ACCUEIL: "$Rappel"}
    sessions = {login: imap(login) for login in members}
    for client in sessions.values():
        client.ok(f"SELECT {shared(CARDIO)}")
    number = int(sessions[DURAND].ok(f'SEARCH SUBJECT "{subject.split()[-1]}"')[0].split()[-1])

    def flag(login: str) -> list[bytes]:
        return sessions[login].ok(f"STORE {number} +FLAGS.SILENT ({members[login]})")

    with ThreadPoolExecutor(3) as pool:
        answers = dict(zip(members, pool.map(flag, members), strict=True))
    for login, client in sessions.items():
        # Every session hears the others' changes: in its STORE answer when they came first
        # (.SILENT reports what differs from what the client expects), else at its next NOOP.
        heard: set[str] = set()
        lines = answers[login]
        for _ in range(50):
            for line in lines:
                found = re.match(rb"\* %d FETCH \(FLAGS \(([^)]*)\)\)" % number, line)
                if found:
                    heard = set(found[1].decode().split())
            if set(members.values()) <= heard:
                break
            time.sleep(0.05)
            lines = client.ok("NOOP")
        others = {f for other, f in members.items() if other != login}
        assert others <= heard, (login, heard)


def test_app_bal_refuses_password_login_and_accepts_its_certificate(demo: DemoServer, imap: Any) -> None:
    app = demo.account(DPI)
    client = imap()
    status, _ = client.command(f'LOGIN {DPI} "not-a-password"')
    assert status.startswith("NO [AUTHENTICATIONFAILED]")
    payload = base64.b64encode(f"\0{DPI}\0anything".encode()).decode()
    assert client.command(f"AUTHENTICATE PLAIN {payload}")[0].startswith("NO [AUTHENTICATIONFAILED]")
    certified = imap(cert=(app["client_cert"], app["client_key"]))
    assert certified.command("AUTHENTICATE EXTERNAL =")[0].startswith("OK")
    assert certified.command("SELECT INBOX")[0].startswith("OK [READ-WRITE]")
    assert certified.ok("MYRIGHTS INBOX") == [b"* MYRIGHTS INBOX lrswikxtea"]
