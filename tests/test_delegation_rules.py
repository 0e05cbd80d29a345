"""Delegation rules and grants on a real database (SQLite, and PostgreSQL when configured):
rights spelling, who may grant, re-delegation with ``a``, expiry, revocation, generation,
the one rights function and the audit records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from delegation import grants
from delegation.grants import GrantBook
from delegation.rights import (
    ALL_RIGHTS,
    NO_RIGHTS,
    InvalidRights,
    Right,
    effective_rights,
    format_rights,
    parse_rights,
    rights_until,
)
from delegation.rules import Refused
from mssante.audit import AuditRecord
from mssante.auth import accounts
from mssante.auth.identity import Identity
from mssante.db import transaction
from mssante.demo import PATIENTS
from mssante.runtime import Runtime

MARTIN = Identity.professional("810100000011")
DURAND = Identity.professional("810100000029")
SECRETARY = Identity.staff("secretaire.martin")
ACCUEIL = Identity.staff("accueil.cardio")
PATIENT = Identity.patient(PATIENTS[0]["ins"])


@dataclass(frozen=True)
class FakeBal:
    key: str
    type: str
    professional_idnat: str | None = None
    responsible_idnat: str | None = None
    active: bool = True
    ins: str | None = None


PER = FakeBal("claire.martin@demo.mssante.fr", "PER", professional_idnat=MARTIN.id)
ORG = FakeBal("cardiologie@demo.mssante.fr", "ORG", responsible_idnat=DURAND.id)
PAT = FakeBal(f"{PATIENT.id}@patient.mssante.fr", "PAT", ins=PATIENT.id)


def test_rights_are_spelled_as_words_presets_or_letters() -> None:
    assert parse_rights("read-only") == {Right.LOOKUP, Right.READ}
    assert parse_rights("lookup, read,flags send") == {
        Right.LOOKUP,
        Right.READ,
        Right.WRITE_FLAGS,
        Right.SEND_ON_BEHALF,
    }
    assert parse_rights("lrswite send") == parse_rights("sort,insert,send")
    assert format_rights(parse_rights("send all")) == "lrswikxtea send"
    for bad in ("lrp", "c", "fly", "lr+w"):
        with pytest.raises(InvalidRights):
            parse_rights(bad)


def test_ownership_without_grants() -> None:
    assert effective_rights(MARTIN, PER) == ALL_RIGHTS
    assert effective_rights(DURAND, ORG) == ALL_RIGHTS
    assert effective_rights(SECRETARY, PER) == NO_RIGHTS
    assert effective_rights(MARTIN, FakeBal(PER.key, "PER", MARTIN.id, active=False)) == NO_RIGHTS


def _grant(runtime: Runtime, **kwargs: object) -> grants.GrantInfo:
    with transaction(runtime.writer_engine) as session:
        return grants.grant(session, **kwargs)  # type: ignore[arg-type]


def test_who_may_grant(runtime: Runtime) -> None:
    book = GrantBook(runtime.engine)
    lr = parse_rights("lr")
    # The holder of a PER BAL, the responsible of an ORG BAL.
    _grant(runtime, bal=PER, grantee=SECRETARY, rights=lr, actor=MARTIN)
    _grant(runtime, bal=ORG, grantee=MARTIN, rights=parse_rights("sort send"), actor=DURAND, role="member")
    assert effective_rights(SECRETARY, PER, book) == lr
    assert Right.SEND_ON_BEHALF in effective_rights(MARTIN, ORG, book)
    refusals = [
        # a colleague, a grantee without "a", a member, the patient on its own BAL
        dict(bal=PER, grantee=ACCUEIL, rights=lr, actor=DURAND),
        dict(bal=PER, grantee=ACCUEIL, rights=lr, actor=SECRETARY, actor_rights=lr),
        dict(bal=ORG, grantee=ACCUEIL, rights=lr, actor=MARTIN, actor_rights=parse_rights("sort send")),
        dict(bal=PAT, grantee=SECRETARY, rights=lr, actor=PATIENT),
        # the operator without a reason; members only on ORG BALs; the holder itself
        dict(bal=PER, grantee=ACCUEIL, rights=lr, actor=None, operator="cli:root"),
        dict(bal=PER, grantee=ACCUEIL, rights=lr, actor=MARTIN, role="member"),
        dict(bal=PER, grantee=MARTIN, rights=lr, actor=None, operator="cli:root", reason="x"),
        dict(bal=PER, grantee=ACCUEIL, rights=lr, actor=MARTIN, expires_at=datetime.now(UTC) - timedelta(1)),
    ]
    for case in refusals:
        with pytest.raises(Refused):
            _grant(runtime, **case)
    _grant(
        runtime, bal=PER, grantee=ACCUEIL, rights=lr, actor=None, operator="cli:root", reason="remplacement"
    )
    assert effective_rights(ACCUEIL, PER, book) == lr


def test_a_grantee_with_administer_re_delegates_only_what_it_holds(runtime: Runtime) -> None:
    book = GrantBook(runtime.engine)
    held = parse_rights("lrsa")
    _grant(runtime, bal=PER, grantee=SECRETARY, rights=held, actor=MARTIN)
    mine = effective_rights(SECRETARY, PER, book)
    _grant(runtime, bal=PER, grantee=ACCUEIL, rights=parse_rights("lr"), actor=SECRETARY, actor_rights=mine)
    for beyond in ("lrw", "lr send"):
        with pytest.raises(Refused, match="does not hold"):
            _grant(
                runtime,
                bal=PER,
                grantee=ACCUEIL,
                rights=parse_rights(beyond),
                actor=SECRETARY,
                actor_rights=mine,
            )


def test_expiry_revocation_generation_and_trace(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    clock = [now]
    book = GrantBook(runtime.engine, clock=lambda: clock[0])
    start = book.generation()
    until = now + timedelta(hours=8)
    _grant(
        runtime, bal=PER, grantee=SECRETARY, rights=parse_rights("lr send"), actor=MARTIN, expires_at=until
    )
    assert book.generation() == start + 1
    rights, expiry = rights_until(SECRETARY, PER, book)
    assert rights == parse_rights("lr send") and expiry == until
    assert book.bals_of(SECRETARY) == [PER.key]
    clock[0] = until  # expired: no write needed, nothing in force
    assert effective_rights(SECRETARY, PER, book) == NO_RIGHTS
    assert book.bals_of(SECRETARY) == []
    clock[0] = now
    # Replacing a grant revokes the previous one; revoking takes effect at the next question.
    _grant(runtime, bal=PER, grantee=SECRETARY, rights=parse_rights("lrs"), actor=MARTIN)
    assert effective_rights(SECRETARY, PER, book) == parse_rights("lrs")
    with pytest.raises(Refused), transaction(runtime.writer_engine) as session:
        grants.revoke(session, bal=PER, grantee=SECRETARY.principal, actor=SECRETARY)
    with transaction(runtime.writer_engine) as session:
        assert grants.revoke(session, bal=PER, grantee=SECRETARY.principal, actor=MARTIN, source="test") == 1
    assert effective_rights(SECRETARY, PER, book) == NO_RIGHTS
    history = book.on_bal(PER.key, history=True)
    assert len(history) == 2 and all(g.revoked_at is not None for g in history)
    assert book.on_bal(PER.key) == []
    with Session(runtime.engine) as session:
        trail = session.scalars(select(AuditRecord).where(AuditRecord.bal == PER.key)).all()
    assert [r.action for r in trail] == ["delegation.grant", "delegation.grant", "delegation.revoke"]
    assert {r.actor for r in trail} == {MARTIN.principal}


def test_grantees_are_named_by_login_or_principal(runtime: Runtime) -> None:
    with transaction(runtime.writer_engine) as session:
        accounts.create(
            session, "secretaire.martin@demo.mssante.fr", "staff", "secretaire.martin", password="x" * 16
        )
        accounts.create(session, "dpi@demo.mssante.fr", "application")
    with Session(runtime.engine) as session:
        assert grants.resolve_grantee(session, "secretaire.martin@demo.mssante.fr") == Identity.staff(
            "secretaire.martin", login="secretaire.martin@demo.mssante.fr"
        )
        assert grants.resolve_grantee(session, "professional:810100000029") == DURAND
        assert grants.label(session, SECRETARY.principal) == "secretaire.martin@demo.mssante.fr"
        assert grants.label(session, DURAND.principal) == DURAND.principal
        for bad in ("nobody", "professional:12", "dpi@demo.mssante.fr", "application:" + "ab" * 32):
            with pytest.raises(Refused):
                grants.resolve_grantee(session, bad)


def test_policy_asks_the_one_function(runtime: Runtime) -> None:
    """SMTP (Policy.sender) and IMAP (Policy.mailbox) see the grants of the runtime's book."""
    assert runtime.policy is not None and runtime.policy.grants is runtime.grants
    book = runtime.grants
    assert book is not None
    _grant(runtime, bal=PER, grantee=SECRETARY, rights=parse_rights("lr"), actor=MARTIN)
    assert runtime.policy.rights(SECRETARY, PER) == parse_rights("lr")
