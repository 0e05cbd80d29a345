"""Identifier rules (NIR/INS key with Corsica, IdNat_PS prefixes, lengths) and address normalisation."""

from __future__ import annotations

import pytest
from stdnum.fr import nir as stdnum_nir

from annuaire.addresses import AddressError, parse, patient_address
from annuaire.identifiers import (
    IdentifierError,
    idnat_from,
    nir_key,
    parse_idnat_ps,
    validate_finess,
    validate_nir,
    validate_rpps,
)


def test_nir_valid_key() -> None:
    # 97 − (2880912345678 mod 97) = 94 (FACTS.md).
    assert validate_nir("288091234567894") == "288091234567894"
    assert validate_nir("2 88 09 12 345 678 94") == "288091234567894"
    assert stdnum_nir.is_valid("288091234567894")


def test_nir_wrong_key_names_the_rule() -> None:
    # The ANS illustrative matricule: its key does not verify.
    with pytest.raises(IdentifierError) as err:
        validate_nir("288091234567823")
    assert err.value.rule == "nir.key"
    assert "expected 94" in str(err.value)


@pytest.mark.parametrize(
    ("body", "substitute"), [("185012A123456", "1850119123456"), ("185012B123456", "1850118123456")]
)
def test_nir_corsica(body: str, substitute: str) -> None:
    key = 97 - int(substitute) % 97
    assert nir_key(body) == key
    assert validate_nir(f"{body}{key:02d}") == f"{body}{key:02d}"
    assert validate_nir(f"{body.lower()}{key:02d}") == f"{body}{key:02d}"
    wrong = (key % 97) + 1
    with pytest.raises(IdentifierError) as err:
        validate_nir(f"{body}{wrong:02d}")
    assert err.value.rule == "nir.key"


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("28809123456789", "nir.length"),
        ("2880912345678945", "nir.length"),
        ("28809X234567894", "nir.characters"),
        ("588091234567894", "nir.sex"),
        ("279005121518989", "nir.month"),
        ("279155121518989", "nir.month"),
    ],
)
def test_nir_malformed(value: str, rule: str) -> None:
    with pytest.raises(IdentifierError) as err:
        validate_nir(value)
    assert err.value.rule == rule


def test_rpps_is_not_luhn_checked() -> None:
    # 10102727017 is the ANS example; 10000000002 fails Luhn and must still be accepted.
    assert validate_rpps("10102727017") == "10102727017"
    assert validate_rpps("10000000002") == "10000000002"
    with pytest.raises(IdentifierError) as err:
        validate_rpps("1010272701")
    assert err.value.rule == "rpps.length"
    with pytest.raises(IdentifierError) as err:
        validate_rpps("1010272701A")
    assert err.value.rule == "rpps.digits"


def test_idnat_prefixes() -> None:
    assert parse_idnat_ps("810102727017").type == "8"
    assert parse_idnat_ps("0751234567").number == "751234567"
    assert parse_idnat_ps("3750100042/12345").type == "3"
    assert parse_idnat_ps("10marie@demo.mssante.fr").type == "10"
    # a bare RPPS (11 digits, starting with 10) is never read as a type-10 IdNat_PS
    assert parse_idnat_ps("10102727017") == parse_idnat_ps("810102727017")
    assert parse_idnat_ps("10102727017").value == "810102727017"
    assert idnat_from("RPPS", "10102727017") == "810102727017"
    assert idnat_from("8", "10102727017") == "810102727017"
    assert idnat_from("0", "751234567") == "0751234567"
    for value, rule in [
        ("81010272701", "rpps.length"),
        ("075123456", "adeli.length"),
        ("910102727017", "idnat.prefix"),
        ("3750100042/", "idnat.local"),
        ("", "idnat.empty"),
    ]:
        with pytest.raises(IdentifierError) as err:
            parse_idnat_ps(value)
        assert err.value.rule == rule, value


def test_finess_nine_characters_with_corsica() -> None:
    assert validate_finess("2A0000123") == "2A0000123"
    assert validate_finess("750000001") == "750000001"
    with pytest.raises(IdentifierError) as err:
        validate_finess("75000000")
    assert err.value.rule == "finess.length"


def test_address_normalisation() -> None:
    a = parse(" <Marie.Martin@Medecin.MSSante.FR> ")
    assert a.address == "Marie.Martin@medecin.mssante.fr"  # local part kept, domain lower-cased
    assert a.key == "marie.martin@medecin.mssante.fr"  # compared case-insensitively
    for bad in [
        "no-at-sign",
        "@medecin.mssante.fr",
        "a b@medecin.mssante.fr",
        '"q"@x.fr',
        "a@localhost",
        "a@-x.fr",
    ]:
        with pytest.raises(AddressError):
            parse(bad)


def test_patient_address_checks_the_ins_key() -> None:
    assert patient_address("288091234567894").address == "288091234567894@patient.mssante.fr"
    with pytest.raises(IdentifierError):
        patient_address("288091234567823")


def test_one_nir_validator_for_directory_login_and_dmp() -> None:
    """The annuaire, authentication and the DMP agree on spaces, Corsica and months."""
    from mssante.auth.identity import InvalidIdentity, check_ins

    assert validate_nir(" 2 79 03 51 215 189 89 ") == check_ins("279035121518989") == "279035121518989"
    for bad in ("279005121518989", "588091234567894", "27903512151898"):
        with pytest.raises(IdentifierError):
            validate_nir(bad)
        with pytest.raises(InvalidIdentity):
            check_ins(bad)
