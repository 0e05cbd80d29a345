"""Backups: taken from a running server under SMTP load, restored elsewhere, verified.

The load test drives a real ``mssante serve --demo`` over SMTP (STARTTLS, AUTH), runs the real
``mssante backup`` while messages keep arriving, restores with ``mssante restore`` into a new
installation and reads every message acknowledged before the backup started from the
restored store (decrypted with the restored key ring).
"""

from __future__ import annotations

import email
import json
import os
import smtplib
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from mssante.config import load_settings
from mssante.runtime import open_runtime
from tests.conftest import BACKENDS, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo

SENDER = "claire.martin@demo.mssante.fr"
RECIPIENT = "paul.durand@demo.mssante.fr"
PASSPHRASE = "correct horse battery staple"


def mssante(
    *args: str, db_url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    if db_url:
        full["MSSANTE_DATABASE__URL"] = db_url
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mssante", *args], capture_output=True, text=True, env=full, timeout=300
    )


@pytest.fixture(params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoServer, str | None]]:
    """The shared demo server (SQLite), or a demo server of its own on a new PostgreSQL database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("demo"), None
        return
    name, url = _create_pg_database()
    env = {"MSSANTE_DATABASE__URL": url, "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "200"}
    demo = start_demo(tmp_path_factory.mktemp("pgdemo") / "data", env)
    try:
        yield demo, url
    finally:
        assert demo.stop() == 0, demo.log()
        _drop_pg_database(name)


class Load:
    """Senders that keep submitting until stopped; each acknowledged Message-ID is recorded."""

    def __init__(self, demo: DemoServer, senders: int = 3) -> None:
        self.demo, self.stop = demo, threading.Event()
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(senders)]

    def _run(self, n: int) -> None:
        account = self.demo.account(SENDER)
        try:
            with smtplib.SMTP("127.0.0.1", self.demo.port("submission"), timeout=60) as client:
                client.starttls(context=ssl.create_default_context(cafile=self.demo.ca_cert))
                client.login(account["login"], account["password"])
                i = 0
                while not self.stop.is_set():
                    msgid = f"<load-{n}-{i}-{uuid.uuid4().hex}@demo.mssante.fr>"
                    body = (
                        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: charge {n}/{i}\r\n"
                        f"Date: {formatdate()}\r\nMessage-ID: {msgid}\r\nMIME-Version: 1.0\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        f"\r\nCompte rendu {n}/{i}.\r\n" + "Ligne de texte du compte rendu.\r\n" * 40
                    )
                    assert client.sendmail(SENDER, [RECIPIENT], body) == {}
                    with self.lock:
                        self.acked.append(msgid)
                    i += 1
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.acked)


def _restored_message_ids(data_dir: Path, db_url: str | None) -> set[str]:
    """Every Message-ID in the restored store, each body decrypted in full with the restored ring."""
    overrides: dict[str, dict[str, str]] = {"server": {"data_dir": str(data_dir)}}
    if db_url:
        overrides["database"] = {"url": db_url}
    runtime = open_runtime(load_settings(None, **overrides))
    try:
        found: set[str] = set()
        with Session(runtime.engine) as session:
            blob_ids = session.execute(text("SELECT DISTINCT blob_id FROM messages")).scalars().all()
            for blob_id in blob_ids:
                raw = runtime.store.reader.read(session, blob_id)
                msgid = email.message_from_bytes(raw)["Message-ID"]
                if msgid:
                    found.add(msgid.strip())
        return found
    finally:
        runtime.close()


def test_a_backup_taken_under_smtp_load_restores_every_acknowledged_message(
    server: tuple[DemoServer, str | None], tmp_path: Path
) -> None:
    demo, db_url = server
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    dest = tmp_path / "backup"
    with Load(demo) as load:
        deadline = time.monotonic() + 60
        while len(load.snapshot()) < 30 and time.monotonic() < deadline and not load.errors:
            time.sleep(0.05)
        before = load.snapshot()  # acknowledged before the backup started
        args = [
            "backup",
            str(dest),
            "--passphrase-file",
            str(secret),
            "--json",
            "--data-dir",
            str(demo.data_dir),
        ]
        made = mssante(*args, db_url=db_url)
        during = load.snapshot() - before
        time.sleep(0.3)
    assert not load.errors, load.errors
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert len(before) >= 30 and len(during) > 0, (len(before), len(during))  # the backup ran under load

    restored_url = None
    if db_url is not None:
        name, restored_url = _create_pg_database()
    try:
        target = tmp_path / "restored"
        passphrase_env = {"MSSANTE_BACKUP_PASSPHRASE": PASSPHRASE}
        done = mssante(
            "restore", str(dest), "--data-dir", str(target), "--json", db_url=restored_url, env=passphrase_env
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["audit_records"] >= report["audit_seq"]
        checked = mssante("audit", "verify", "--data-dir", str(target), db_url=restored_url)
        assert checked.returncode == 0, checked.stderr

        found = _restored_message_ids(target, restored_url)
        missing = before - found
        assert not missing, f"{len(missing)} acknowledged messages missing from the backup"

        args = ["backup", "verify", str(dest), "--passphrase-file", str(secret), "--sample", "10", "--json"]
        verified = mssante(*args, "--data-dir", str(target), db_url=restored_url)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        doc = json.loads(verified.stdout)
        assert doc["ok"] and doc["opened"] == doc["sampled"] == 10 and doc["messages"] >= len(before)
    finally:
        if db_url is not None:
            _drop_pg_database(name)


def test_backup_refusals(runtime_cli_dir: Path, tmp_path: Path) -> None:
    data = runtime_cli_dir
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE)
    # No passphrase, or one given on the command line: refused (exit 2), nothing written.
    none = mssante("backup", str(tmp_path / "b0"), "--data-dir", str(data))
    assert none.returncode == 2 and "passphrase" in none.stderr and not (tmp_path / "b0").exists()
    argv = mssante("backup", str(tmp_path / "b0"), "--passphrase", PASSPHRASE, "--data-dir", str(data))
    assert argv.returncode == 2

    # The sealed key ring kept elsewhere: the backup directory alone does not restore.
    vault = tmp_path / "vault.enc"
    made = mssante(
        "backup",
        str(tmp_path / "b1"),
        "--passphrase-file",
        str(secret),
        "--keyring-to",
        str(vault),
        "--data-dir",
        str(data),
    )
    assert made.returncode == 0, made.stderr
    assert not (tmp_path / "b1" / "keyring.enc").exists() and vault.stat().st_mode & 0o077 == 0
    alone = mssante(
        "restore", str(tmp_path / "b1"), "--passphrase-file", str(secret), "--data-dir", str(tmp_path / "r1")
    )
    assert alone.returncode == 1 and "--keyring" in alone.stderr

    wrong = tmp_path / "wrong"
    wrong.write_text("not the right passphrase")
    check = ["backup", "verify", str(tmp_path / "b1"), "--keyring", str(vault), "--data-dir", str(data)]
    bad = mssante(*check, "--passphrase-file", str(wrong))
    assert bad.returncode == 1 and "wrong passphrase" in bad.stderr

    # Restore refuses a non-empty installation.
    busy = mssante(
        "restore",
        str(tmp_path / "b1"),
        "--keyring",
        str(vault),
        "--passphrase-file",
        str(secret),
        "--data-dir",
        str(data),
    )
    assert busy.returncode == 1 and "not empty" in busy.stderr

    # A backup whose database copy was altered is refused by verify and restore.
    with (tmp_path / "b1" / "mssante.db").open("r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    altered = mssante(*check, "--passphrase-file", str(secret))
    assert altered.returncode == 1 and "SHA-256" in altered.stderr


@pytest.fixture
def runtime_cli_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    done = mssante("init", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    return data
