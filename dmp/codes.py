"""Reference data of the DMP as data: the 9 spaces, the JDV_J07 type codes and the
authorisation matrix (``config/dmp/``), validated when loaded.

A matrix that names an unknown profession or type code, misses one, or has a cell other than
0/1 is refused at load: a typo must never silently open (or close) a record. The matrix
carries its version (first line ``# version: …``), which every read decision records.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from annuaire.nomenclatures import Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "config" / "dmp"
OID_TYPE_CODES = "1.2.250.1.213.1.1.5.471"  # JDV_J07-XdsTypeCode-CISIS
VERSION_PREFIX = "# version:"


class CodesError(Exception):
    """A DMP reference file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class TypeCode:
    code: str
    libelle: str
    space: str


@dataclass(frozen=True)
class Matrix:
    """Profession code × type code → may read; ``version`` names the table in force."""

    version: str
    allowed: frozenset[tuple[str, str]]
    professions: frozenset[str]
    type_codes: frozenset[str]

    def may_read(self, profession: str | None, type_code: str) -> bool:
        return (profession or "", type_code) in self.allowed


@dataclass(frozen=True)
class DMPCodes:
    spaces: dict[str, str]
    type_codes: dict[str, TypeCode]
    matrix: Matrix

    def space_of(self, type_code: str) -> str:
        return self.type_codes[type_code].space


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CodesError(f"cannot read {path}: {exc.strerror}") from exc


def _table(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(line for line in _read(path) if not line.startswith("#"))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise CodesError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def load_matrix(path: Path, professions: set[str], type_codes: set[str]) -> Matrix:
    """Read and validate ``habilitation.csv`` against the known professions and type codes."""
    lines = _read(path)
    if not lines or not lines[0].startswith(VERSION_PREFIX) or not lines[0][len(VERSION_PREFIX) :].strip():
        raise CodesError(f"{path.name}: the first line must be '{VERSION_PREFIX} <version>'")
    version = lines[0][len(VERSION_PREFIX) :].strip()
    rows = list(csv.reader(line for line in lines[1:] if line.strip() and not line.startswith("#")))
    if not rows or rows[0][:1] != ["type_code"]:
        raise CodesError(f"{path.name}: the header must start with 'type_code'")
    columns = [c.strip() for c in rows[0][1:]]
    unknown = sorted(set(columns) - professions)
    if unknown:
        raise CodesError(f"{path.name}: unknown profession code(s) {', '.join(unknown)} (TRE_G15)")
    if len(set(columns)) != len(columns):
        raise CodesError(f"{path.name}: a profession column is repeated")
    absent = sorted(professions - set(columns))
    if absent:
        raise CodesError(f"{path.name}: no column for profession code(s) {', '.join(absent)}")
    allowed: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        code = row[0].strip() if row else ""
        if code not in type_codes:
            raise CodesError(f"{path.name}: row {number}: unknown type code {code!r} (JDV_J07)")
        if code in seen:
            raise CodesError(f"{path.name}: row {number}: type code {code} appears twice")
        seen.add(code)
        if len(row) != len(columns) + 1:
            raise CodesError(
                f"{path.name}: row {number} ({code}) has {len(row) - 1} cells, expected {len(columns)}"
            )
        for profession, cell in zip(columns, row[1:], strict=True):
            if cell.strip() not in ("0", "1"):
                raise CodesError(
                    f"{path.name}: row {number} ({code}), profession {profession}: "
                    f"cell {cell!r} is not 0 or 1"
                )
            if cell.strip() == "1":
                allowed.add((profession, code))
    missing = sorted(type_codes - seen)
    if missing:
        raise CodesError(f"{path.name}: no row for type code(s) {', '.join(missing)}")
    return Matrix(version, frozenset(allowed), frozenset(columns), frozenset(seen))


def load(directory: Path | None = None, nomenclatures: Nomenclatures | None = None) -> DMPCodes:
    """Read the three files of ``directory`` (default ``config/dmp``, or ``$MSSANTE_DMP_CONFIG_DIR``)."""
    base = directory or Path(os.environ.get("MSSANTE_DMP_CONFIG_DIR") or DEFAULT_DIR)
    noms = nomenclatures or default_nomenclatures()
    spaces = {r["code"]: r["libelle"] for r in _table(base / "spaces.csv", ("code", "libelle"))}
    if len(spaces) != 9:
        raise CodesError(f"spaces.csv: the DMP has 9 spaces, the file declares {len(spaces)}")
    type_codes: dict[str, TypeCode] = {}
    for r in _table(base / "type_codes.csv", ("code", "libelle", "space")):
        if r["space"] not in spaces:
            raise CodesError(f"type_codes.csv: {r['code']} maps to unknown space {r['space']!r}")
        if r["code"] in type_codes:
            raise CodesError(f"type_codes.csv: type code {r['code']} appears twice")
        type_codes[r["code"]] = TypeCode(r["code"], r["libelle"], r["space"])
    matrix = load_matrix(base / "habilitation.csv", set(noms.professions), set(type_codes))
    return DMPCodes(spaces, type_codes, matrix)


@cache
def default() -> DMPCodes:
    """The tables of the default directory, read once per process."""
    return load()
