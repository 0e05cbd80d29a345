"""Identifiers of the French health system: NIR / INS matricule, IdNat_PS, RPPS, ADELI, FINESS, SIRET.

Each check raises :class:`IdentifierError` naming the rule that failed (``rule`` is a stable
dotted name for scripts and tests, the message is for people). Only public rules are
enforced: the NIR key (mod 97, Corsica ``2A``→19, ``2B``→18; python-stdnum's
``stdnum.fr.nir``) and the lengths and prefixes of TRE_G08. No check digit is enforced on
RPPS (no published rule), ADELI, FINESS or SIRET.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stdnum.exceptions import InvalidChecksum, ValidationError
from stdnum.fr import nir

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
    return int(nir.calc_check_digits(first13.upper()))


def validate_nir(value: str) -> str:
    """Check an INS matricule (NIR or NIA): 13 characters, then its 2-digit key.

    The one validator of the product (the annuaire, authentication, the DMP and addresses all
    call it). Built on python-stdnum's ``stdnum.fr.nir`` (format, Corsica ``2A``/``2B``, key),
    with the rules stdnum leaves out: the first character is the sex or the kind of number
    (1, 2; 3, 4 provisional; 7, 8 NIA) and the month is 01–12 or one of the pseudo-months
    20–99 INSEE gives when the birth month is unknown (00 and 13–19 never occur).
    Spaces and dots (as printed on a card) are ignored. Returns the canonical form.
    """
    compact = nir.compact(value)
    if len(compact) != NIR_LENGTH:
        raise IdentifierError(
            "nir.length",
            f"INS matricule must have 15 characters (13 + 2-digit key), got {len(compact)}: {value!r}",
        )
    if compact[0].isdigit() and compact[0] not in "123478":
        raise IdentifierError("nir.sex", f"INS matricule must start with 1, 2, 3, 4, 7 or 8: {value!r}")
    if compact[3:5].isdigit() and (compact[3:5] == "00" or "13" <= compact[3:5] <= "19"):
        raise IdentifierError("nir.month", f"INS matricule month {compact[3:5]} is not a month: {value!r}")
    try:
        nir.validate(compact)
    except InvalidChecksum:
        raise IdentifierError(
            "nir.key",
            f"INS matricule key {compact[13:]} is wrong for {compact[:13]}: "
            f"expected {nir.calc_check_digits(compact)}",
        ) from None
    except ValidationError:
        raise IdentifierError(
            "nir.characters", f"INS matricule must be digits (department 2A/2B allowed): {value!r}"
        ) from None
    if not compact.isascii() or compact[0] not in "123478":
        raise IdentifierError("nir.sex", f"INS matricule must start with 1, 2, 3, 4, 7 or 8: {value!r}")
    return compact


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
    """Split an IdNat_PS into its TRE_G08 prefix and number, checking the number's format.

    A value of exactly 11 digits starting with ``10`` is a bare RPPS (DPIs often send one where an IdNat_PS is
    expected): it reads as type 8, never as type ``10`` followed by 9 digits.
    """
    idnat = value.strip()
    if not idnat:
        raise IdentifierError("idnat.empty", "IdNat_PS is empty")
    if len(idnat) == RPPS_LENGTH and idnat.startswith("10") and idnat.isascii() and idnat.isdigit():
        # A bare RPPS (11 digits starting with 10): never a type-10 IdNat_PS.
        return IdNatPS(IDNAT_RPPS, idnat)
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


def structure_number(value: str) -> str:
    """The bare number of a structure identifier, with or without its IdNat_Struct prefix
    (TRE_G07: ``1`` + FINESS, ``2`` + SIREN, ``3`` + SIRET), as XDS ``authorInstitution`` writes it
    and the annuaire stores it (bare)."""
    text = value.strip().upper()
    if text[:1] == "1" and len(text) == 1 + FINESS_LENGTH:
        return text[1:]
    if (text[:1] == "2" and len(text) == 1 + SIREN_LENGTH) or (
        text[:1] == "3" and len(text) == 1 + SIRET_LENGTH
    ):
        return text[1:]
    return text


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
