"""Who may grant rights on a BAL: the one place that says so (CLI, IMAP SETACL, demo).

- the owner of a PER (or CAB) BAL: the professional it is bound to;
- the responsible professional of an ORG or APP BAL;
- a grantee holding ``a`` (administer), and then only rights it holds itself;
- the operator administrator, through the CLI only, with a mandatory reason.

Nobody else: not a patient on its own BAL, not an application on its APP BAL, not a grantee
without ``a``. Memberships exist on ORG BALs only.
"""

from __future__ import annotations

from delegation.rights import BalFacts, Right, format_rights, owns
from mssante.auth.identity import Identity, IdentityKind

GRANTABLE_TYPES = frozenset({"PER", "CAB", "ORG", "APP"})


class Refused(PermissionError):
    """A grant or revocation the rules do not allow; the text says why."""


def check_target(bal: BalFacts | None, *, role: str, address: str) -> BalFacts:
    if bal is None or not bal.active:
        raise Refused(f"<{address}> is not a published, active BAL")
    if bal.type not in GRANTABLE_TYPES:
        raise Refused(f"<{bal.key}> is a {bal.type} BAL: it cannot be delegated")
    if role == "member" and bal.type != "ORG":
        raise Refused(f"<{bal.key}> is not an ORG BAL: it has no members")
    return bal


def is_holder(actor: Identity, bal: BalFacts) -> bool:
    """The professional who holds the BAL (owner of a PER/CAB, responsible of an ORG/APP)."""
    return actor.kind is IdentityKind.PROFESSIONAL and owns(actor, bal)


def check_grant(
    actor: Identity | None,
    bal: BalFacts,
    actor_rights: frozenset[Right],
    wanted: frozenset[Right],
    *,
    reason: str | None,
) -> None:
    """Raise :class:`Refused` unless ``actor`` (None: the operator) may give ``wanted`` on ``bal``."""
    if not wanted:
        raise Refused("no rights to grant (revoke instead)")
    if Right.ADMINISTER in wanted and not wanted >= {Right.LOOKUP}:
        raise Refused("administer (a) needs lookup (l)")
    if actor is None:
        if not (reason or "").strip():
            raise Refused("an operator grant or revocation needs a reason (--reason)")
        return
    if is_holder(actor, bal):
        return
    if Right.ADMINISTER not in actor_rights:
        raise Refused(f"{actor.principal} may not grant rights on <{bal.key}>: only its holder may")
    beyond = wanted - actor_rights
    if beyond:
        raise Refused(f"{actor.principal} may not grant rights it does not hold ({format_rights(beyond)})")


def check_revoke(
    actor: Identity | None, bal: BalFacts, actor_rights: frozenset[Right], *, reason: str | None
) -> None:
    if actor is None:
        if not (reason or "").strip():
            raise Refused("an operator grant or revocation needs a reason (--reason)")
        return
    if is_holder(actor, bal) or Right.ADMINISTER in actor_rights:
        return
    raise Refused(f"{actor.principal} may not revoke rights on <{bal.key}>: only its holder may")


def check_grantee(grantee: Identity, bal: BalFacts) -> None:
    if owns(grantee, bal):
        raise Refused(f"{grantee.principal} holds <{bal.key}> already: its rights are not granted")
