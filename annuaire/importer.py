"""Import of the ANS extraction into the annuaire: streaming, transactional, idempotent.

The file is read in batches of a few thousand rows; each batch is compared with the database
by bulk ``SELECT … IN`` and written with bulk inserts and updates. Memory stays flat whatever
the file size: the set of BALs seen so far (needed for duplicates and for ``--full``) lives in
a temporary table, not in Python. Everything happens in one transaction: a fault of the file
as a whole (see :class:`~annuaire.extraction.ImportFileError`) rolls everything back.

A second run of the same file changes nothing (rows equal to the database are not written).
``full=True`` means "this file is the whole national directory": ANS BALs absent from it are
deactivated — never deleted — and local BALs (source ``local``) are left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    and_,
    any_,
    bindparam,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from annuaire import generation
from annuaire.extraction import ExtractionRow, Progress, Reject, read
from annuaire.models import SOURCE_ANS, Bal, Professional, Structure
from annuaire.nomenclatures import Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures
from mssante import audit
from mssante.db import transaction

BATCH = 2000
MAX_REPORTED_REJECTS = 1000

_seen_md = MetaData()
# Which BAL ids this run has seen, and on which line: flat memory, any file size.
_seen = Table(
    "annuaire_import_seen",
    _seen_md,
    Column("bal_id", Integer, primary_key=True),
    Column("line", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)

_P = cast(Table, Professional.__table__)
_S = cast(Table, Structure.__table__)
_B = cast(Table, Bal.__table__)

PROFESSIONAL_FIELDS = (
    "id_type",
    "identifier",
    "civilite",
    "nom",
    "prenom",
    "categorie_code",
    "profession_code",
    "profession_label",
    "savoir_faire_code",
    "savoir_faire_label",
)
# ``categorie`` (FINESS category) is not in the extraction: never overwritten by it.
STRUCTURE_FIELDS = (
    "id_type",
    "raison_sociale",
    "enseigne",
    "complement_localisation",
    "complement_distribution",
    "numero_voie",
    "complement_numero_voie",
    "type_voie",
    "libelle_voie",
    "lieu_dit",
    "ligne_acheminement",
    "code_postal",
    "departement",
    "pays",
)
BAL_FIELDS = (
    "address",
    "domain",
    "type",
    "professional_id",
    "structure_id",
    "service",
    "dematerialisation",
    "active",
    "source",
)


@dataclass
class ImportReport:
    """What an import did; ``rejects`` lists the first rejected lines with their reason."""

    file: str
    full: bool
    rows: int = 0
    added: int = 0
    updated: int = 0
    reactivated: int = 0
    unchanged: int = 0
    deactivated: int = 0
    rejected: int = 0
    professionals_added: int = 0
    professionals_updated: int = 0
    structures_added: int = 0
    structures_updated: int = 0
    seconds: float = 0.0
    rejects: list[Reject] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.added
            or self.updated
            or self.deactivated
            or self.professionals_added
            or self.professionals_updated
            or self.structures_added
            or self.structures_updated
        )

    def reject(self, item: Reject) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_REPORTED_REJECTS:
            self.rejects.append(item)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejects"] = [{"line": r.line, "reason": r.reason} for r in self.rejects]
        data["seconds"] = round(self.seconds, 3)
        return data

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.as_dict().items() if isinstance(v, int) and not isinstance(v, bool)}


def _changed(current: Any, wanted: dict[str, Any], fields: tuple[str, ...]) -> bool:
    return any(getattr(current, f) != wanted[f] for f in fields)


class _Batcher:
    """Applies one batch of rows to the database (inside the import's transaction)."""

    def __init__(self, conn: Connection, report: ImportReport, now: datetime) -> None:
        self.conn = conn
        self.report = report
        self.now = now

    def _upsert(
        self,
        table: Table,
        key: str,
        wanted: dict[str, dict[str, Any]],
        fields: tuple[str, ...],
        extra_insert: dict[str, Any],
    ) -> tuple[dict[str, int], int, int]:
        """Insert missing rows, update differing ones; return key → id and the counts."""
        if not wanted:
            return {}, 0, 0
        key_col = table.c[key]
        existing = {
            r._mapping[key]: r
            for r in self.conn.execute(
                select(table.c.id, key_col, *(table.c[f] for f in fields)).where(
                    self._among(key_col, list(wanted))
                )
            )
        }
        ids = {k: r.id for k, r in existing.items()}
        to_update = [
            {"b_id": r.id, **{f: wanted[k][f] for f in fields}, "updated_at": self.now}
            for k, r in existing.items()
            if _changed(r, wanted[k], fields)
        ]
        if to_update:
            self.conn.execute(
                update(table).where(table.c.id == bindparam("b_id")),
                to_update,
            )
        missing = [
            {key: k, **{f: wanted[k][f] for f in fields}, **extra_insert, "updated_at": self.now}
            for k in wanted
            if k not in existing
        ]
        if missing:
            ids.update(self._insert(table, key, missing))
        return ids, len(missing), len(to_update)

    def _among(self, column: ColumnElement[Any], values: list[Any]) -> ColumnElement[bool]:
        """``column IN values``; on PostgreSQL ``= ANY(array)``, one short statement that the
        driver parses once instead of a new 2000-placeholder text per batch."""
        if self.conn.dialect.name == "postgresql":
            return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
        return column.in_(values)

    def _bulk(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert many rows: COPY on PostgreSQL (one statement per batch instead of one per row,
        inside the same transaction), executemany elsewhere."""
        if self.conn.dialect.name != "postgresql":
            self.conn.execute(insert(table), rows)
            return
        columns = list(rows[0])
        driver = self.conn.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row([row[c] for c in columns])

    def _insert(self, table: Table, key: str, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Bulk insert, then read the new ids back by key (not INSERT … RETURNING: psycopg
        re-parses every multi-row RETURNING statement, three times slower)."""
        self._bulk(table, rows)
        key_col = table.c[key]
        return {
            k: i
            for i, k in self.conn.execute(
                select(table.c.id, key_col).where(self._among(key_col, [r[key] for r in rows]))
            )
        }

    def apply(self, rows: list[ExtractionRow]) -> None:
        report = self.report
        # Duplicates inside the batch: the first line wins, later ones are rejected.
        by_key: dict[str, ExtractionRow] = {}
        for row in rows:
            first = by_key.get(row.address_key)
            if first is not None:
                report.reject(
                    Reject(row.line, f"duplicate address {row.address} (first on line {first.line})")
                )
            else:
                by_key[row.address_key] = row

        professionals = {
            r.professional.idnat: {f: getattr(r.professional, f) for f in PROFESSIONAL_FIELDS}
            for r in by_key.values()
            if r.professional is not None
        }
        structures = {
            r.structure.identifier: {f: getattr(r.structure, f) for f in STRUCTURE_FIELDS}
            for r in by_key.values()
            if r.structure is not None
        }
        prof_ids, added, updated = self._upsert(
            _P, "idnat", professionals, PROFESSIONAL_FIELDS, {"source": SOURCE_ANS}
        )
        report.professionals_added += added
        report.professionals_updated += updated
        struct_ids, added, updated = self._upsert(
            _S, "identifier", structures, STRUCTURE_FIELDS, {"source": SOURCE_ANS}
        )
        report.structures_added += added
        report.structures_updated += updated

        existing = {
            r.address_key: r
            for r in self.conn.execute(
                select(_B.c.id, _B.c.address_key, *(_B.c[f] for f in BAL_FIELDS)).where(
                    self._among(_B.c.address_key, list(by_key))
                )
            )
        }
        if existing:
            # Duplicates across batches: the BAL was already seen earlier in this file.
            seen: dict[int, int] = {
                bal_id: line
                for bal_id, line in self.conn.execute(
                    select(_seen.c.bal_id, _seen.c.line).where(
                        self._among(_seen.c.bal_id, [r.id for r in existing.values()])
                    )
                )
            }
            for k, r in list(existing.items()):
                if r.id in seen:
                    row = by_key.pop(k)
                    del existing[k]
                    report.reject(
                        Reject(row.line, f"duplicate address {row.address} (first on line {seen[r.id]})")
                    )

        to_insert: list[dict[str, Any]] = []
        to_update: list[dict[str, Any]] = []
        seen_rows: list[dict[str, Any]] = []
        for k, row in by_key.items():
            wanted = {
                "address": row.address,
                "domain": row.domain,
                "type": row.type,
                "professional_id": prof_ids[row.professional.idnat] if row.professional else None,
                "structure_id": struct_ids[row.structure.identifier] if row.structure else None,
                "service": row.service,
                "dematerialisation": row.dematerialisation,
                "active": True,
                "source": SOURCE_ANS,
            }
            current = existing.get(k)
            if current is None:
                to_insert.append(
                    {
                        "address_key": k,
                        **wanted,
                        "liste_rouge": False,
                        "created_at": self.now,
                        "updated_at": self.now,
                        "_line": row.line,
                    }
                )
            elif _changed(current, wanted, BAL_FIELDS):
                if not current.active:
                    report.reactivated += 1
                to_update.append(
                    {"b_id": current.id, **wanted, "updated_at": self.now, "deactivated_at": None}
                )
                seen_rows.append({"bal_id": current.id, "line": row.line})
            else:
                report.unchanged += 1
                seen_rows.append({"bal_id": current.id, "line": row.line})
        if to_update:
            self.conn.execute(update(_B).where(_B.c.id == bindparam("b_id")), to_update)
        if to_insert:
            lines = {r["address_key"]: r.pop("_line") for r in to_insert}
            for k, bal_id in self._insert(_B, "address_key", to_insert).items():
                seen_rows.append({"bal_id": bal_id, "line": lines[k]})
        if seen_rows:
            self._bulk(_seen, seen_rows)
        report.added += len(to_insert)
        report.updated += len(to_update)


def import_extraction(
    engine: Engine,
    path: Path,
    *,
    full: bool = False,
    actor: str = "system",
    nomenclatures: Nomenclatures | None = None,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> ImportReport:
    """Import one extraction file; raise ImportFileError (and change nothing) if it is unusable."""
    started = perf_counter()
    noms = nomenclatures or default_nomenclatures()
    report = ImportReport(file=str(path), full=full)
    now = datetime.now(UTC)
    with transaction(engine) as session:
        conn = session.connection()
        _seen.drop(conn, checkfirst=True)
        _seen.create(conn)
        _index_lookups_only(conn, True)
        batcher = _Batcher(conn, report, now)
        pending: list[ExtractionRow] = []
        for item in read(path, noms, progress):
            report.rows += 1
            if isinstance(item, Reject):
                report.reject(item)
                continue
            pending.append(item)
            if len(pending) >= batch:
                batcher.apply(pending)
                pending = []
        if pending:
            batcher.apply(pending)
        _index_lookups_only(conn, False)
        if full:
            report.deactivated = _deactivate_vanished(conn, now)
        _seen.drop(conn)
        report.seconds = perf_counter() - started
        _record(session, report, actor)
    return report


def _index_lookups_only(conn: Connection, on: bool) -> None:
    """On PostgreSQL, keep the batch look-ups on their indexes for this transaction.

    The tables grow inside the import's own transaction, which no ANALYZE has seen: the
    planner then estimates them empty and picks sequential scans, one per batch over an
    ever larger table (the import went quadratic: 45 s for 300k rows, most in those scans).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL enable_seqscan = {'off' if on else 'on'}")


def _deactivate_vanished(conn: Connection, now: datetime) -> int:
    # NOT EXISTS, not NOT IN: PostgreSQL turns it into a hash anti-join, whereas NOT IN over a
    # set larger than work_mem degrades to a quadratic scan (minutes for 500k BALs).
    seen = exists().where(_seen.c.bal_id == _B.c.id)
    done = conn.execute(
        update(_B)
        .where(and_(_B.c.source == SOURCE_ANS, _B.c.active.is_(True), ~seen))
        .values(active=False, deactivated_at=now, updated_at=now)
    )
    return int(done.rowcount)


def _record(session: Session, report: ImportReport, actor: str) -> None:
    """Trace the import, and tell the look-up caches when something changed."""
    if report.changed:
        generation.bump(session.connection())
    audit.append(
        session,
        audit.AuditEvent(
            actor=actor,
            action="annuaire.import",
            object=Path(report.file).name,
            outcome="ok",
            detail={**report.counts(), "full": report.full},
        ),
    )
