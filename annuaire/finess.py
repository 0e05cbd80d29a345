"""FINESS establishment categories for the structures of the annuaire.

The MSSanté extraction names a structure but not its FINESS category, and the category is what
tells a pharmacie d'officine (620) — the one ORG BAL a patient may write to first. This
importer sets ``structures.categorie`` from either:

* a plain CSV with a header naming ``finess`` (or ``nofinesset``) and ``categorie`` (or
  ``categetab``) columns, ``;`` or ``,`` separated — e.g. cut from any FINESS export; or
* the public FINESS extraction (``etalab`` flat file: ``structureet`` lines where field 2 is
  the FINESS établissement number and field 19 the category code — *medium confidence* in
  those positions, which is why each category must be 3 digits or the line is rejected).

A structure matches when its identifier is the FINESS number or ``1`` + FINESS (the IdNat_Struct
form). Streaming, one transaction, idempotent; FINESS numbers without a structure in the
annuaire are counted as ``unchanged`` (most establishments have no BAL).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import cast

from sqlalchemy import Connection, Engine, Table, bindparam, select, update

from annuaire import generation
from annuaire.extraction import ImportFileError, Reject
from annuaire.identifiers import IdentifierError, validate_finess
from annuaire.importer import ImportReport
from annuaire.models import Structure
from mssante import audit
from mssante.db import transaction

BATCH = 2000
ETALAB_KIND = "structureet"
_S = cast(Table, Structure.__table__)


@dataclass(frozen=True)
class Category:
    line: int
    finess: str
    categorie: str


def _records(path: Path, report: ImportReport) -> Iterator[Category]:
    try:
        # Only ASCII columns are used (numbers and codes): Latin-1 reads any file without
        # failing, UTF-8 and the Latin-1 etalab file alike.
        with path.open(encoding="latin-1", newline="") as f:
            first = f.readline().removeprefix("\u00ef\u00bb\u00bf")
            etalab = not ("finess" in first.lower() and "categ" in first.lower())
            delimiter = ";" if first.count(";") >= first.count(",") else ","
            if etalab:
                f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            columns = (1, 18) if etalab else _header(next(csv.reader([first], delimiter=delimiter)), path)
            for fields in reader:
                line = reader.line_num + (0 if etalab else 1)
                if not fields or (etalab and fields[0] != ETALAB_KIND):
                    continue
                report.rows += 1
                if len(fields) <= max(columns):
                    report.reject(
                        Reject(line, f"expected at least {max(columns) + 1} fields, got {len(fields)}")
                    )
                    continue
                finess, categorie = fields[columns[0]].strip(), fields[columns[1]].strip()
                if not (len(categorie) == 3 and categorie.isdigit()):
                    report.reject(Reject(line, f"FINESS category must be 3 digits, got {categorie!r}"))
                    continue
                try:
                    yield Category(line, validate_finess(finess), categorie)
                except IdentifierError as exc:
                    report.reject(Reject(line, str(exc)))
    except OSError as exc:
        raise ImportFileError(f"cannot open {path}: {exc.strerror}") from exc


def _header(names: list[str], path: Path) -> tuple[int, int]:
    folded = [n.strip().lower() for n in names]
    finess = next((i for i, n in enumerate(folded) if n in ("finess", "nofinesset")), None)
    categorie = next((i for i, n in enumerate(folded) if n in ("categorie", "categetab")), None)
    if finess is None or categorie is None:
        raise ImportFileError(f"{path.name}: the header needs a 'finess' and a 'categorie' column")
    return finess, categorie


def _apply(conn: Connection, batch: list[Category], report: ImportReport) -> None:
    wanted: dict[str, str] = {}
    for c in batch:
        wanted[c.finess] = c.categorie
        wanted["1" + c.finess] = c.categorie
    rows = conn.execute(
        select(_S.c.id, _S.c.identifier, _S.c.categorie).where(_S.c.identifier.in_(list(wanted)))
    )
    changes = [
        {"s_id": r.id, "categorie": wanted[r.identifier]} for r in rows if r.categorie != wanted[r.identifier]
    ]
    if changes:
        conn.execute(update(_S).where(_S.c.id == bindparam("s_id")), changes)
    report.structures_updated += len(changes)
    report.unchanged += len(batch) - len(changes)


def import_categories(engine: Engine, path: Path, *, actor: str = "system") -> ImportReport:
    """Set the FINESS category of the annuaire's structures from a FINESS file."""
    started = perf_counter()
    report = ImportReport(file=str(path), full=False)
    with transaction(engine) as session:
        conn = session.connection()
        batch: list[Category] = []
        for record in _records(path, report):
            batch.append(record)
            if len(batch) >= BATCH:
                _apply(conn, batch, report)
                batch = []
        if batch:
            _apply(conn, batch, report)
        if report.changed:
            generation.bump(conn)
        report.seconds = perf_counter() - started
        audit.append(
            session,
            audit.AuditEvent(
                actor=actor, action="annuaire.finess.import", object=path.name,
                detail=report.counts(),
            ),
        )  # fmt: skip
    return report
