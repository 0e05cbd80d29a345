"""``mssante user …``: local accounts (dev and test logins, staff, patients without an IdP,
APP identities bound to client certificates).

Passwords are read from a hidden prompt, or with ``--password-stdin`` from the first line of
standard input (scripts). With TOTP enrolled the user types the 6-digit code after the
password, appended or after a colon (``secret:123456``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante.cli._common import EXIT_USAGE, command_group, console, fail, settings
from mssante.cli._common import checked_engine as _engine
from mssante.cli._common import operator_actor as _actor

app = command_group("user", "Local accounts: passwords, TOTP, application certificates.")
T = TypeVar("T")

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _write(work: Callable[..., T]) -> T:
    """Run ``work(session)`` in one transaction; a refused change exits 1 with its reason."""
    from mssante.auth.accounts import AccountError
    from mssante.auth.passwords import WeakPassword
    from mssante.db import transaction

    try:
        with transaction(_engine(writer=True)) as session:
            return work(session)
    except (AccountError, WeakPassword) as exc:
        fail(str(exc))


@app.command("add")
def add(
    login: Annotated[str, typer.Argument(help="Login name (case-insensitive).")],
    kind: Annotated[str, typer.Option(help="professional, staff, patient or application.")] = "professional",
    identifier: Annotated[
        str | None, typer.Option("--id", help="IdNat_PS (professional), INS (patient) or local id (staff).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    no_password: Annotated[bool, typer.Option("--no-password", help="Token-only account.")] = False,
    password_stdin: PasswordStdin = False,
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM) of an application.")] = None,
) -> None:
    """Create a local account; applications get a certificate and never a password."""
    from mssante.auth import accounts
    from mssante.auth.identity import IdentityKind

    try:
        identity_kind = IdentityKind(kind)
    except ValueError:
        fail(f"--kind must be one of {', '.join(k.value for k in IdentityKind)}", EXIT_USAGE)
    is_app = identity_kind is IdentityKind.APPLICATION
    if is_app and cert is None:
        fail("an application account needs --cert (its client certificate)", EXIT_USAGE)
    if cert is not None and not is_app:
        fail("--cert is for application accounts only", EXIT_USAGE)
    pem = b""
    if cert is not None:
        try:
            pem = cert.read_bytes()
        except OSError as exc:
            fail(f"cannot read {cert}: {exc}")
    password = None if is_app or no_password else _password(password_stdin)
    actor = _actor()

    def work(session: Session) -> str:
        account = accounts.create(
            session, login, identity_kind, identifier, display_name=name, password=password, actor=actor
        )
        if is_app:
            row = accounts.add_certificate(session, account.login, pem, actor=actor)
            return f"{account.login}: application {row.subject} sha256 {row.fingerprint}"
        return f"{account.login}: {accounts.identity_of(account).principal}"

    console.print(f"created {_write(work)}", highlight=False, soft_wrap=True)


@app.command("passwd")
def passwd(login: str, password_stdin: PasswordStdin = False) -> None:
    """Set or replace the password of an account."""
    from mssante.auth import accounts

    password = _password(password_stdin)
    actor = _actor()
    _write(lambda s: accounts.set_password(s, login, password, actor=actor))
    console.print(f"password of {login.strip().lower()} updated")


@app.command("totp")
def totp(login: str) -> None:
    """Enrol (or re-enrol) a TOTP second factor; prints the secret and the otpauth:// URI once."""
    from mssante.auth import accounts, passwords
    from mssante.crypto import KeyRing, KeyRingError

    cfg = settings()
    try:
        ring = KeyRing.load(cfg.keyring_path)
    except KeyRingError as exc:
        fail(str(exc))
    actor = _actor()
    secret = _write(lambda s: accounts.enrol_totp(s, ring, login, actor=actor))
    issuer = cfg.server.hostname
    console.print(f"TOTP secret: {secret}", highlight=False, soft_wrap=True)
    console.print(
        passwords.totp_uri(secret, login.strip().lower(), issuer),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    console.print("From now on, log in with the password followed by the 6-digit code (or password:code).")


@app.command("disable")
def disable(login: str) -> None:
    """Refuse every login of this account (password, certificate and tokens of its identity)."""
    from mssante.auth import accounts

    actor = _actor()
    _write(lambda s: accounts.set_disabled(s, login, True, actor=actor))
    console.print(f"{login.strip().lower()} disabled")


@app.command("enable")
def enable(login: str) -> None:
    from mssante.auth import accounts

    actor = _actor()
    _write(lambda s: accounts.set_disabled(s, login, False, actor=actor))
    console.print(f"{login.strip().lower()} enabled")


@app.command("cert")
def add_cert(login: str, cert: Path) -> None:
    """Bind one more client certificate (PEM) to an application account (e.g. on renewal)."""
    from mssante.auth import accounts

    try:
        pem = cert.read_bytes()
    except OSError as exc:
        fail(f"cannot read {cert}: {exc}")
    actor = _actor()
    row = _write(lambda s: accounts.add_certificate(s, login, pem, actor=actor))
    console.print(
        f"bound {row.subject} (sha256 {row.fingerprint}) to {login.strip().lower()}", highlight=False
    )


@app.command("list")
def list_accounts(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List local accounts (never their secrets)."""
    from rich.table import Table

    from mssante.auth.models import LocalAccount

    with Session(_engine(writer=True)) as session:
        rows = list(session.scalars(select(LocalAccount).order_by(LocalAccount.login)))
    records = [
        {
            "login": a.login,
            "kind": a.kind,
            "id": a.idnat or a.ins or a.local_id,
            "name": a.display_name,
            "password": a.password_hash is not None,
            "totp": a.totp_secret is not None,
            "disabled": a.disabled,
        }
        for a in rows
    ]
    if as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return
    table = Table("login", "kind", "id", "name", "password", "totp", "disabled")
    for r in records:
        table.add_row(*(str(r[k]) if r[k] is not None else "" for k in r))
    console.print(table)
