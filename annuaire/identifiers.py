"""Identifiers of the French health system: NIR / INS matricule, IdNat_PS, RPPS, ADELI, FINESS, SIRET.

Each check raises :class:`IdentifierError` naming the rule that failed (``rule`` is a stable
dotted name for scripts and tests, the message is for people). Only public rules are
enforced: the NIR key (mod 97, Corsica ``2A``→19, ``2B``→18) and the lengths and prefixes of
TRE_G08. No check digit is enforced on RPPS (no published rule), ADELI, FINESS or SIRET.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NIR_LENGTH = 15
RPPS_LENGTH = 11
ADELI_LENGTH = 9
FINESS_LENGTH = 9
SIREN_LENGTH = 9
SIRET_LENGTH = 14

# TRE_G08 IdNat_PS type prefixes.
IDNAT_ADELI = "0"
IDNAT_FINESS = "3"
IDNAT_SIREN = "4"
IDNAT_SIRET = "5"
IDNAT_RPPS = "8"
IDNAT_MSSANTE = "10"


class IdentifierError(ValueError):
    """An identifier broke a rule; ``rule`` names it (e.g. ``nir.key``)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{message} (rule {rule})")
        self.rule = rule


def _digits(value: str, length: int, rule: str, what: str) -> str:
    if len(value) != length:
        raise IdentifierError(
            f"{rule}.length", f"{what} must have {length} digits, got {len(value)}: {value!r}"
        )
    if not value.isascii() or not value.isdigit():
        raise IdentifierError(f"{rule}.digits", f"{what} must be digits only: {value!r}")
    return value


def nir_key(first13: str) -> int:
    """The NIR key of the first 13 characters: 97 − (n mod 97), Corsica 2A→19, 2B→18."""
    body = first13.upper()
    if body[5:7] == "2A":
        body = body[:5] + "19" + body[7:]
    elif body[5:7] == "2B":
        body = body[:5] + "18" + body[7:]
    return 97 - int(body) % 97


def validate_nir(value: str) -> str:
    """Check an INS matricule (NIR or NIA): 13 characters, then its 2-digit key.

    Returns the canonical form (upper-case Corsica letters, no spaces).
    """
    nir = value.replace(" ", "").upper()
    if len(nir) != NIR_LENGTH:
        raise IdentifierError(
            "nir.length",
            f"INS matricule must have 15 characters (13 + 2-digit key), got {len(nir)}: {value!r}",
        )
    department = nir[5:7]
    body = nir[:5] + ("00" if department in ("2A", "2B") else department) + nir[7:]
    if not body.isascii() or not body.isdigit():
        raise IdentifierError(
            "nir.characters", f"INS matricule must be digits (department 2A/2B allowed): {value!r}"
        )
    if nir[0] not in "1234789":
        raise IdentifierError("nir.sex", f"INS matricule must start with 1, 2, 3, 4, 7 or 8: {value!r}")
    expected = nir_key(nir[:13])
    if int(nir[13:]) != expected:
        raise IdentifierError(
            "nir.key", f"INS matricule key {nir[13:]} is wrong for {nir[:13]}: expected {expected:02d}"
        )
    return nir


def validate_rpps(value: str) -> str:
    """RPPS: 11 digits (no check digit enforced: none is published)."""
    return _digits(value.strip(), RPPS_LENGTH, "rpps", "RPPS number")


def validate_adeli(value: str) -> str:
    return _digits(value.strip(), ADELI_LENGTH, "adeli", "ADELI number")


def validate_finess(value: str) -> str:
    """FINESS: 9 characters, digits, the department may be Corsican (2A/2B)."""
    finess = value.strip().upper()
    if len(finess) != FINESS_LENGTH:
        raise IdentifierError(
            "finess.length", f"FINESS number must have 9 characters, got {len(finess)}: {value!r}"
        )
    body = ("00" + finess[2:]) if finess[:2] in ("2A", "2B") else finess
    if not body.isascii() or not body.isdigit():
        raise IdentifierError("finess.digits", f"FINESS number must be digits (2A/2B allowed): {value!r}")
    return finess


def validate_siren(value: str) -> str:
    return _digits(value.strip(), SIREN_LENGTH, "siren", "SIREN number")


def validate_siret(value: str) -> str:
    return _digits(value.strip(), SIRET_LENGTH, "siret", "SIRET number")


@dataclass(frozen=True)
class IdNatPS:
    """A parsed IdNat_PS: the TRE_G08 type prefix and the number behind it."""

    type: str
    number: str

    @property
    def value(self) -> str:
        return self.type + self.number


def _structure_scoped(rest: str, validator: Callable[[str], str], what: str) -> str:
    # Types 3/4/5: the structure number, then "/" and the structure's internal id of the person.
    structure, sep, local = rest.partition("/")
    validator(structure)
    if sep and not local:
        raise IdentifierError("idnat.local", f"IdNat_PS of type {what} has an empty internal id after '/'")
    return rest


def parse_idnat_ps(value: str) -> IdNatPS:
    """Split an IdNat_PS into its TRE_G08 prefix and number, checking the number's format."""
    idnat = value.strip()
    if not idnat:
        raise IdentifierError("idnat.empty", "IdNat_PS is empty")
    if idnat.startswith(IDNAT_MSSANTE):
        if len(idnat) == len(IDNAT_MSSANTE):
            raise IdentifierError("idnat.mssante", "IdNat_PS of type 10 carries no identifier")
        return IdNatPS(IDNAT_MSSANTE, idnat[2:])
    prefix, rest = idnat[0], idnat[1:]
    if prefix == IDNAT_RPPS:
        return IdNatPS(prefix, validate_rpps(rest))
    if prefix == IDNAT_ADELI:
        return IdNatPS(prefix, validate_adeli(rest))
    if prefix == IDNAT_FINESS:
        return IdNatPS(prefix, _structure_scoped(rest, validate_finess, "3 (FINESS)"))
    if prefix == IDNAT_SIREN:
        return IdNatPS(prefix, _structure_scoped(rest, validate_siren, "4 (SIREN)"))
    if prefix == IDNAT_SIRET:
        return IdNatPS(prefix, _structure_scoped(rest, validate_siret, "5 (SIRET)"))
    raise IdentifierError(
        "idnat.prefix", f"IdNat_PS {value!r} has unknown type prefix {prefix!r} (TRE_G08: 0, 3, 4, 5, 8, 10)"
    )


def idnat_from(id_type: str, identifier: str) -> str:
    """Build the IdNat_PS of a professional from the extraction's type and identifier columns.

    The type may be given as its TRE_G08 code (``8``, ``0``) or as a name (``RPPS``, ``ADELI``).
    """
    kind = id_type.strip().upper()
    number = identifier.strip()
    if kind in ("8", "RPPS"):
        return IDNAT_RPPS + validate_rpps(number)
    if kind in ("0", "ADELI"):
        return IDNAT_ADELI + validate_adeli(number)
    if kind in ("3", "4", "5", "10"):
        return parse_idnat_ps(kind + number).value
    raise IdentifierError("idnat.prefix", f"unknown professional identifier type {id_type!r}")
