"""``mssante certs dev``, ``mssante user …`` and ``mssante demo token`` as an operator uses them,
then the accounts and tokens they made used through the authenticator."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from mssante import audit
from mssante.auth.authenticator import Authenticator, AuthFailure, AuthSuccess
from mssante.auth.harness import run_sasl
from mssante.cli import app
from mssante.config import load_settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.schema import upgrade
from mssante.tls import TLSInfo, server_context

IDNAT = "810102727017"
PASSWORD = "a long enough password"
TLS = TLSInfo(active=True)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [k for k in os.environ if k.startswith("MSSANTE_")]:
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    KeyRing.create(data / "keyring.json")
    engine = make_engine(f"sqlite:///{data / 'mssante.db'}")
    upgrade(engine)
    engine.dispose()
    return data


def cli(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), *args], input=stdin)
    # Standard output alone on success (what a script captures), everything on failure.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_certs_dev(data_dir: Path) -> None:
    code, out = cli(data_dir, "certs", "dev", "--app", "dpi@ch-demo.demo.mssante.fr")
    assert code == 0, out
    certs = data_dir / "certs"
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "clients/dpi@ch-demo.demo.mssante.fr.pem"):
        assert (certs / name).is_file(), name
    assert (certs / "server.key").stat().st_mode & 0o077 == 0
    assert re.search(r"sha256\s+[0-9a-f]{64}", out)
    settings = load_settings(
        None,
        server={"data_dir": str(data_dir)},
        tls={
            "cert_file": str(certs / "server.pem"),
            "key_file": str(certs / "server.key"),
            "ca_file": str(certs / "ca.pem"),
        },
    )
    assert server_context(settings.tls, client_certs="required") is not None
    # Re-running keeps the CA.
    before = (certs / "ca.pem").read_bytes()
    code, out = cli(data_dir, "certs", "dev")
    assert code == 0 and "using existing development CA" in out
    assert (certs / "ca.pem").read_bytes() == before


async def test_user_commands_then_login(data_dir: Path) -> None:
    code, out = cli(
        data_dir, "user", "add", "Dr.House", "--id", IDNAT, "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert code == 0 and f"professional:{IDNAT}" in out, out
    code, out = cli(data_dir, "user", "add", "dr.house", "--id", IDNAT, "--no-password")
    assert code == 1 and "already exists" in out
    code, out = cli(data_dir, "user", "add", "x", "--kind", "robot", "--no-password")
    assert code == 2
    code, out = cli(data_dir, "user", "add", "p", "--kind", "patient", "--id", "123", "--no-password")
    assert code == 1 and "INS" in out
    code, out = cli(data_dir, "user", "passwd", "dr.house", "--password-stdin", stdin="short\n")
    assert code == 1 and "at least" in out
    code, out = cli(data_dir, "certs", "dev", "--app", "dpi")
    code, out = cli(
        data_dir,
        "user",
        "add",
        "dpi",
        "--kind",
        "application",
        "--cert",
        str(data_dir / "certs" / "clients" / "dpi.pem"),
    )
    assert code == 0 and "application CN=dpi" in out, out
    code, out = cli(data_dir, "user", "passwd", "dpi", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1 and "client certificate only" in out

    settings = load_settings(None, server={"data_dir": str(data_dir)})
    engine = make_engine(settings.database_url, writer=True)
    auth = Authenticator(engine, settings)
    result, _ = await run_sasl(auth, "PLAIN", [f"\0dr.house\0{PASSWORD}".encode()], tls=TLS)
    assert isinstance(result, AuthSuccess)

    code, out = cli(data_dir, "user", "totp", "dr.house")
    assert code == 0, out
    secret = re.search(r"TOTP secret: ([A-Z2-7]+)", out)
    assert secret and "otpauth://totp/" in out
    code_now = pyotp.TOTP(secret.group(1)).now()
    result, _ = await run_sasl(auth, "PLAIN", [f"\0dr.house\0{PASSWORD}:{code_now}".encode()], tls=TLS)
    assert isinstance(result, AuthSuccess)

    code, out = cli(data_dir, "user", "disable", "dr.house")
    assert code == 0
    result, _ = await run_sasl(auth, "PLAIN", [f"\0dr.house\0{PASSWORD}".encode()], tls=TLS)
    assert isinstance(result, AuthFailure)

    code, out = cli(data_dir, "user", "list", "--json")
    listed = {r["login"]: r for r in map(json.loads, out.splitlines())}
    assert listed["dr.house"] == {
        "login": "dr.house",
        "kind": "professional",
        "id": IDNAT,
        "name": None,
        "password": True,
        "totp": True,
        "disabled": True,
    }
    assert listed["dpi"]["kind"] == "application" and not listed["dpi"]["password"]
    with Session(engine) as s:
        actions = list(s.scalars(select(audit.AuditRecord.action).order_by(audit.AuditRecord.seq)))
        assert audit.verify(s).ok
    assert actions[:2] == ["account.create", "account.create"]
    assert {"account.certificate", "account.totp", "account.disable", "auth.success"} <= set(actions)
    engine.dispose()


async def test_demo_token_is_trusted_in_demo_mode(data_dir: Path) -> None:
    code, token = cli(data_dir, "demo", "token", "--as", IDNAT)
    assert code == 0 and token.count(".") == 2
    code, initial = cli(data_dir, "demo", "token", "--as", IDNAT, "--sasl", "OAUTHBEARER")
    assert code == 0
    code, _ = cli(data_dir, "demo", "token", "--as", "not valid!")
    assert code == 2

    engine = make_engine(f"sqlite:///{data_dir / 'mssante.db'}", writer=True)
    demo = load_settings(None, server={"data_dir": str(data_dir)}, auth={"demo_idp": True})
    auth = Authenticator(engine, demo)
    message = f"n,,\x01auth=Bearer {token.strip()}\x01\x01".encode()
    result, _ = await run_sasl(auth, "OAUTHBEARER", [message], tls=TLS)
    assert isinstance(result, AuthSuccess) and result.identity.principal == f"professional:{IDNAT}"
    # The --sasl output is the exact base64 initial response a client sends.
    result, _ = await run_sasl(auth, "OAUTHBEARER", [initial.splitlines()[0]], tls=TLS)
    assert isinstance(result, AuthSuccess)
    # Outside demo mode the same token is refused.
    normal = Authenticator(engine, load_settings(None, server={"data_dir": str(data_dir)}))
    assert normal.mechanisms(TLS) == ["PLAIN"]
    engine.dispose()


def test_prepare_demo(data_dir: Path) -> None:
    from mssante.auth.devpki import prepare_demo

    settings = load_settings(None, server={"data_dir": str(data_dir)})
    done = prepare_demo(settings)
    assert len(done) == 3 and settings.auth.demo_idp
    assert settings.tls.cert_file == data_dir / "certs" / "server.pem"
    assert server_context(settings.tls, client_certs="optional") is not None
    again = load_settings(None, server={"data_dir": str(data_dir)})
    assert prepare_demo(again) == [
        "trusting the local demo identity provider (mssante demo token --as IDNAT)"
    ]
