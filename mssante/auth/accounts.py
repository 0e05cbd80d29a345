"""Local accounts: creation, passwords, TOTP enrolment, APP certificates, look-ups.

Synchronous functions working inside the caller's session (the CLI, the authenticator's
worker thread). Every change is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.auth import passwords
from mssante.auth.identity import (
    Identity,
    IdentityKind,
    InvalidIdentity,
    check_idnat,
    check_ins,
    check_local_id,
)
from mssante.auth.models import AccountCertificate, LocalAccount
from mssante.crypto import KeyRing, KeyRingError, SealedKey
from mssante.tls import fingerprint


class AccountError(Exception):
    """An account operation that cannot be done (unknown login, duplicate, wrong kind)."""


def normalise_login(login: str) -> str:
    return login.strip().lower()


def get(session: Session, login: str) -> LocalAccount | None:
    return session.scalars(select(LocalAccount).where(LocalAccount.login == normalise_login(login))).first()


def _require(session: Session, login: str) -> LocalAccount:
    account = get(session, login)
    if account is None:
        raise AccountError(f"no account with login {normalise_login(login)!r}")
    return account


def create(
    session: Session,
    login: str,
    kind: IdentityKind | str,
    identifier: str | None = None,
    *,
    display_name: str | None = None,
    password: str | None = None,
    actor: str = "operator",
) -> LocalAccount:
    """Create an account; ``identifier`` is the IdNat_PS, local id or INS for its kind.

    Applications get no identifier here: they are identified by the certificates added with
    :func:`add_certificate`, and never by a password.
    """
    kind = IdentityKind(kind)
    login = normalise_login(login)
    if not login or len(login) > 320 or any(c.isspace() or c == "\0" for c in login):
        raise AccountError(f"{login!r} is not a valid login")
    if get(session, login) is not None:
        raise AccountError(f"login {login!r} already exists")
    now = datetime.now(UTC)
    account = LocalAccount(
        login=login,
        kind=kind.value,
        display_name=display_name,
        disabled=False,
        created_at=now,
        updated_at=now,
    )
    try:
        if kind is IdentityKind.PROFESSIONAL:
            account.idnat = check_idnat(identifier or "")
        elif kind is IdentityKind.PATIENT:
            account.ins = check_ins(identifier or "")
        elif kind is IdentityKind.STAFF:
            account.local_id = check_local_id(identifier or login)
        elif identifier:
            raise AccountError("an application account is identified by its certificates, not an identifier")
    except InvalidIdentity as exc:
        raise AccountError(str(exc)) from None
    if password is not None:
        if kind is IdentityKind.APPLICATION:
            raise AccountError("application accounts authenticate by client certificate only")
        account.password_hash = passwords.hash_password(password)
    session.add(account)
    session.flush()
    audit.append(
        session,
        AuditEvent(
            actor=actor,
            action="account.create",
            object=f"account:{login}",
            detail={"kind": kind.value, "password": password is not None},
        ),
    )
    return account


def set_password(session: Session, login: str, password: str, *, actor: str = "operator") -> None:
    account = _require(session, login)
    if account.kind == IdentityKind.APPLICATION:
        raise AccountError("application accounts authenticate by client certificate only")
    account.password_hash = passwords.hash_password(password)
    account.updated_at = datetime.now(UTC)
    audit.append(
        session, AuditEvent(actor=actor, action="account.password", object=f"account:{account.login}")
    )


def seal_totp(ring: KeyRing, secret: str) -> str:
    """A TOTP secret as stored: wrapped by the key ring's active key."""
    sealed = ring.wrap(base64.b32decode(secret))
    return f"{sealed.key_id}:{base64.b64encode(sealed.wrapped).decode('ascii')}"


def open_totp(ring: KeyRing, stored: str) -> str:
    """The base32 TOTP secret of a stored value; KeyRingError if it cannot be opened."""
    key_id, _, data = stored.partition(":")
    try:
        wrapped = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError("stored TOTP secret is corrupt") from None
    return base64.b32encode(ring.unwrap(SealedKey(key_id, wrapped))).decode("ascii")


def enrol_totp(session: Session, ring: KeyRing, login: str, *, actor: str = "operator") -> str:
    """Give the account a new TOTP secret (replacing any previous one), stored sealed by the key
    ring; returns the secret in clear, to show once to the user."""
    account = _require(session, login)
    if account.kind == IdentityKind.APPLICATION:
        raise AccountError("application accounts authenticate by client certificate only")
    secret = passwords.new_totp_secret()
    account.totp_secret, account.totp_last_step = seal_totp(ring, secret), None
    account.updated_at = datetime.now(UTC)
    audit.append(
        session,
        AuditEvent(
            actor=actor, action="account.totp", object=f"account:{account.login}", detail={"enrolled": True}
        ),
    )
    return secret


def set_disabled(session: Session, login: str, disabled: bool, *, actor: str = "operator") -> None:
    account = _require(session, login)
    account.disabled = disabled
    account.updated_at = datetime.now(UTC)
    audit.append(
        session,
        AuditEvent(
            actor=actor,
            action="account.disable" if disabled else "account.enable",
            object=f"account:{account.login}",
        ),
    )


def add_certificate(
    session: Session, login: str, pem: bytes, *, actor: str = "operator"
) -> AccountCertificate:
    """Bind a client certificate (PEM) to an application account, by SHA-256 fingerprint."""
    account = _require(session, login)
    if account.kind != IdentityKind.APPLICATION:
        raise AccountError("only application accounts authenticate by client certificate")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AccountError(f"not a PEM certificate: {exc}") from None
    fp = fingerprint(cert.public_bytes(serialization.Encoding.DER))
    if session.get(AccountCertificate, fp) is not None:
        raise AccountError(f"certificate {fp} is already bound to an account")
    row = AccountCertificate(
        fingerprint=fp,
        account_id=account.id,
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        added_at=datetime.now(UTC),
    )
    session.add(row)
    audit.append(
        session,
        AuditEvent(
            actor=actor,
            action="account.certificate",
            object=f"account:{account.login}",
            detail={"fingerprint": fp, "subject": row.subject},
        ),
    )
    return row


def by_certificate(session: Session, fp: str) -> tuple[LocalAccount, AccountCertificate] | None:
    row = session.get(AccountCertificate, fp)
    if row is None:
        return None
    account = session.get(LocalAccount, row.account_id)
    return (account, row) if account is not None else None


def disabled_identity(session: Session, identity: Identity) -> bool:
    """Whether a local account with this identity exists and is disabled (blocks token logins too)."""
    column = {
        IdentityKind.PROFESSIONAL: LocalAccount.idnat,
        IdentityKind.PATIENT: LocalAccount.ins,
        IdentityKind.STAFF: LocalAccount.local_id,
    }.get(identity.kind)
    if column is None:
        return False
    return (
        session.scalars(
            select(LocalAccount.id).where(column == identity.id, LocalAccount.disabled.is_(True)).limit(1)
        ).first()
        is not None
    )


def identity_of(account: LocalAccount) -> Identity:
    """The identity a (non-application) local account authenticates as."""
    kind = IdentityKind(account.kind)
    if kind is IdentityKind.PROFESSIONAL and account.idnat:
        return Identity.professional(account.idnat, login=account.login)
    if kind is IdentityKind.PATIENT and account.ins:
        return Identity.patient(account.ins, login=account.login)
    if kind is IdentityKind.STAFF and account.local_id:
        return Identity.staff(account.local_id, login=account.login)
    raise AccountError(f"account {account.login!r} has no identity usable with a password")
