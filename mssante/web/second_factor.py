"""The web's own second factor (TOTP), for accounts without a SASL one.

A patient's mail client logs in with the password (``mssante user passwd``); the patient space
asks for more — "mot de passe + SMS" in Mon Espace Santé, a TOTP code here. When the account has
a TOTP of its own (``mssante user totp``) the authenticator checks the code; otherwise this
module does, against the secret enrolled for the web (``web_second_factors``). A wrong code
counts as an authentication failure of that login in the same brute-force counters
(``mssante.auth.throttle``) and is written to the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, or_, update
from sqlalchemy.orm import Session

from mssante import audit
from mssante.auth import accounts, passwords, throttle
from mssante.config import BruteForceSection
from mssante.crypto import KeyRing, KeyRingError
from mssante.db import transaction
from mssante.web.models import WebSecondFactor


def enrol(session: Session, ring: KeyRing, login: str, *, actor: str = "operator") -> str:
    """A new web TOTP secret for ``login`` (replacing any); returns it in clear, to show once."""
    login = accounts.normalise_login(login)
    secret = passwords.new_totp_secret()
    row = session.get(WebSecondFactor, login)
    sealed = accounts.seal_totp(ring, secret)
    if row is None:
        session.add(WebSecondFactor(login=login, totp_secret=sealed, created_at=datetime.now(UTC)))
    else:
        row.totp_secret, row.last_step = sealed, None
    audit.append(session, audit.AuditEvent(actor=actor, action="account.web_totp", object=f"account:{login}"))
    return secret


def enrolled(session: Session, login: str) -> bool:
    return session.get(WebSecondFactor, accounts.normalise_login(login)) is not None


def check(
    engine: Engine,
    writer: Engine,
    ring: KeyRing,
    policy: BruteForceSection,
    login: str,
    code: str,
    client_ip: str,
    now: float,
) -> throttle.Penalty | None:
    """None when ``code`` is valid (and not replayed); else the throttle's penalty. Checked
    before the password, so that a failure here is never cleared by a right password."""
    login = accounts.normalise_login(login)
    keys = [
        (throttle.IP, throttle.ip_key(client_ip)),
        (throttle.PAIR, throttle.pair_key(f"login:{login}", client_ip)),
    ]
    with Session(engine) as s:
        standing = throttle.standing(s, policy, keys, now)
    if standing.locked_until is not None:
        return throttle.Penalty(0.0, standing.locked_until)
    with Session(engine) as s:
        row = s.get(WebSecondFactor, login)
        stored, last = (row.totp_secret, row.last_step) if row is not None else (None, None)
    step = None
    if stored is not None and code:
        try:
            step = passwords.totp_step(accounts.open_totp(ring, stored), code, last, now)
        except KeyRingError:
            step = None
    with transaction(writer) as s:
        if step is not None:
            claimed = s.execute(
                update(WebSecondFactor)
                .where(
                    WebSecondFactor.login == login,
                    or_(WebSecondFactor.last_step.is_(None), WebSecondFactor.last_step < step),
                )
                .values(last_step=step)
            )
            if getattr(claimed, "rowcount", 0) == 1:
                return None
        for scope, key in keys:
            throttle.record_failure(s, policy, scope, key, now)
        penalty = throttle.standing(s, policy, keys, now)
        audit.append(
            s,
            audit.AuditEvent(
                actor=f"login:{login}",
                action="auth.failure",
                outcome="refused",
                source=client_ip,
                detail={"mechanism": "WEB-TOTP", "reason": "bad or reused second factor code"},
            ),
        )
    return penalty
