"""FINESS categories: what turns a structure into a pharmacie d'officine for the patient rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from annuaire import service, synthetic
from annuaire.extraction import ImportFileError
from annuaire.finess import import_categories
from annuaire.importer import import_extraction
from annuaire.lookup import Annuaire
from mssante.db import make_engine, transaction
from mssante.schema import upgrade


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, writer=True)
    upgrade(eng)
    yield eng
    eng.dispose()


def test_categories_make_pharmacy_org_bals(engine: Engine, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "e.txt", 700, malformed_ratio=0)
    import_extraction(engine, gen.path)
    categories = tmp_path / "finess.csv"
    pharmacies = synthetic.write_finess_categories(categories, 700)
    annuaire = Annuaire(engine)
    org_rows = [f for f, _ in synthetic.rows(700, malformed_ratio=0) if f[0] == "ORG"]
    officine = next(f[1] for f in org_rows if f[1].startswith("officine."))
    other = next(f[1] for f in org_rows if not f[1].startswith("officine."))
    assert not annuaire.is_pharmacy_org_bal(officine)

    report = import_categories(engine, categories)
    assert report.structures_updated == 70 and report.rejected == 0 and pharmacies == 10
    annuaire.invalidate()
    assert annuaire.is_pharmacy_org_bal(officine)
    assert not annuaire.is_pharmacy_org_bal(other)
    assert not import_categories(engine, categories).changed  # idempotent

    # A later extraction import does not erase the categories (not in that file).
    import_extraction(engine, gen.path)
    annuaire.invalidate()
    assert annuaire.is_pharmacy_org_bal(officine)


def test_etalab_lines_idnat_struct_and_rejects(engine: Engine, tmp_path: Path) -> None:
    with transaction(engine) as s:
        service.add_structure(s, identifier="1750000001", raison_sociale="Pharmacie du Centre", actor="t")

    def etalab(finess: str, categorie: str) -> str:
        fields = [
            "structureet",
            finess,
            "750000000",
            "PHARMACIE DU CENTRE",
            *[""] * 14,
            categorie,
            "Officine",
        ]
        return ";".join(fields)

    path = tmp_path / "etalab.csv"
    path.write_text(
        "finess;etalab;95;2026-11-01\n"
        + etalab("750000001", "620")
        + "\n"
        + etalab("750000002", "62")
        + "\n"
        + etalab("7500", "620")
        + "\n"
        + "geolocalisation;750000001;1.0;2.0\n",
        encoding="latin-1",
    )
    report = import_categories(engine, path)
    assert report.structures_updated == 1
    assert [(r.line, r.reason.split(" (")[0]) for r in report.rejects] == [
        (3, "FINESS category must be 3 digits, got '62'"),
        (4, "FINESS number must have 9 characters, got 4: '7500'"),
    ]
    structure = Annuaire(engine).structure("1750000001")
    assert structure is not None and structure.kind == "pharmacie_officine"


def test_bad_header(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("finess;category_name\n750000001;620\n")
    with pytest.raises(ImportFileError, match="'categorie' column"):
        import_categories(engine, path)
