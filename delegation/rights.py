"""Effective rights of an identity on a BAL: the one function SMTP, IMAP and the CLI ask.

Rights are a small set with a fixed mapping to RFC 4314 IMAP ACL letters, plus the
MSSanté-specific right to send on behalf of the BAL, which no IMAP letter covers (``p`` is
"post to a shared folder", not SMTP submission), so the two are kept apart.

Today the rights come from ownership: the professional a PER/CAB BAL is bound to, the
responsible professional of an ORG/APP BAL, the application whose account is the APP BAL,
the patient of a patient BAL. Grants (delegation to a secretary, ORG membership) extend this
same function.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from mssante.auth.identity import Identity, IdentityKind


class Right(StrEnum):
    LOOKUP = "l"
    READ = "r"
    KEEP_SEEN = "s"
    WRITE_FLAGS = "w"
    INSERT = "i"
    CREATE = "k"
    DELETE_FOLDER = "x"
    DELETE_MESSAGES = "t"
    EXPUNGE = "e"
    ADMINISTER = "a"
    SEND_ON_BEHALF = "send"


ALL_RIGHTS = frozenset(Right)
NO_RIGHTS: frozenset[Right] = frozenset()


class BalFacts(Protocol):
    """What the annuaire tells about a BAL (``annuaire.lookup.BalInfo`` satisfies it)."""

    @property
    def key(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def professional_idnat(self) -> str | None: ...
    @property
    def responsible_idnat(self) -> str | None: ...
    @property
    def ins(self) -> str | None: ...


def owns(identity: Identity, bal: BalFacts) -> bool:
    """Whether the identity is the BAL's holder (full rights, may grant to others)."""
    if identity.kind is IdentityKind.PROFESSIONAL:
        if bal.type in ("ORG", "APP"):
            return bal.responsible_idnat == identity.id
        return bal.professional_idnat == identity.id
    if identity.kind is IdentityKind.APPLICATION:
        # An APP identity's account login is the address of its APP BAL.
        return bal.type == "APP" and (identity.login or "").lower() == bal.key
    if identity.kind is IdentityKind.PATIENT:
        return bal.ins is not None and bal.ins == identity.id
    return False


def effective_rights(identity: Identity, bal: BalFacts | None) -> frozenset[Right]:
    """Rights of ``identity`` on ``bal``; nothing on an unknown or deactivated BAL."""
    if bal is None or not bal.active:
        return NO_RIGHTS
    if owns(identity, bal):
        return ALL_RIGHTS
    return NO_RIGHTS


def may_send_as(identity: Identity, bal: BalFacts | None) -> bool:
    return Right.SEND_ON_BEHALF in effective_rights(identity, bal)
