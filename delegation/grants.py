"""Grants and memberships: the database side of delegation.

:class:`GrantBook` reads what is in force for the rights resolution (it is the
``GrantSource`` of :mod:`delegation.rights`); :func:`grant` and :func:`revoke` write, after
the rules of :mod:`delegation.rules`, in the caller's transaction, with their audit record and
a bump of the generation counter — so every process notices at its next check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from delegation import rules
from delegation.models import DELEGATE, MEMBER, DelegationState, Grant
from delegation.rights import NO_RIGHTS, BalFacts, Right, format_rights, parse_rights
from mssante import audit
from mssante.audit import AuditEvent
from mssante.auth import accounts
from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity
from mssante.auth.models import LocalAccount

ROLES = (DELEGATE, MEMBER)
Clock = Callable[[], datetime]


def utc(value: datetime | None) -> datetime | None:
    """SQLite keeps no zone: stored values are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class GrantInfo:
    id: int
    bal: str
    grantee: str
    role: str
    rights: frozenset[Right]
    granted_by: str
    reason: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def in_force(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _info(row: Grant) -> GrantInfo:
    created = utc(row.created_at)
    assert created is not None
    return GrantInfo(
        row.id,
        row.bal,
        row.grantee,
        row.role,
        parse_rights(row.rights),
        row.granted_by,
        row.reason,
        created,
        utc(row.expires_at),
        utc(row.revoked_at),
        row.revoked_by,
    )


# The counter as driver SQL: read before every delegate's command and every LIST, where the
# statement object's compilation and result machinery cost more than the read itself.
GENERATION_SQL = f"SELECT generation FROM {DelegationState.__tablename__} WHERE id = 1"


def bump(session: Session) -> None:
    done = session.execute(
        update(DelegationState)
        .where(DelegationState.id == 1)
        .values(generation=DelegationState.generation + 1)
    )
    if getattr(done, "rowcount", 1) == 0:
        session.execute(insert(DelegationState).values(id=1, generation=1))


class GrantBook:
    """Grants in force, cached per grantee and dropped whenever the generation moves.

    Every question first reads the one-row generation counter (a primary-key read): a grant
    or revocation made by any process — the CLI, another server — counts at the next question,
    which is what makes revocation immediate. Expiry needs no write: it is compared at each
    question with the clock.
    """

    def __init__(self, engine: Engine, *, clock: Clock = _now) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._generation = -1
        self._by_grantee: dict[str, tuple[GrantInfo, ...]] = {}

    def generation(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(GENERATION_SQL).scalar() or 0)

    def in_memory(self, generation: int) -> GrantsInMemory:
        """The grants at ``generation`` (a counter just read) from this book's memory alone."""
        return GrantsInMemory(self, generation)

    def as_of(self, generation: int) -> GrantsAsOf:
        """The grants at ``generation``, a counter the caller has just read: its questions do
        not read the counter again (a LIST asks one per BAL it shows)."""
        return GrantsAsOf(self, generation)

    def _refresh(self, current: int | None = None) -> None:
        if current is None:
            current = self.generation()
        with self._lock:
            if current != self._generation:
                self._by_grantee.clear()
                self._generation = current

    def _of(self, principal: str) -> tuple[GrantInfo, ...]:
        with self._lock:
            found = self._by_grantee.get(principal)
            generation_seen = self._generation
        if found is not None:
            return found
        with Session(self.engine) as session:
            rows = session.scalars(
                select(Grant).where(Grant.grantee == principal, Grant.revoked_at.is_(None))
            ).all()
            loaded = tuple(_info(r) for r in rows)
        with self._lock:
            if self._generation == generation_seen:
                self._by_grantee[principal] = loaded
        return loaded

    def held(self, principal: str, generation: int) -> tuple[GrantInfo, ...] | None:
        """The grantee's grants when this book holds them at ``generation`` (a counter the
        caller has just read); None when answering would read the database."""
        with self._lock:
            return self._by_grantee.get(principal) if self._generation == generation else None

    def granted(
        self, identity: Identity, bal_key: str, *, generation: int | None = None
    ) -> tuple[frozenset[Right], datetime | None]:
        """``generation``: the counter as the caller has just read it (None: read it now)."""
        self._refresh(generation)
        return in_force_on(self._of(identity.principal), bal_key, self.clock())

    def bals_of(self, identity: Identity, *, generation: int | None = None) -> list[str]:
        """BALs on which the identity holds ``l`` through a grant or membership in force."""
        self._refresh(generation)
        now = self.clock()
        found = {g.bal for g in self._of(identity.principal) if g.in_force(now) and Right.LOOKUP in g.rights}
        return sorted(found)

    def on_bal(self, bal_key: str, *, history: bool = False) -> list[GrantInfo]:
        """Grants of a BAL: those in force, or every one ever written (``history``)."""
        with Session(self.engine) as session:
            query = select(Grant).where(Grant.bal == bal_key)
            rows = [_info(r) for r in session.scalars(query.order_by(Grant.id)).all()]
        if history:
            return rows
        now = self.clock()
        return [g for g in rows if g.in_force(now)]


def in_force_on(
    grants: tuple[GrantInfo, ...], bal_key: str, now: datetime
) -> tuple[frozenset[Right], datetime | None]:
    """The rights those grants give on a BAL now, and the earliest expiry among them."""
    rights: set[Right] = set()
    until: datetime | None = None
    for g in grants:
        if g.bal == bal_key and g.in_force(now):
            rights |= g.rights
            if g.expires_at is not None and (until is None or g.expires_at < until):
                until = g.expires_at
    return (frozenset(rights) if rights else NO_RIGHTS), until


@dataclass(frozen=True)
class GrantsInMemory:
    """A :class:`GrantBook`'s grants at a generation just read, from its memory alone (a
    ``GrantSource``): :class:`NotInMemory` when a question would read the database."""

    book: GrantBook
    generation: int

    def granted(self, identity: Identity, bal_key: str) -> tuple[frozenset[Right], datetime | None]:
        held = self.book.held(identity.principal, self.generation)
        if held is None:
            raise NotInMemory(identity.principal)
        return in_force_on(held, bal_key, self.book.clock())


class NotInMemory(Exception):
    """The grants asked about are not in the book's memory at the generation given."""


@dataclass(frozen=True)
class GrantsAsOf:
    """A :class:`GrantBook` at a generation just read (a ``GrantSource``)."""

    book: GrantBook
    generation: int

    def granted(self, identity: Identity, bal_key: str) -> tuple[frozenset[Right], datetime | None]:
        return self.book.granted(identity, bal_key, generation=self.generation)


# -- grantees ---------------------------------------------------------------------------------
def resolve_grantee(session: Session, text: str) -> Identity:
    """A grantee named by its login (``secretaire.martin@…``) or its principal
    (``staff:secretaire.martin``, ``professional:810100000011``)."""
    text = text.strip()
    kind, sep, ident = text.partition(":")
    if sep and kind in {k.value for k in IdentityKind}:
        try:
            if kind == IdentityKind.PROFESSIONAL:
                return Identity.professional(ident)
            if kind == IdentityKind.STAFF:
                return Identity.staff(ident)
            if kind == IdentityKind.PATIENT:
                return Identity.patient(ident)
        except InvalidIdentity as exc:
            raise rules.Refused(str(exc)) from None
        raise rules.Refused("applications hold their own APP BAL only; they are not granted rights")
    account = accounts.get(session, text)
    if account is None:
        raise rules.Refused(f"{text!r} is neither an account login nor an identity (kind:id)")
    if account.kind == IdentityKind.APPLICATION:
        raise rules.Refused("applications hold their own APP BAL only; they are not granted rights")
    try:
        return accounts.identity_of(account)
    except accounts.AccountError as exc:
        raise rules.Refused(str(exc)) from None


def label(session: Session, principal: str) -> str:
    """The login of the account behind a principal, for people; the principal otherwise."""
    kind, _, ident = principal.partition(":")
    column = {
        IdentityKind.PROFESSIONAL.value: LocalAccount.idnat,
        IdentityKind.STAFF.value: LocalAccount.local_id,
        IdentityKind.PATIENT.value: LocalAccount.ins,
    }.get(kind)
    if column is None:
        return principal
    login = session.scalars(
        select(LocalAccount.login).where(column == ident, LocalAccount.kind == kind).order_by(LocalAccount.id)
    ).first()
    return login or principal


# -- writes -----------------------------------------------------------------------------------
def _actor_text(actor: Identity | None, operator: str | None) -> str:
    if actor is not None:
        return actor.principal
    return f"operator:{operator or 'cli'}"


def _current(session: Session, bal: str, grantee: str, role: str) -> list[Grant]:
    return list(
        session.scalars(
            select(Grant).where(
                Grant.bal == bal, Grant.grantee == grantee, Grant.role == role, Grant.revoked_at.is_(None)
            )
        ).all()
    )


def grant(
    session: Session,
    *,
    bal: BalFacts,
    grantee: Identity,
    rights: frozenset[Right],
    actor: Identity | None,
    actor_rights: frozenset[Right] = NO_RIGHTS,
    operator: str | None = None,
    reason: str | None = None,
    expires_at: datetime | None = None,
    role: str = DELEGATE,
    source: str | None = None,
    now: datetime | None = None,
) -> GrantInfo:
    """Give ``grantee`` exactly ``rights`` on ``bal`` (replacing its current grant of that role).

    ``actor`` None is the operator administrator (``operator`` names them, ``reason`` is
    mandatory). Raises :class:`delegation.rules.Refused` when the rules say no.
    """
    if role not in ROLES:
        raise rules.Refused(f"unknown role {role!r} (delegate or member)")
    rules.check_target(bal, role=role, address=bal.key)
    rules.check_grantee(grantee, bal)
    rules.check_grant(actor, bal, actor_rights, rights, reason=reason)
    when = now or _now()
    expires = utc(expires_at)
    if expires is not None and expires <= when:
        raise rules.Refused("the expiry is in the past")
    by = _actor_text(actor, operator)
    replaced = _current(session, bal.key, grantee.principal, role)
    for row in replaced:
        row.revoked_at, row.revoked_by = when, by
    row = Grant(
        bal=bal.key,
        grantee=grantee.principal,
        role=role,
        rights=format_rights(rights),
        granted_by=by,
        reason=reason,
        created_at=when,
        expires_at=expires,
    )
    session.add(row)
    session.flush()
    bump(session)
    audit.append(
        session,
        AuditEvent(
            actor=by,
            action="delegation.grant",
            bal=bal.key,
            object=grantee.principal,
            source=source,
            detail={
                "role": role,
                "rights": format_rights(rights),
                "expires_at": expires.isoformat() if expires else None,
                "reason": reason,
                "replaces": [r.id for r in replaced] or None,
                "grant": row.id,
            },
        ),
    )
    return _info(row)


def revoke(
    session: Session,
    *,
    bal: BalFacts,
    grantee: str,
    actor: Identity | None,
    actor_rights: frozenset[Right] = NO_RIGHTS,
    operator: str | None = None,
    reason: str | None = None,
    role: str | None = None,
    source: str | None = None,
) -> int:
    """Revoke the grants in force of ``grantee`` (a principal) on ``bal``; returns how many."""
    rules.check_revoke(actor, bal, actor_rights, reason=reason)
    by = _actor_text(actor, operator)
    when = _now()
    rows = [
        r for role_ in ([role] if role else list(ROLES)) for r in _current(session, bal.key, grantee, role_)
    ]
    for row in rows:
        row.revoked_at, row.revoked_by = when, by
    if rows:
        bump(session)
        audit.append(
            session,
            AuditEvent(
                actor=by,
                action="delegation.revoke",
                bal=bal.key,
                object=grantee,
                source=source,
                detail={"grants": [r.id for r in rows], "reason": reason},
            ),
        )
    return len(rows)
