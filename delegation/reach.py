"""Which BALs an identity may open, and with which rights: what a client is told it can
configure (demo.json's ``delegated``) and what a login with no BAL of its own opens by default.

Candidates are the BALs the identity holds (a PER/CAB BAL bound to the professional, an ORG or
APP BAL it is responsible for, the APP BAL that is the application's login, the patient's own),
and those a grant or membership in force gives it; each is then asked of the one rights
function, so this list never says more than the server allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, select, union
from sqlalchemy.orm import Session

from annuaire.models import Bal, Professional
from delegation.grants import GrantBook
from delegation.models import MEMBER
from delegation.rights import Right, owns
from mssante.auth.identity import Identity, IdentityKind
from mssante.policy import DirectoryBal, Policy


@dataclass(frozen=True)
class Reach:
    bal: DirectoryBal
    rights: frozenset[Right]
    holder: bool  # the identity holds the BAL (all rights, may grant)

    @property
    def readable(self) -> bool:
        return Right.READ in self.rights


def _held_through(column: Any) -> Select[str]:
    """Active BALs whose ``column`` (the owner, the responsible) is the professional of
    ``idnat``: a look-up by the unique RPPS key, then by the BAL's foreign-key index."""
    return (
        select(Bal.address_key)
        .join(Professional, Professional.id == column)
        .where(Professional.idnat == bindparam("idnat"), Bal.active.is_(True))
    )


# Built once (statement construction cost a LIST 2 ms), and as two indexed look-ups: the one
# query with an OR across two outer joins scanned every BAL of the annuaire (150 ms at 400,000).
_HELD_BY_PROFESSIONAL = union(_held_through(Bal.professional_id), _held_through(Bal.responsible_id))
_HELD_BY_PATIENT = select(Bal.address_key).where(Bal.active.is_(True), Bal.ins == bindparam("ins"))


def held_bals(conn: Connection | Session, identity: Identity) -> list[str]:
    """Active BAL keys the identity holds through the annuaire (professionals and patients)."""
    if identity.kind is IdentityKind.PATIENT:
        return list(conn.execute(_HELD_BY_PATIENT, {"ins": identity.id}).scalars().all())
    if identity.kind is not IdentityKind.PROFESSIONAL:
        return []
    return sorted(str(key) for key in conn.execute(_HELD_BY_PROFESSIONAL, {"idnat": identity.id}).scalars())


def reachable(policy: Policy, book: GrantBook, identity: Identity) -> list[Reach]:
    """Every local, active BAL on which the identity holds ``l`` or ``r``, sorted by address."""
    with Session(book.engine) as session:
        keys = set(held_bals(session, identity))
    keys.update(book.bals_of(identity))
    if identity.login:
        keys.add(identity.login.lower())
    found: list[Reach] = []
    for key in sorted(keys):
        bal = policy.directory.bal(key)
        if bal is None or not bal.active or not policy.is_local(bal.domain):
            continue
        rights = policy.rights(identity, bal)
        if Right.LOOKUP in rights or Right.READ in rights:
            found.append(Reach(bal, rights, owns(identity, bal)))
    return found


def default_bal(policy: Policy, book: GrantBook, identity: Identity) -> str | None:
    """The BAL a login opens as its own when it names none: the BAL at its login if it may read
    it, else its single readable BAL (the secretary of one doctor, the pharmacist of one
    pharmacy, the front desk of one service), else the one personal (PER/CAB) BAL it holds;
    None otherwise (several BALs and none its own: they are all in the shared namespace)."""
    if identity.login:
        own = policy.mailbox(identity, identity.login)
        if own is not None:
            return own.address
    readable = [r for r in reachable(policy, book, identity) if r.readable]
    if len(readable) == 1:
        return readable[0].bal.address
    # A token login (Pro Santé Connect) names no address: its personal BAL, if it has one.
    personal = [r for r in readable if r.holder and r.bal.type in ("PER", "CAB")]
    return personal[0].bal.address if len(personal) == 1 else None


def via(book: GrantBook, identity: Identity, reach: Reach) -> str:
    """How the identity reaches the BAL: ``holder``, ``member`` (of an ORG BAL) or ``delegate``."""
    if reach.holder:
        return "holder"
    roles = {g.role for g in book.on_bal(reach.bal.key) if g.grantee == identity.principal}
    return MEMBER if MEMBER in roles else "delegate"
