"""Reference data of the DMP as data: the 9 spaces, the JDV_J07 type codes and the
authorisation matrix (``config/dmp/``), validated when loaded.

A matrix that names an unknown profession or type code, misses one, or has a cell other than
``0``, ``1`` or ``?`` is refused at load: a typo must never silently open (or close) a record.
``?`` marks a cell nobody published: it denies (the table is closed for every cell not known).
The matrix carries its version (first line ``# version: …``), which every read decision records.

``habilitation_officielle.csv``, when present beside it, is the official matrix as an operator
received it and is used instead (:func:`load_official_matrix`); see ``config/dmp/README.md``.
"""

from __future__ import annotations

import csv
import io
import os
import re
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
    unknown: frozenset[tuple[str, str]] = frozenset()  # "?" cells (denied)

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
    strangers = sorted(set(columns) - professions)
    if strangers:
        raise CodesError(f"{path.name}: unknown profession code(s) {', '.join(strangers)} (TRE_G15)")
    if len(set(columns)) != len(columns):
        raise CodesError(f"{path.name}: a profession column is repeated")
    absent = sorted(professions - set(columns))
    if absent:
        raise CodesError(f"{path.name}: no column for profession code(s) {', '.join(absent)}")
    allowed: set[tuple[str, str]] = set()
    unknown: set[tuple[str, str]] = set()
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
            if cell.strip() not in ("0", "1", "?"):
                raise CodesError(
                    f"{path.name}: row {number} ({code}), profession {profession}: "
                    f"cell {cell!r} is not 0, 1 or ? (not known: denied)"
                )
            if cell.strip() == "1":
                allowed.add((profession, code))
            elif cell.strip() == "?":
                unknown.add((profession, code))
    missing = sorted(type_codes - seen)
    if missing:
        raise CodesError(f"{path.name}: no row for type code(s) {', '.join(missing)}")
    return Matrix(version, frozenset(allowed), frozenset(columns), frozenset(seen), frozenset(unknown))


_YES = {"x", "oui", "o", "1", "yes", "y", "✓", "autorisé", "autorise"}
_NO = {"", "non", "n", "0", "no", "-", "✗", "interdit"}
_PROFESSION_HEADER = re.compile(r"(?:^|\D)(\d{2})(?:\D|$)")


def load_official_matrix(path: Path, professions: set[str], type_codes: set[str]) -> Matrix:
    """Read the official matrix in its spreadsheet layout, exported as CSV.

    The layout assumed (the official file was not found publicly; FACTS.md): ``;`` or ``,``
    separated (a French spreadsheet exports ``;``), optional preamble lines, one of them may say
    ``version <x.y.z>``; a header row with a column named ``typeCode`` (or ``Code``, ``Code type``)
    and one column per profession whose title carries its 2-digit TRE_G15 code (``Médecin (10)``,
    ``10 - Médecin``); other columns (libellés, classCode) are ignored. A cell ``X``/``Oui``/``1``
    allows, an empty cell or ``Non``/``0`` denies, anything else is an error. Professions and
    type codes the official file does not list are denied (and recorded as not known).
    """
    text = "\n".join(_read(path))
    dialect = ";" if text.count(";") > text.count(",") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=dialect))
    version = "official"
    header_at = None
    for n, row in enumerate(rows):
        cells = [c.strip() for c in row]
        joined = " ".join(cells).lower()
        if (found := re.search(r"version\s*:?\s*([0-9][0-9A-Za-z.+-]*)", joined)) and header_at is None:
            version = f"{found.group(1)} (official)"
        if any(c.lower() in ("typecode", "code", "code type", "code type de document") for c in cells):
            header_at = n
            break
    if header_at is None:
        raise CodesError(f"{path.name}: no header row with a typeCode column")
    header = [c.strip() for c in rows[header_at]]
    code_col = next(i for i, c in enumerate(header) if c.lower() in ("typecode", "code", "code type",
                                                                        "code type de document"))  # fmt: skip
    columns: dict[int, str] = {}
    for i, title in enumerate(header):
        found = _PROFESSION_HEADER.search(title)
        if i != code_col and found and found.group(1) in professions:
            columns[i] = found.group(1)
    if not columns:
        raise CodesError(f"{path.name}: no profession column (a title carrying a TRE_G15 code)")
    allowed: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for number, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        code = row[code_col].strip() if len(row) > code_col else ""
        if code not in type_codes:
            continue  # a blank line, a section title, or a type code this product does not know
        seen.add(code)
        for i, profession in columns.items():
            cell = (row[i] if i < len(row) else "").strip().lower()
            if cell in _YES:
                allowed.add((profession, code))
            elif cell not in _NO:
                raise CodesError(
                    f"{path.name}: row {number} ({code}), profession {profession}: cell {cell!r}"
                )
    named = set(columns.values())
    unknown = {(p, t) for p in professions for t in type_codes if p not in named or t not in seen}
    return Matrix(
        version, frozenset(allowed), frozenset(professions), frozenset(type_codes), frozenset(unknown)
    )


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
    official = base / "habilitation_officielle.csv"
    if official.exists():
        matrix = load_official_matrix(official, set(noms.professions), set(type_codes))
    else:
        matrix = load_matrix(base / "habilitation.csv", set(noms.professions), set(type_codes))
    return DMPCodes(spaces, type_codes, matrix)


@cache
def default() -> DMPCodes:
    """The tables of the default directory, read once per process."""
    return load()
