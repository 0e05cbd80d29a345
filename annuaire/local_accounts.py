"""Import of the operator's own accounts (TOML or CSV): local BALs not yet in the national file.

TOML has four optional arrays of tables — ``professionals``, ``structures``, ``bals``,
``patients`` — whose keys are the arguments of :mod:`annuaire.service`. CSV has one BAL per
line with the columns ``type,address,professional,nom,prenom,profession,structure,
raison_sociale,categorie,responsible,service,description,liste_rouge`` (only ``type`` and
``address`` are required; a professional or structure named with its name is created too).

One transaction for the whole file; a bad entry is rejected (its line, or its TOML position)
and the others are imported. Re-importing the same file changes nothing.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from annuaire import service
from annuaire.extraction import ImportFileError, Reject
from annuaire.importer import ImportReport
from annuaire.nomenclatures import Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures
from mssante.db import transaction

CSV_REQUIRED = ("type", "address")
_TRUE = {"1", "true", "oui", "o", "yes", "y"}


def _count(report: ImportReport, kind: str, status: str) -> None:
    if status == "unchanged":
        if kind == "bal":
            report.unchanged += 1
        return
    name = {"bal": "", "pro": "professionals_", "struct": "structures_"}[kind] + status
    setattr(report, name, getattr(report, name) + 1)


def _entry(session: Session, report: ImportReport, line: int, where: str, work: Callable[[], None]) -> None:
    """Run one entry in a savepoint: a refused entry is rolled back alone and reported."""
    report.rows += 1
    try:
        with session.begin_nested():
            work()
    except service.AnnuaireError as exc:
        report.reject(Reject(line, f"{where}: {exc}"))
    except TypeError as exc:  # unknown or missing keys in a TOML table
        report.reject(Reject(line, f"{where}: {exc}"))


def _toml_entries(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ImportFileError(f"{path.name}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name}: not UTF-8 text") from exc
    unknown = set(data) - {"professionals", "structures", "bals", "patients"}
    if unknown:
        raise ImportFileError(f"{path.name}: unknown section(s) {', '.join(sorted(unknown))}")
    return {k: list(v) for k, v in data.items()}


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ImportFileError(f"{path.name}: missing column(s) {', '.join(missing)}")
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name}: not UTF-8 text") from exc


def _or_none(value: str | None) -> str | None:
    return value or None


def _csv_line(
    session: Session, report: ImportReport, row: dict[str, str], actor: str, noms: Nomenclatures
) -> None:
    if row.get("professional") and row.get("nom"):
        saved_p = service.add_professional(
            session,
            idnat=row["professional"],
            nom=row["nom"],
            prenom=_or_none(row.get("prenom")),
            profession_code=_or_none(row.get("profession")),
            actor=actor,
            nomenclatures=noms,
        )
        _count(report, "pro", saved_p.status)
    if row.get("structure") and row.get("raison_sociale"):
        saved_s = service.add_structure(
            session,
            identifier=row["structure"],
            raison_sociale=row["raison_sociale"],
            categorie=_or_none(row.get("categorie")),
            actor=actor,
            nomenclatures=noms,
        )
        _count(report, "struct", saved_s.status)
    saved = service.add_bal(
        session,
        address=row["address"],
        type=row["type"],
        professional=_or_none(row.get("professional")),
        structure=_or_none(row.get("structure")),
        responsible=_or_none(row.get("responsible")),
        service=_or_none(row.get("service")),
        description=_or_none(row.get("description")),
        liste_rouge=row.get("liste_rouge", "").lower() in _TRUE,
        actor=actor,
        nomenclatures=noms,
    )
    _count(report, "bal", saved.status)


def import_accounts(
    engine: Engine, path: Path, *, actor: str = "system", nomenclatures: Nomenclatures | None = None
) -> ImportReport:
    """Import a TOML (``.toml``) or CSV file of local accounts."""
    started = perf_counter()
    noms = nomenclatures or default_nomenclatures()
    report = ImportReport(file=str(path), full=False)
    if not path.is_file():
        raise ImportFileError(f"cannot open {path}: no such file")
    with transaction(engine) as session:
        if path.suffix.lower() == ".toml":
            _import_toml(session, report, _toml_entries(path), actor, noms)
        else:
            for line, row in _csv_rows(path):

                def work(row: dict[str, str] = row) -> None:
                    _csv_line(session, report, row, actor, noms)

                _entry(session, report, line, f"line {line}", work)
        report.seconds = perf_counter() - started
    return report


_TOML_SECTIONS: tuple[tuple[str, Callable[..., service.Saved[Any]], str], ...] = (
    ("professionals", service.add_professional, "pro"),
    ("structures", service.add_structure, "struct"),
    ("bals", service.add_bal, "bal"),
    ("patients", service.add_patient_bal, "bal"),
)


def _import_toml(
    session: Session,
    report: ImportReport,
    data: dict[str, list[dict[str, Any]]],
    actor: str,
    noms: Nomenclatures,
) -> None:
    for section, add, kind in _TOML_SECTIONS:
        for i, entry in enumerate(data.get(section, [])):

            def work(
                entry: dict[str, Any] = entry, add: Callable[..., service.Saved[Any]] = add, kind: str = kind
            ) -> None:
                _count(report, kind, add(session, **entry, actor=actor, nomenclatures=noms).status)

            _entry(session, report, 0, f"{section}[{i}]", work)
