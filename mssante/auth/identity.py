"""Who is talking: the one typed value every front door hands to the policy.

An ``Identity`` says only *who* authenticated, never what they may use: linking it to BALs
is the annuaire's and the delegation's job. The four kinds follow DESIGN.md §6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from annuaire.identifiers import IdentifierError, validate_nir


class IdentityKind(StrEnum):
    PROFESSIONAL = "professional"  # IdNat_PS, e.g. 810102727017 (8 + RPPS)
    STAFF = "staff"  # operator-local id, e.g. a medical secretary
    APPLICATION = "application"  # client certificate (subject + SHA-256 fingerprint)
    PATIENT = "patient"  # INS matricule (15 characters incl. key)


class InvalidIdentity(ValueError):
    """An identifier that is not of its kind's form."""


# A person's IdNat_PS is a type prefix (TRE_G08) + national number: 8 + 11-digit RPPS, or 0 +
# 9-digit ADELI for those without RPPS. We check the form, not a check digit (none is confirmed).
_IDNAT = re.compile(r"^(?:8\d{11}|0\d{9})$")
_LOCAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_idnat(value: str) -> str:
    value = value.strip()
    if not _IDNAT.match(value):
        raise InvalidIdentity(f"{value!r} is not an IdNat_PS (e.g. 8 + 11-digit RPPS)")
    return value


def check_ins(value: str) -> str:
    """A 15-character INS matricule whose key verifies: the one validator,
    :func:`annuaire.identifiers.validate_nir`, so that login, directory and DMP agree."""
    try:
        return validate_nir(value)
    except IdentifierError as exc:
        raise InvalidIdentity(f"{value.strip()!r} is not an INS matricule: {exc}") from None


def check_local_id(value: str) -> str:
    value = value.strip()
    if not _LOCAL_ID.match(value):
        raise InvalidIdentity(f"{value!r} is not a local identifier (letters, digits, . _ @ + -)")
    return value


def check_fingerprint(value: str) -> str:
    value = value.strip().lower().replace(":", "")
    if not _FINGERPRINT.match(value):
        raise InvalidIdentity(f"{value!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated principal.

    ``id`` is the kind's identifier: IdNat_PS, local id, certificate fingerprint or INS.
    ``subject`` is the certificate subject (RFC 4514) for applications. ``login`` is the
    local account used, when the identity came from one (PLAIN, EXTERNAL).
    """

    kind: IdentityKind
    id: str
    subject: str | None = None
    login: str | None = None

    @classmethod
    def professional(cls, idnat: str, *, login: str | None = None) -> Identity:
        return cls(IdentityKind.PROFESSIONAL, check_idnat(idnat), login=login)

    @classmethod
    def staff(cls, local_id: str, *, login: str | None = None) -> Identity:
        return cls(IdentityKind.STAFF, check_local_id(local_id), login=login)

    @classmethod
    def application(cls, subject: str, fingerprint: str, *, login: str | None = None) -> Identity:
        return cls(IdentityKind.APPLICATION, check_fingerprint(fingerprint), subject=subject, login=login)

    @classmethod
    def patient(cls, ins: str, *, login: str | None = None) -> Identity:
        return cls(IdentityKind.PATIENT, check_ins(ins), login=login)

    @property
    def principal(self) -> str:
        """Stable text form used as the audit actor, e.g. ``professional:810102727017``."""
        return f"{self.kind.value}:{self.id}"

    def __str__(self) -> str:
        return self.principal
