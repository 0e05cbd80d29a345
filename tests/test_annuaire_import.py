"""Import of the ANS extraction: idempotence, --full deactivation, rejects with line numbers,
whole-file failures that change nothing, and a 100k-row synthetic file."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from annuaire import synthetic
from annuaire.extraction import COLUMNS, ImportFileError
from annuaire.importer import import_extraction
from annuaire.models import Bal, Professional, Structure
from mssante.audit import AuditRecord
from mssante.db import make_engine
from mssante.schema import upgrade


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, writer=True)
    upgrade(eng)
    yield eng
    eng.dispose()


def _snapshot(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        bals = conn.execute(
            select(
                Bal.address_key, Bal.active, Bal.type, Bal.updated_at, Bal.professional_id, Bal.structure_id
            ).order_by(Bal.address_key)
        ).all()
        pros = conn.execute(
            select(Professional.idnat, Professional.updated_at).order_by(Professional.idnat)
        ).all()
        structs = conn.execute(
            select(Structure.identifier, Structure.updated_at).order_by(Structure.identifier)
        ).all()
    return [tuple(r) for r in [*bals, *pros, *structs]]


def _counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        active = conn.execute(select(func.count()).where(Bal.active.is_(True))).scalar_one()
        total = conn.execute(select(func.count()).select_from(Bal)).scalar_one()
    return int(active), int(total)


def _write(path: Path, lines: list[str], header: str | None = None) -> Path:
    path.write_text((header if header is not None else "|".join(COLUMNS)) + "\n" + "\n".join(lines) + "\n")
    return path


def test_import_is_idempotent_and_reports(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "extraction.txt", 3000, malformed_ratio=0.02)
    first = import_extraction(engine, gen.path)
    assert first.rows == 3000
    assert first.rejected == gen.malformed > 0
    assert first.added == 3000 - gen.malformed
    assert first.professionals_added > 0 and first.structures_added > 0
    before = _snapshot(engine)

    second = import_extraction(engine, gen.path)
    assert (second.added, second.updated, second.deactivated) == (0, 0, 0)
    assert second.unchanged == first.added
    assert second.professionals_added == second.professionals_updated == 0
    assert second.structures_added == second.structures_updated == 0
    assert _snapshot(engine) == before  # not even a timestamp moved


def test_rejects_carry_line_numbers_and_reasons(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "extraction.txt", 2000, malformed_ratio=0.05)
    report = import_extraction(engine, gen.path)
    assert [r.line for r in report.rejects] == gen.malformed_lines
    reasons = " / ".join(r.reason for r in report.rejects)
    for expected in [
        "expected 31 fields",
        "no local part or no '@'",
        "unknown BAL type 'XYZ'",
        "rule rpps.length",
        "without a professional identifier",
        "rule idnat.mismatch",
        "without a structure",
    ]:
        assert expected in reasons


def test_full_import_deactivates_vanished_never_deletes(engine: Engine, tmp_path: Path) -> None:
    big = synthetic.generate(tmp_path / "big.txt", 1000, malformed_ratio=0)
    small = synthetic.generate(tmp_path / "small.zip", 700, malformed_ratio=0, zipped=True)  # rows 0..699
    import_extraction(engine, big.path)
    assert _counts(engine) == (1000, 1000)

    partial = import_extraction(engine, small.path)  # not --full: nothing deactivated
    assert partial.deactivated == 0 and partial.unchanged == 700

    full = import_extraction(engine, small.path, full=True)
    assert full.deactivated == 300
    assert _counts(engine) == (700, 1000)  # deactivated, still there
    with engine.connect() as conn:
        gone = conn.execute(select(Bal.deactivated_at).where(Bal.active.is_(False))).scalars().all()
    assert all(gone)

    again = import_extraction(engine, small.path, full=True)
    assert again.deactivated == 0 and not again.changed

    back = import_extraction(engine, big.path, full=True)
    assert back.reactivated == 300 and back.updated == 300
    assert _counts(engine) == (1000, 1000)


def test_full_import_leaves_local_bals_alone(engine: Engine, tmp_path: Path) -> None:
    from annuaire import service
    from mssante.db import transaction

    with transaction(engine) as session:
        service.add_professional(session, idnat="810102727017", nom="Martin", profession_code="10", actor="t")
        service.add_bal(session, address="m.martin@demo.mssante.fr", type="PER", professional="810102727017",
                        actor="t")  # fmt: skip
    gen = synthetic.generate(tmp_path / "e.txt", 50, malformed_ratio=0)
    report = import_extraction(engine, gen.path, full=True)
    assert report.deactivated == 0
    assert _counts(engine) == (51, 51)


def test_duplicate_addresses_are_rejected_after_the_first(engine: Engine, tmp_path: Path) -> None:
    rows = [fields for fields, _ in synthetic.rows(5, malformed_ratio=0)]
    dup = list(rows[1])
    dup[1] = dup[1].upper()  # same BAL, other case
    path = _write(tmp_path / "dup.txt", ["|".join(r) for r in [*rows, dup]])
    report = import_extraction(engine, path, batch=2)  # across batches
    assert report.added == 5 and report.rejected == 1
    assert report.rejects[0].line == 7 and "first on line 3" in report.rejects[0].reason


def test_reordered_columns_and_trailing_separator(engine: Engine, tmp_path: Path) -> None:
    rows = [fields for fields, _ in synthetic.rows(3, malformed_ratio=0)]
    order = list(reversed(range(len(COLUMNS))))
    header = "|".join(COLUMNS[i] for i in order)
    path = _write(tmp_path / "rev.txt", ["|".join(r[i] for i in order) + "|" for r in rows], header=header)
    report = import_extraction(engine, path)
    assert report.added == 3 and report.rejected == 0


def test_truncated_zip_fails_whole_import_without_change(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "e.zip", 5000, zipped=True)
    data = gen.path.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportFileError, match="truncated or corrupt zip"):
        import_extraction(engine, cut)
    assert _counts(engine) == (0, 0)


def test_corrupt_zip_member_fails_midway_and_rolls_back(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "e.zip", 20000, zipped=True, malformed_ratio=0)
    data = bytearray(gen.path.read_bytes())
    with zipfile.ZipFile(gen.path) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename)
    middle = start + info.compress_size * 3 // 4
    data[middle : middle + 64] = bytes(64)  # damage the deflate stream late in the file
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    # Damaged deflate data surfaces as a zip error or as undecodable bytes: refused either way.
    with pytest.raises(ImportFileError, match=r"corrupt zip|truncated|not UTF-8"):
        import_extraction(engine, bad, batch=500)  # several batches were written, then rolled back
    assert _counts(engine) == (0, 0)


def test_wrong_encoding_fails_whole_import(engine: Engine, tmp_path: Path) -> None:
    rows = [fields for fields, _ in synthetic.rows(3000, malformed_ratio=0)]
    text = "|".join(COLUMNS) + "\n" + "\n".join("|".join(r) for r in rows) + "\n"
    path = tmp_path / "latin1.txt"
    path.write_bytes(text.encode("latin-1", errors="replace"))
    with pytest.raises(ImportFileError, match="not UTF-8"):
        import_extraction(engine, path, batch=100)
    assert _counts(engine) == (0, 0)


def test_missing_columns_fail_whole_import(engine: Engine, tmp_path: Path) -> None:
    header = "|".join(c for c in COLUMNS if c not in ("Adresse BAL", "Code postal structure BAL"))
    path = _write(tmp_path / "cols.txt", ["x"], header=header)
    with pytest.raises(ImportFileError, match=r"2 column\(s\) missing.*Adresse BAL"):
        import_extraction(engine, path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ImportFileError, match="empty file"):
        import_extraction(engine, empty)
    with pytest.raises(ImportFileError, match="cannot open"):
        import_extraction(engine, tmp_path / "absent.txt")
    assert _counts(engine) == (0, 0)


def test_import_is_audited(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "e.txt", 100)
    import_extraction(engine, gen.path, actor="cli:test")
    with engine.connect() as conn:
        record = conn.execute(select(AuditRecord).where(AuditRecord.action == "annuaire.import")).one()
    assert record.actor == "cli:test" and '"added": ' in (record.detail or "")


@pytest.mark.slow
def test_import_100k_rows(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "100k.zip", 100_000, zipped=True)
    started = time.perf_counter()
    report = import_extraction(engine, gen.path, full=True)
    elapsed = time.perf_counter() - started
    assert report.added == 100_000 - gen.malformed
    assert report.rejected == gen.malformed
    print(f"100k rows imported in {elapsed:.1f} s ({100_000 / elapsed:.0f} rows/s)")
    again = import_extraction(engine, gen.path, full=True)
    assert not again.changed


def _extraction_row(**values: str) -> str:
    row = dict.fromkeys(COLUMNS, "")
    row.update(values)
    return "|".join(row[c] for c in COLUMNS)


def test_pharmacies_are_recognised_after_a_standard_national_import(engine: Engine, tmp_path: Path) -> None:
    """No FINESS import: the officine is derived from who practises there (pharmaciens only)."""
    from annuaire.lookup import Annuaire

    structure = {"Type identifiant structure": "1", "Raison Sociale structure BAL": "PHARMACIE DU PORT"}
    hospital = {"Type identifiant structure": "1", "Raison Sociale structure BAL": "CH DU PORT"}
    lines = [
        _extraction_row(**structure, **{"Type de BAL": "ORG", "Adresse BAL": "officine@port.mssante.fr",
                                        "Identification Structure": "130000001"}),
        _extraction_row(**structure, **{"Type de BAL": "PER", "Adresse BAL": "ph.titulaire@port.mssante.fr",
                                        "Type Identifiant PP": "8", "Identifiant PP": "10100000021",
                                        "Identification nationale PP": "810100000021",
                                        "Identification Structure": "130000001", "Nom d'exercice": "PORT",
                                        "Code Profession": "21"}),
        _extraction_row(**hospital, **{"Type de BAL": "ORG", "Adresse BAL": "pui@ch-port.mssante.fr",
                                       "Identification Structure": "130000002"}),
        _extraction_row(**hospital, **{"Type de BAL": "PER", "Adresse BAL": "ph.pui@ch-port.mssante.fr",
                                       "Type Identifiant PP": "8", "Identifiant PP": "10100000022",
                                       "Identification nationale PP": "810100000022",
                                       "Identification Structure": "130000002", "Code Profession": "21"}),
        _extraction_row(**hospital, **{"Type de BAL": "PER", "Adresse BAL": "dr.port@ch-port.mssante.fr",
                                       "Type Identifiant PP": "8", "Identifiant PP": "10100000010",
                                       "Identification nationale PP": "810100000010",
                                       "Identification Structure": "130000002", "Code Profession": "10"}),
    ]  # fmt: skip
    report = import_extraction(engine, _write(tmp_path / "extraction.txt", lines))
    assert report.rejected == 0, report
    annuaire = Annuaire(engine)
    assert annuaire.is_pharmacy_org_bal("officine@port.mssante.fr")
    assert not annuaire.is_pharmacy_org_bal("pui@ch-port.mssante.fr")  # a hospital's PUI: médecins there
