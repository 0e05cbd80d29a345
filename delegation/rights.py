"""Effective rights of an identity on a BAL: the one function SMTP, IMAP and the CLI ask.

Rights are a small set with a fixed mapping to RFC 4314 IMAP ACL letters, plus the
MSSanté-specific right to send on behalf of the BAL, which no IMAP letter covers (``p`` is
"post to a shared folder", not SMTP submission), so the two are kept apart: the IMAP ACL
commands read and write the letters only; ``send`` is granted with the CLI.

Effective rights = ownership ∪ membership ∪ unexpired, unrevoked grants. Ownership: the
professional a PER/CAB BAL is bound to, the responsible professional of an ORG/APP BAL, the
application whose account is the APP BAL, the patient of a patient BAL. Memberships and grants
come from a :class:`GrantSource` (``delegation.grants.GrantBook`` reads the database).
"""

from __future__ import annotations

import re
from datetime import datetime
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
IMAP_RIGHTS = frozenset(r for r in Right if r is not Right.SEND_ON_BEHALF)
IMAP_ORDER = "lrswikxtea"  # RFC 4314 order, without "p" (post), never granted here

# Rights spelled as words (CLI); each also accepted as its letter.
WORDS: dict[str, frozenset[Right]] = {
    "lookup": frozenset({Right.LOOKUP}),
    "read": frozenset({Right.READ}),
    "seen": frozenset({Right.KEEP_SEEN}),
    "flags": frozenset({Right.WRITE_FLAGS}),
    "insert": frozenset({Right.INSERT}),
    "create": frozenset({Right.CREATE}),
    "delete-folder": frozenset({Right.DELETE_FOLDER}),
    "delete": frozenset({Right.DELETE_MESSAGES}),
    "expunge": frozenset({Right.EXPUNGE}),
    "admin": frozenset({Right.ADMINISTER}),
    "send": frozenset({Right.SEND_ON_BEHALF}),
    # Presets.
    "read-only": frozenset({Right.LOOKUP, Right.READ}),
    "sort": frozenset(
        {Right.LOOKUP, Right.READ, Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES, Right.EXPUNGE}
    ),
    "all": IMAP_RIGHTS,
}
_LETTERS = re.compile(r"^[lrswikxtea]+$")


class InvalidRights(ValueError):
    """Rights text that names no known right."""


def parse_rights(text: str) -> frozenset[Right]:
    """``"read,flags,send"``, ``"lrs send"``, ``"read-only"`` → a set of rights.

    Tokens are separated by commas or spaces; each is a word, a preset or a run of RFC 4314
    letters. The legacy letters ``c`` and ``d`` are refused (ambiguous), ``p`` is not granted.
    """
    out: set[Right] = set()
    for token in re.split(r"[\s,]+", text.strip().lower()):
        if not token:
            continue
        if token in WORDS:
            out |= WORDS[token]
        elif _LETTERS.match(token):
            out |= {Right(c) for c in token}
        else:
            known = ", ".join(sorted(WORDS))
            raise InvalidRights(f"unknown right {token!r} (letters {IMAP_ORDER} or words: {known})")
    return frozenset(out)


def imap_letters(rights: frozenset[Right]) -> str:
    """The RFC 4314 letters of ``rights``, in canonical order (``send`` has none)."""
    return "".join(c for c in IMAP_ORDER if Right(c) in rights)


def format_rights(rights: frozenset[Right]) -> str:
    """Canonical text: ``"lrs"``, ``"lrs send"``, ``"send"``."""
    letters = imap_letters(rights)
    if Right.SEND_ON_BEHALF in rights:
        return f"{letters} send".strip()
    return letters


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


class GrantSource(Protocol):
    """Memberships and grants in force (unexpired, unrevoked) of an identity on a BAL."""

    def granted(self, identity: Identity, bal_key: str) -> tuple[frozenset[Right], datetime | None]:
        """The rights and the earliest expiry among the grants giving them (None: no expiry)."""
        ...


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


def rights_until(
    identity: Identity, bal: BalFacts | None, grants: GrantSource | None = None
) -> tuple[frozenset[Right], datetime | None]:
    """Effective rights and until when they hold unchanged (the earliest grant expiry)."""
    if bal is None or not bal.active:
        return NO_RIGHTS, None
    if owns(identity, bal):
        return ALL_RIGHTS, None
    if grants is None:
        return NO_RIGHTS, None
    return grants.granted(identity, bal.key)


def effective_rights(
    identity: Identity, bal: BalFacts | None, grants: GrantSource | None = None
) -> frozenset[Right]:
    """Rights of ``identity`` on ``bal``: ownership ∪ membership ∪ grants in force; nothing
    on an unknown or deactivated BAL."""
    return rights_until(identity, bal, grants)[0]


def may_send_as(identity: Identity, bal: BalFacts | None, grants: GrantSource | None = None) -> bool:
    return Right.SEND_ON_BEHALF in effective_rights(identity, bal, grants)
