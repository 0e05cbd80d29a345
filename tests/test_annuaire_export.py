"""``mssante annuaire export``: the operator's published BALs, read back by the importer
(ANS layout) and checked as a self-contained FHIR Bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from annuaire import synthetic
from annuaire.models import Bal, Professional, Structure
from tests.test_annuaire_cli import Cli

DOMAINS = sorted({*synthetic.PER_DOMAINS, *synthetic.ORG_DOMAINS})
UNLISTED = "cache.1@medecin.mssante.fr"


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    runner = Cli(tmp_path / "data", db_url)
    runner("init")
    return runner


def _annuaire(db_url: str) -> set[tuple[Any, ...]]:
    """The published content of an annuaire: each active BAL with its holder and structure."""
    engine = create_engine(db_url)
    query = (
        select(
            Bal.address,
            Bal.type,
            Bal.service,
            Bal.dematerialisation,
            Professional.idnat,
            Professional.id_type,
            Professional.identifier,
            Professional.civilite,
            Professional.nom,
            Professional.prenom,
            Professional.categorie_code,
            Professional.profession_code,
            Professional.profession_label,
            Professional.savoir_faire_code,
            Professional.savoir_faire_label,
            Structure.identifier,
            Structure.id_type,
            Structure.raison_sociale,
            Structure.enseigne,
            Structure.numero_voie,
            Structure.type_voie,
            Structure.libelle_voie,
            Structure.ligne_acheminement,
            Structure.code_postal,
            Structure.departement,
            Structure.pays,
        )
        .outerjoin(Professional, Bal.professional_id == Professional.id)
        .outerjoin(Structure, Bal.structure_id == Structure.id)
        .where(Bal.active.is_(True), Bal.liste_rouge.is_(False), Bal.type != "PAT")
    )
    with engine.connect() as conn:
        rows = {tuple(r) for r in conn.execute(query)}
    engine.dispose()
    return rows


def _fill(cli: Cli, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "national.txt", 300)
    cli("annuaire", "import", str(gen.path), "--json")
    cli("annuaire", "add", "bal", UNLISTED, "--type", "PER", "--professional", "8" + synthetic.rpps_of(1),
        "--liste-rouge")  # fmt: skip
    disabled = json.loads(cli("annuaire", "search", "officine", "--json"))[0]["address"]
    cli("annuaire", "disable", disabled)


def test_ans_export_reimported_on_an_empty_store_gives_the_same_annuaire(
    cli: Cli, tmp_path: Path, db_url: str
) -> None:
    _fill(cli, tmp_path)
    out = tmp_path / "export.txt"
    args = [arg for d in DOMAINS for arg in ("--domain", d)]
    cli("annuaire", "export", "--format", "ans", "--output", str(out), *args)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines[0].split("|")) == 31 and all(len(line.split("|")) == 31 for line in lines)
    assert UNLISTED not in out.read_text()

    if db_url.startswith("sqlite"):
        other_url = f"sqlite:///{tmp_path / 'other' / 'mssante.db'}"
    else:  # a second PostgreSQL database of the test server
        from tests.conftest import _create_pg_database, _drop_pg_database

        name, other_url = _create_pg_database()
    try:
        other = Cli(tmp_path / "other", other_url)
        other("init")
        report = json.loads(other("annuaire", "import", str(out), "--json"))
        assert report["rejected"] == 0 and report["added"] == len(lines) - 1
        published = {row for row in _annuaire(db_url) if row[0].split("@")[1] in DOMAINS}
        assert _annuaire(other_url) == published
    finally:
        if not db_url.startswith("sqlite"):
            _drop_pg_database(name)


def test_only_the_operators_domains_are_published(cli: Cli, tmp_path: Path) -> None:
    _fill(cli, tmp_path)
    text = cli("annuaire", "export", "--format", "ans", "--domain", "chu-sud.mssante.fr")
    addresses = [line.split("|")[1] for line in text.splitlines()[1:]]
    assert addresses and all(a.endswith("@chu-sud.mssante.fr") for a in addresses)
    assert cli("annuaire", "export", "--format", "ans").splitlines()[1:] == []  # demo.mssante.fr: none
    assert "--format must be one of" in cli("annuaire", "export", "--format", "csv", code=2)


def test_fhir_bundle_is_self_contained(cli: Cli, tmp_path: Path) -> None:
    _fill(cli, tmp_path)
    out = tmp_path / "export.json"
    args = [arg for d in DOMAINS for arg in ("--domain", d)]
    cli("annuaire", "export", "--format", "fhir", "-o", str(out), *args)
    bundle = json.loads(out.read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    ids = {(r["resourceType"], r["id"]) for r in resources}
    assert len(ids) == len(resources), "duplicate resources"
    endpoints = [r for r in resources if r["resourceType"] == "Endpoint"]
    assert bundle["total"] == len(endpoints) > 0
    assert UNLISTED not in out.read_text()

    def refs(value: Any) -> list[str]:
        if isinstance(value, dict):
            own = [value["reference"]] if isinstance(value.get("reference"), str) else []
            return own + [r for v in value.values() for r in refs(v)]
        if isinstance(value, list):
            return [r for v in value for r in refs(v)]
        return []

    for resource in resources:
        for ref in refs(resource):
            kind, _, rid = ref.partition("/")
            assert (kind, rid) in ids, (
                f"{resource['resourceType']}/{resource['id']} → {ref} not in the bundle"
            )
    addresses = {e["address"].removeprefix("mailto:") for e in endpoints}
    telecoms = {
        t["value"] for r in resources if r["resourceType"] != "Endpoint" for t in r.get("telecom", [])
    }
    assert addresses == telecoms  # every BAL is on its holder and has its Endpoint
    kinds = {r["resourceType"] for r in resources}
    assert kinds == {"Organization", "Practitioner", "PractitionerRole", "Endpoint"}
