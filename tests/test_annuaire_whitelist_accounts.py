"""The operator whitelist (liste blanche) XML, the operator's own accounts (TOML, CSV) and the
write API used by the CLI and the demo set-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from annuaire import service
from annuaire.extraction import ImportFileError
from annuaire.local_accounts import import_accounts
from annuaire.models import Bal, OperatorDomain
from annuaire.whitelist import import_whitelist
from mssante.audit import AuditRecord
from mssante.db import make_engine, transaction
from mssante.schema import upgrade

NS = "https://listeblanche.mssante.fr/schema"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, writer=True)
    upgrade(eng)
    yield eng
    eng.dispose()


def _whitelist(path: Path, *domains: str, prolog: str = "") -> Path:
    body = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
    path.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>{prolog}<ListeBlanche xmlns="{NS}">{body}</ListeBlanche>'
    )
    return path


def _domains(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return {d: a for d, a in conn.execute(select(OperatorDomain.domain, OperatorDomain.active))}


def test_whitelist_import_replace_and_idempotent(engine: Engine, tmp_path: Path) -> None:
    first = import_whitelist(
        engine, _whitelist(tmp_path / "a.xml", "medecin.mssante.fr", "CH-Demo.MSSante.fr", "x y")
    )
    assert (first.added, first.rejected) == (2, 1)
    assert "Domaine #3" in first.rejects[0].reason
    assert _domains(engine) == {"medecin.mssante.fr": True, "ch-demo.mssante.fr": True}

    again = import_whitelist(engine, tmp_path / "a.xml")
    assert not again.changed and again.unchanged == 2

    shrunk = import_whitelist(engine, _whitelist(tmp_path / "b.xml", "medecin.mssante.fr"))
    assert shrunk.deactivated == 1
    assert _domains(engine) == {"medecin.mssante.fr": True, "ch-demo.mssante.fr": False}


def test_whitelist_refuses_doctype_and_entities(engine: Engine, tmp_path: Path) -> None:
    doctype = _whitelist(tmp_path / "dtd.xml", "medecin.mssante.fr", prolog="<!DOCTYPE ListeBlanche>")
    with pytest.raises(ImportFileError, match="DOCTYPE"):
        import_whitelist(engine, doctype)
    xxe = tmp_path / "xxe.xml"
    xxe.write_text(
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f'<ListeBlanche xmlns="{NS}"><Domaine><Nom>&x;</Nom></Domaine></ListeBlanche>'
    )
    with pytest.raises(ImportFileError, match="DOCTYPE"):
        import_whitelist(engine, xxe)
    assert _domains(engine) == {}


def test_whitelist_refuses_empty_or_foreign_namespace_or_broken(engine: Engine, tmp_path: Path) -> None:
    import_whitelist(engine, _whitelist(tmp_path / "ok.xml", "medecin.mssante.fr"))
    with pytest.raises(ImportFileError, match="refusing to empty"):
        import_whitelist(engine, _whitelist(tmp_path / "empty.xml"))
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<ListeBlanche><Domaine><Nom>a.mssante.fr</Nom></Domaine></ListeBlanche>")
    with pytest.raises(ImportFileError, match="namespace"):
        import_whitelist(engine, foreign)
    broken = tmp_path / "broken.xml"
    broken.write_text(f'<ListeBlanche xmlns="{NS}"><Domaine>')
    with pytest.raises(ImportFileError, match="not well-formed"):
        import_whitelist(engine, broken)
    assert _domains(engine) == {"medecin.mssante.fr": True}


ACCOUNTS_TOML = """
[[professionals]]
idnat = "810102727017"
nom = "Martin"
prenom = "Marie"
profession_code = "10"

[[structures]]
identifier = "750000001"
id_type = "FINESS"
raison_sociale = "Pharmacie du Centre"
categorie = "620"

[[bals]]
address = "Marie.Martin@demo.mssante.fr"
type = "PER"
professional = "810102727017"

[[bals]]
address = "officine@demo.mssante.fr"
type = "ORG"
structure = "750000001"
responsible = "810102727017"
liste_rouge = false

[[bals]]
address = "ghost@demo.mssante.fr"
type = "PER"
professional = "899999999999"

[[bals]]
address = "bad@demo.mssante.fr"
type = "ORG"
structre = "750000001"

[[patients]]
ins = "288091234567894"
"""


def test_accounts_toml(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS_TOML)
    report = import_accounts(engine, path, actor="t")
    assert (report.added, report.professionals_added, report.structures_added) == (3, 1, 1)
    reasons = [r.reason for r in report.rejects]
    assert reasons[0].startswith("bals[2]: professional '899999999999' is not in the annuaire")
    assert reasons[1].startswith("bals[3]:") and "structre" in reasons[1]
    again = import_accounts(engine, path, actor="t")
    assert not again.changed and again.unchanged == 3


def test_accounts_csv(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(
        "type,address,professional,nom,prenom,profession,structure,raison_sociale,categorie,responsible,liste_rouge\n"
        "PER,jean.durand@demo.mssante.fr,810000000042,Durand,Jean,60,,,,,\n"
        "ORG,accueil@demo.mssante.fr,,,,,750000002,Clinique du Parc,,810000000042,oui\n"
        "XXX,nope@demo.mssante.fr,,,,,,,,,\n"
        "PER,bad-rpps@demo.mssante.fr,8123,Durand,Jean,60,,,,,\n"
    )
    report = import_accounts(engine, path, actor="t")
    assert report.added == 2 and report.rejected == 2
    assert [r.line for r in report.rejects] == [4, 5]
    assert "TRE_R257" in report.rejects[0].reason and "rpps.length" in report.rejects[1].reason
    with engine.connect() as conn:
        assert conn.execute(
            select(Bal.liste_rouge).where(Bal.address_key == "accueil@demo.mssante.fr")
        ).scalar()


def test_accounts_bad_files(engine: Engine, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[bals]\n")
    with pytest.raises(ImportFileError, match="not valid TOML"):
        import_accounts(engine, broken)
    cols = tmp_path / "cols.csv"
    cols.write_text("kind,mail\nPER,a@b.fr\n")
    with pytest.raises(ImportFileError, match="missing column"):
        import_accounts(engine, cols)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("type,address,nom\nPER,a@b.mssante.fr,Lefèvre\n".encode("latin-1"))
    with pytest.raises(ImportFileError, match="not UTF-8"):
        import_accounts(engine, latin)


def test_service_rules_and_audit(engine: Engine) -> None:
    with transaction(engine) as s:
        pro = service.add_professional(s, idnat="810102727017", nom="Martin", profession_code="10", actor="t")
        assert pro.status == "added"
        with pytest.raises(service.AnnuaireError, match="TRE_G15"):
            service.add_professional(s, idnat="810102727018", nom="X", profession_code="999", actor="t")
        with pytest.raises(service.AnnuaireError, match="finess_categories"):
            service.add_structure(s, identifier="1", raison_sociale="X", categorie="9999", actor="t")
        with pytest.raises(service.AnnuaireError, match="needs its structure"):
            service.add_bal(s, address="o@demo.mssante.fr", type="ORG", actor="t")
        with pytest.raises(service.AnnuaireError, match="responsible"):
            service.add_bal(s, address="p@demo.mssante.fr", type="PER", professional="810102727017",
                            responsible="810102727017", actor="t")  # fmt: skip
        with pytest.raises(service.AnnuaireError, match=r"nir\.key"):
            service.add_patient_bal(s, ins="288091234567823", actor="t")
        assert service.add_patient_bal(s, ins="288091234567894", actor="t").status == "added"
        assert service.add_patient_bal(s, ins="288091234567894", actor="t").status == "unchanged"
        assert service.add_operator_domain(s, domain="Other.MSSante.fr", actor="t").status == "added"
        bal = service.add_bal(
            s, address="p@demo.mssante.fr", type="PER", professional="810102727017", actor="t"
        )
        assert bal.status == "added"
        assert (
            service.set_bal_active(s, address="P@demo.mssante.fr", active=False, actor="t").status
            == "updated"
        )
        assert (
            service.set_bal_active(s, address="p@demo.mssante.fr", active=False, actor="t").status
            == "unchanged"
        )
    with engine.connect() as conn:
        actions = conn.execute(select(AuditRecord.action, func.count()).group_by(AuditRecord.action)).all()
    assert {a: n for a, n in actions} == {
        "annuaire.professional.added": 1,
        "annuaire.bal.added": 2,
        "annuaire.domain.added": 1,
        "annuaire.bal.disabled": 1,
    }
