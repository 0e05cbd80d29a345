"""The DMP access rules as a table: profession class × visibility flag × consent situation,
plus feeding, managing, history, and the authorisation matrix loader."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dmp import codes
from dmp.codes import CodesError
from dmp.rules import (
    INVISIBLE_PATIENT,
    INVISIBLE_REP_LEGAUX,
    MASQUE_PS,
    Actor,
    Consent,
    DocumentFacts,
    PatientFacts,
    Role,
    may_feed,
    may_manage,
    may_manage_consent,
    may_read,
    may_read_history,
    outside_care_team,
)

MATRIX = codes.default().matrix
INS = "279035121518989"
REP_INS = "180017512345660"
AUTHOR = "810000000010"

ACTORS = {
    "medecin": Actor(Role.PROFESSIONAL, "810000000001", "10", True),
    "pharmacien": Actor(Role.PROFESSIONAL, "810000000021", "21", True),
    "infirmier": Actor(Role.PROFESSIONAL, "810000000060", "60", True),
    "audioprothesiste": Actor(Role.PROFESSIONAL, "810000000026", "26", True),
    "secretaire": Actor(Role.PROFESSIONAL, "secretariat.cardio", "54", False),
    "auteur": Actor(Role.PROFESSIONAL, AUTHOR, "10", True),
    "patient": Actor(Role.PATIENT, INS),
    "representant": Actor(Role.LEGAL_REPRESENTATIVE, REP_INS),
}
FLAGS = ("", MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX)

# Expected answers for a vaccination history (11369-6), one letter per flag in FLAGS order:
# no flag, MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX.  Y = may read, N = refused.
WITH_CONSENT = {
    "medecin": "YNYY",
    "pharmacien": "YNYY",
    "infirmier": "YNYY",
    "audioprothesiste": "NNNN",  # the matrix does not allow 26 for 11369-6
    "secretaire": "NNNN",  # 54 reads nothing: the matrix says so
    "auteur": "YYYY",  # MASQUE_PS never hides a document from its author
    "patient": "YYNY",
    "representant": "YYNN",  # neither INVISIBLE_REP_LEGAUX nor what hides from the patient
}
NO_ACCESS = {name: "NNNN" for name in ACTORS} | {"patient": "YYNY", "representant": "YYNN"}
TABLE = {
    "care_team": WITH_CONSENT,
    "recorded_consent": WITH_CONSENT,
    "break_glass": WITH_CONSENT,
    "no_consent": NO_ACCESS,
    "opposition": NO_ACCESS,  # even the care team and break-glass are refused
    "break_glass_not_authorised": NO_ACCESS,
}


def _patient(situation: str, actor: Actor) -> tuple[PatientFacts, bool]:
    base = PatientFacts(INS, "QUAL", legal_representatives=frozenset({REP_INS}))
    me = frozenset({actor.id})
    return {
        "care_team": (replace(base, care_team=me), False),
        "recorded_consent": (replace(base, consents=me), False),
        "break_glass": (base, True),
        "no_consent": (base, False),
        "opposition": (replace(base, opposition=True, care_team=me, consents=me), True),
        "break_glass_not_authorised": (replace(base, emergency_access=False), True),
    }[situation]


CASES = [
    pytest.param(situation, name, flag, expected[name][i] == "Y", id=f"{situation}-{name}-{flag or 'none'}")
    for situation, expected in TABLE.items()
    for name in ACTORS
    for i, flag in enumerate(FLAGS)
]


@pytest.mark.parametrize(("situation", "name", "flag", "allowed"), CASES)
def test_read_table(situation: str, name: str, flag: str, allowed: bool) -> None:
    actor = ACTORS[name]
    patient, break_glass = _patient(situation, actor)
    document = DocumentFacts("11369-6", AUTHOR, frozenset({flag} - {""}))
    decision = may_read(actor, patient, document, MATRIX, break_glass=break_glass)
    assert decision.allowed is allowed, decision.reason
    if allowed and actor.role is Role.PROFESSIONAL:
        expected = {"care_team": Consent.CARE_TEAM, "recorded_consent": Consent.RECORDED}
        assert decision.consent is expected.get(situation, Consent.BREAK_GLASS)


@pytest.mark.parametrize(
    ("type_code", "expected"),
    [
        # The seed's excerpt of matrix v3.0.2, as FACTS.md reads it: 10, 21, 60, 69, 26, 54.
        ("SYNTH", "YYNNNN"),
        ("11369-6", "YYYYNN"),
        ("34112-3", "YNYYNN"),
        ("DOCPAT01", "YNYYNN"),  # directives anticipées
    ],
)
def test_matrix_follows_the_seed_excerpt(type_code: str, expected: str) -> None:
    got = "".join("Y" if MATRIX.may_read(p, type_code) else "N" for p in ("10", "21", "60", "69", "26", "54"))
    assert got == expected


def test_replaced_or_deleted_versions_are_read_by_nobody() -> None:
    patient = PatientFacts(INS, "QUAL", care_team=frozenset({AUTHOR}))
    for status in ("replaced", "deleted"):
        document = DocumentFacts("11369-6", AUTHOR, status=status)
        for actor in (ACTORS["auteur"], ACTORS["patient"]):
            assert not may_read(actor, patient, document, MATRIX)


def test_another_patient_reads_nothing() -> None:
    other = Actor(Role.PATIENT, REP_INS)
    assert not may_read(other, PatientFacts(INS, "QUAL"), DocumentFacts("11369-6", AUTHOR), MATRIX)
    assert not may_read(
        Actor(Role.LEGAL_REPRESENTATIVE, "180017512345660"), PatientFacts(INS, "QUAL"),
        DocumentFacts("11369-6", AUTHOR), MATRIX,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("actor", "status", "allowed"),
    [
        (ACTORS["medecin"], "QUAL", True),
        (ACTORS["audioprothesiste"], "QUAL", True),  # every registered professional feeds
        (ACTORS["medecin"], "VALI", False),  # no feed without a qualified INS
        (ACTORS["medecin"], "PROV", False),
        (replace(ACTORS["medecin"], registered=False), "QUAL", False),
        (ACTORS["secretaire"], "QUAL", False),
        (ACTORS["patient"], "QUAL", False),
    ],
)
def test_feed(actor: Actor, status: str, allowed: bool) -> None:
    assert may_feed(actor, PatientFacts(INS, status)).allowed is allowed


@pytest.mark.parametrize(
    ("name", "status", "allowed"),
    [
        ("auteur", "current", True),
        ("auteur", "deleted", False),
        ("auteur", "replaced", False),
        ("medecin", "current", False),
        ("patient", "current", False),
    ],
)
def test_only_the_author_manages(name: str, status: str, allowed: bool) -> None:
    assert may_manage(ACTORS[name], DocumentFacts("11369-6", AUTHOR, status=status)).allowed is allowed


def test_history_is_the_patients() -> None:
    patient = PatientFacts(
        INS, "QUAL", care_team=frozenset({AUTHOR}), legal_representatives=frozenset({REP_INS})
    )
    assert may_read_history(ACTORS["patient"], patient)
    assert may_read_history(ACTORS["representant"], patient)
    assert not may_read_history(ACTORS["auteur"], patient)
    assert outside_care_team(ACTORS["medecin"], patient) and not outside_care_team(ACTORS["auteur"], patient)


# -- matrix loader --------------------------------------------------------------------------
@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    target = tmp_path / "dmp"
    shutil.copytree(codes.DEFAULT_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_loaded_tables_are_consistent() -> None:
    loaded = codes.default()
    assert len(loaded.spaces) == 9
    assert loaded.matrix.version == "3.0.2+mssante.2"
    assert set(loaded.type_codes) == loaded.matrix.type_codes
    assert loaded.space_of("18748-4") == "IMAGERIE"


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("habilitation.csv", "type_code,10,", "type_code,13,", "unknown profession code"),
        ("habilitation.csv", "\n11488-4,", "\n99999-9,", "unknown type code"),
        ("habilitation.csv", "# version: 3.0.2+mssante.2", "# no version", "version"),
        ("habilitation.csv", "\n11488-4,1,", "\n11488-4,yes,", "is not 0, 1 or"),
        ("habilitation.csv", ",96,98,54", ",96,98,96", "repeated"),
        (
            "type_codes.csv",
            "CR de consultation,COMPTES_RENDUS",
            "CR de consultation,NOWHERE",
            "unknown space",
        ),
    ],
)
def test_matrix_errors(config_copy: Path, file: str, old: str, new: str, message: str) -> None:
    _edit(config_copy / file, old, new)
    with pytest.raises(CodesError, match=message):
        codes.load(config_copy)


def test_a_missing_row_is_an_error(config_copy: Path) -> None:
    path = config_copy / "habilitation.csv"
    lines = [
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("PRESC-KINE,")
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CodesError, match="no row for type code"):
        codes.load(config_copy)


def test_consent_settings_are_the_patients() -> None:
    patient = PatientFacts(
        INS, "QUAL", care_team=frozenset({AUTHOR}), legal_representatives=frozenset({REP_INS})
    )
    assert may_manage_consent(ACTORS["patient"], patient) and may_manage_consent(
        ACTORS["representant"], patient
    )
    assert not may_manage_consent(ACTORS["auteur"], patient)
    assert not may_manage_consent(Actor(Role.PATIENT, "185057800608491"), patient)


def test_the_matrix_is_closed_for_every_cell_not_known() -> None:
    """Outside the seed's excerpt and the documented assumptions (A1: médecins read all; A2: 54
    reads nothing), every cell is "?" — and denies."""
    assert MATRIX.may_read("10", "11488-4") and not MATRIX.may_read("54", "11488-4")
    assert ("60", "11488-4") in MATRIX.unknown and not MATRIX.may_read("60", "11488-4")
    assert ("21", "SYNTH") not in MATRIX.unknown  # a cell of the excerpt


def test_official_matrix_layout_is_loaded_when_dropped_in(config_copy: Path) -> None:
    (config_copy / "habilitation_officielle.csv").write_text(
        "Matrice d'habilitation des professionnels de santé;;;\n"
        "Version : 3.0.2;;;\n"
        "Libellé;typeCode;Médecin (10);Pharmacien (21);Infirmier (60)\n"
        "CR de consultation;11488-4;X;;X\n"
        "Historique des vaccinations;11369-6;X;X;X\n"
        "Un type inconnu de ce produit;99999-9;X;X;X\n",
        encoding="utf-8",
    )
    matrix = codes.load(config_copy).matrix
    assert matrix.version == "3.0.2 (official)"
    assert matrix.may_read("60", "11488-4") and not matrix.may_read("21", "11488-4")
    assert matrix.may_read("21", "11369-6")
    assert not matrix.may_read("10", "34112-3") and ("10", "34112-3") in matrix.unknown  # not listed: denied
    assert not matrix.may_read("26", "11369-6")  # no column: denied
