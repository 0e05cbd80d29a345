"""Brute force against a real ``mssante serve --demo`` (its own, with small thresholds), through
smtplib and imaplib from other loopback addresses (127.0.0.2, …): whoever hammers a doctor's
published login blocks only their own address, the doctor keeps logging in from theirs; the
blocks are audited; a password verified a moment ago is remembered in memory but a password
change or a disable made by the CLI, in another process, takes effect at the next login."""

from __future__ import annotations

import contextlib
import imaplib
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from mssante.audit import AuditRecord
from tests.demo_server import DemoServer, start_demo

THRESHOLDS = {
    "MSSANTE_AUTH__BRUTEFORCE__FREE_FAILURES": "1",
    "MSSANTE_AUTH__BRUTEFORCE__BASE_DELAY_SECONDS": "0.05",
    "MSSANTE_AUTH__BRUTEFORCE__MAX_DELAY_SECONDS": "0.2",
    "MSSANTE_AUTH__BRUTEFORCE__LOCKOUT_FAILURES": "4",
    "MSSANTE_AUTH__BRUTEFORCE__IP_FREE_FAILURES": "20",
    "MSSANTE_AUTH__BRUTEFORCE__IP_LOCKOUT_FAILURES": "10",
    "MSSANTE_AUTH__BRUTEFORCE__LOCKOUT_SECONDS": "600",
}
DOCTOR = "claire.martin@demo.mssante.fr"
COLLEAGUE = "paul.durand@demo.mssante.fr"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    demo = start_demo(tmp_path_factory.mktemp("throttle"), env=THRESHOLDS)
    try:
        yield demo
    finally:
        demo.stop()


def tls(demo: DemoServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=demo.ca_cert)


class IMAPFrom(imaplib.IMAP4):
    """imaplib from a chosen loopback source address."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def imap_login(demo: DemoServer, login: str, password: str, source: str = "127.0.0.1") -> tuple[str, str]:
    """(status, text) of IMAP LOGIN after STARTTLS; status "OK" or "NO"."""
    imap = IMAPFrom("127.0.0.1", demo.port("imap"), source)
    try:
        imap.starttls(tls(demo))
        try:
            typ, data = imap.login(login, password)
            return typ, data[0].decode()
        except imaplib.IMAP4.error as exc:
            return "NO", str(exc)
    finally:
        with contextlib.suppress(imaplib.IMAP4.abort, OSError):
            imap.logout()


def smtp_session(demo: DemoServer, source: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30, source_address=(source, 0))
    smtp.starttls(context=tls(demo))
    smtp.ehlo()
    return smtp


def smtp_auth(smtp: smtplib.SMTP, login: str, password: str) -> int:
    try:
        code, _ = smtp.login(login, password)
        return code
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code


def audit(demo: DemoServer, action: str) -> list[AuditRecord]:
    engine = create_engine(f"sqlite:///{demo.data_dir / 'mssante.db'}")
    try:
        with Session(engine) as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))
    finally:
        engine.dispose()


def cli(demo: DemoServer, *args: str, stdin: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    done = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(demo.data_dir), *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_hammering_a_login_blocks_the_attacker_not_the_doctor(server: DemoServer) -> None:
    password = server.account(DOCTOR)["password"]
    attacker = smtp_session(server, "127.0.0.2")
    codes = [smtp_auth(attacker, DOCTOR, f"guess number {i}") for i in range(4)]
    assert codes == [535, 535, 535, 535]
    # The pair (login, 127.0.0.2) is blocked: even the right password is refused there, on SMTP…
    assert smtp_auth(attacker, DOCTOR, password) == 454
    attacker.close()
    # …and on IMAP (one counter for both protocols).
    status, text = imap_login(server, DOCTOR, password, source="127.0.0.2")
    assert status == "NO" and "UNAVAILABLE" in text
    # The doctor, from their own address, logs in at once on both.
    started = time.monotonic()
    smtp = smtp_session(server, "127.0.0.1")
    assert smtp_auth(smtp, DOCTOR, password) == 235
    smtp.quit()
    assert imap_login(server, DOCTOR, password)[0] == "OK"
    assert time.monotonic() - started < 10
    # The throttle and the block are in the audit trail, naming the attacker's address.
    [lockout] = audit(server, "auth.lockout")
    assert lockout.source == "127.0.0.2" and lockout.object == f"login_ip:127.0.0.2 login:{DOCTOR}"
    assert any(r.source == "127.0.0.2" for r in audit(server, "auth.throttle"))


def test_an_address_guessing_many_logins_is_blocked(server: DemoServer) -> None:
    password = server.account(COLLEAGUE)["password"]
    # 127.0.0.3 tries one password on many logins (spraying): the pair counters stay low, the
    # address counter reaches ip_lockout_failures.
    for i in range(10):
        status, _ = imap_login(server, f"someone{i}@demo.mssante.fr", "Printemps2026!", source="127.0.0.3")
        assert status == "NO"
    status, text = imap_login(server, COLLEAGUE, password, source="127.0.0.3")
    assert status == "NO" and "UNAVAILABLE" in text
    assert imap_login(server, COLLEAGUE, password, source="127.0.0.4")[0] == "OK"
    assert "ip:127.0.0.3" in [r.object for r in audit(server, "auth.lockout")]


def test_cli_changes_end_cached_logins_at_once(server: DemoServer) -> None:
    account: dict[str, Any] = next(a for a in server.doc["accounts"] if a["kind"] == "pharmacy")
    login, password = account["login"], account["password"]
    for _ in range(2):  # the second one is answered from the credential cache
        assert imap_login(server, login, password, source="127.0.0.5")[0] == "OK"
    cli(server, "user", "passwd", login, "--password-stdin", stdin="another long passphrase\n")
    status, text = imap_login(server, login, password, source="127.0.0.5")
    assert status == "NO" and "AUTHENTICATIONFAILED" in text
    assert imap_login(server, login, "another long passphrase", source="127.0.0.5")[0] == "OK"
    cli(server, "user", "disable", login)
    assert imap_login(server, login, "another long passphrase", source="127.0.0.5")[0] == "NO"
    cli(server, "user", "enable", login)
    assert imap_login(server, login, "another long passphrase", source="127.0.0.5")[0] == "OK"
    cli(server, "user", "passwd", login, "--password-stdin", stdin=password + "\n")
