"""Web sessions: a random token in a ``__Host-`` cookie, its SHA-256 in ``web_sessions``.

Idle sessions end after ``[web] session_minutes``; every request slides the end. A session
belongs to one space (``patient`` or ``pro``): a patient's cookie opens nothing under /pro/.
Blocking functions (database): FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from mssante.auth.identity import Identity, IdentityKind
from mssante.db import transaction
from mssante.sqlfast import utc
from mssante.web.models import WebSession

COOKIES = {"patient": "__Host-mssante-patient", "pro": "__Host-mssante-pro", "admin": "__Host-mssante-admin"}


@dataclass(frozen=True)
class WebUser:
    identity: Identity
    csrf: str
    space: str
    token_hash: str
    acting_for: str | None = None
    emergency: dict[str, str] = field(default_factory=dict)  # break-glass in force: INS → reason

    @property
    def ins(self) -> str:
        """The record the patient space shows: their own, or a represented minor's."""
        return self.acting_for or self.identity.id


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def identity_of(principal: str, login: str | None) -> Identity:
    kind, _, ident = principal.partition(":")
    return Identity(IdentityKind(kind), ident, login=login)


def open_session(writer: Engine, identity: Identity, space: str, minutes: int) -> str:
    """A new session for ``identity``; returns the cookie value (shown once, never stored)."""
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with transaction(writer) as s:
        s.execute(delete(WebSession).where(WebSession.expires_at < now))
        s.add(
            WebSession(
                token_hash=_hash(token),
                principal=identity.principal,
                login=identity.login,
                space=space,
                csrf=secrets.token_urlsafe(32),
                created_at=now,
                seen_at=now,
                expires_at=now + timedelta(minutes=minutes),
            )
        )
    return token


def load_session(
    engine: Engine, writer: Engine, token: str | None, space: str, minutes: int
) -> WebUser | None:
    """The user of a cookie, if its session is alive and of this space (and slide its end)."""
    if not token or len(token) > 100:
        return None
    key = _hash(token)
    now = datetime.now(UTC)
    with Session(engine) as s:
        row = s.get(WebSession, key)
        if row is None or row.space != space or utc(row.expires_at) <= now:
            return None
        emergency = json.loads(row.emergency) if row.emergency else {}
        user = WebUser(
            identity_of(row.principal, row.login), row.csrf, row.space, key, row.acting_for, emergency
        )
        stale = (now - utc(row.seen_at)).total_seconds() > 30
    if stale:  # one write per half minute at most, not one per page
        with transaction(writer) as s:
            found = s.get(WebSession, key)
            if found is not None:
                found.seen_at, found.expires_at = now, now + timedelta(minutes=minutes)
    return user


def close_session(writer: Engine, token_hash: str) -> None:
    with transaction(writer) as s:
        s.execute(delete(WebSession).where(WebSession.token_hash == token_hash))


def act_for(writer: Engine, token_hash: str, ins: str | None) -> None:
    """A legal representative switches the session to a represented patient's record (or back)."""
    with transaction(writer) as s:
        found = s.get(WebSession, token_hash)
        if found is not None:
            found.acting_for = ins


def break_glass(writer: Engine, token_hash: str, ins: str, reason: str) -> None:
    """Record a professional's break-glass on one patient for the rest of the session (kept in
    the session row, so every node serving the session applies it, and logout ends it)."""
    with transaction(writer) as s:
        found = s.get(WebSession, token_hash)
        if found is not None:
            current = json.loads(found.emergency) if found.emergency else {}
            current[ins] = reason
            found.emergency = json.dumps(current, ensure_ascii=False)
