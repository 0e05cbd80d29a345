"""Reference tables (TRE_G15 professions, TRE_R257 BAL types, FINESS categories) read from CSV.

They live under ``config/nomenclatures/`` so that a code added by the ANS is a data change,
not a code change. ``MSSANTE_NOMENCLATURES_DIR`` points elsewhere when needed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "config" / "nomenclatures"

# The three kinds of holder a BAL type may have (column ``titulaire`` of the TRE_R257 file).
HOLDER_PROFESSIONAL = "professionnel"
HOLDER_STRUCTURE = "structure"
HOLDER_PATIENT = "patient"

KIND_PHARMACY = "pharmacie_officine"


class NomenclatureError(Exception):
    """A nomenclature file is missing or malformed."""


@dataclass(frozen=True)
class Profession:
    code: str
    libelle: str
    sante: bool


@dataclass(frozen=True)
class BalType:
    code: str
    libelle: str
    titulaire: str


@dataclass(frozen=True)
class FinessCategory:
    code: str
    libelle: str
    kind: str


@dataclass(frozen=True)
class Nomenclatures:
    professions: dict[str, Profession]
    bal_types: dict[str, BalType]
    finess_categories: dict[str, FinessCategory]

    def structure_kind(self, categorie: str | None) -> str | None:
        """The product's kind of a structure from its FINESS category (None when unknown)."""
        if not categorie:
            return None
        found = self.finess_categories.get(categorie)
        return found.kind if found else None

    def profession_label(self, code: str | None) -> str | None:
        found = self.professions.get(code or "")
        return found.libelle if found else None


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise NomenclatureError(f"{path}: missing column(s) {', '.join(missing)}")
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except OSError as exc:
        raise NomenclatureError(f"cannot read nomenclature {path}: {exc.strerror}") from exc


def nomenclature_dir() -> Path:
    configured = os.environ.get("MSSANTE_NOMENCLATURES_DIR")
    return Path(configured) if configured else DEFAULT_DIR


def load(directory: Path | None = None) -> Nomenclatures:
    """Read the three tables from ``directory`` (default: ``config/nomenclatures``)."""
    base = directory or nomenclature_dir()
    professions = {
        r["code"]: Profession(r["code"], r["libelle"], r["sante"].lower() == "true")
        for r in _rows(base / "TRE_G15-ProfessionSante.csv", ("code", "libelle", "sante"))
    }
    bal_types = {
        r["code"]: BalType(r["code"], r["libelle"], r["titulaire"])
        for r in _rows(base / "TRE_R257-TypeBAL.csv", ("code", "libelle", "titulaire"))
    }
    holders = {HOLDER_PROFESSIONAL, HOLDER_STRUCTURE, HOLDER_PATIENT}
    for bal_type in bal_types.values():
        if bal_type.titulaire not in holders:
            raise NomenclatureError(
                f"TRE_R257-TypeBAL.csv: type {bal_type.code} has unknown titulaire {bal_type.titulaire!r}"
            )
    categories = {
        r["code"]: FinessCategory(r["code"], r["libelle"], r["kind"])
        for r in _rows(base / "finess_categories.csv", ("code", "libelle", "kind"))
    }
    return Nomenclatures(professions, bal_types, categories)


@cache
def default() -> Nomenclatures:
    """The tables of the default directory, read once per process."""
    return load()


def patient_bal_type(nomenclatures: Nomenclatures) -> str:
    """The code of the BAL type held by patients (``PAT`` in the shipped table)."""
    for code, bal_type in nomenclatures.bal_types.items():
        if bal_type.titulaire == HOLDER_PATIENT:
            return code
    raise NomenclatureError("TRE_R257-TypeBAL.csv declares no BAL type held by a patient")
