"""The BALs an identity holds through the annuaire (``delegation.reach.held_bals``), asked at
every LIST and at logins that name no BAL: the answer on each database backend, and a query
that stays two index look-ups however large the national annuaire."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from annuaire import service
from delegation.reach import _HELD_BY_PROFESSIONAL, held_bals
from mssante.auth.identity import Identity
from mssante.db import make_engine, transaction
from mssante.schema import upgrade
from tests.test_annuaire_lookup import PHARMACIST, engine

__all__ = ["engine"]  # the annuaire look-up tests' directory, on each database backend

COLLEAGUE = "810100000029"
INS = "288091234567894"  # the patient BAL of the annuaire look-up tests' directory


def test_held_bals_are_the_owned_and_the_responsible_ones_still_active(engine: Engine) -> None:
    with transaction(engine) as s:
        service.add_bal(s, address="ancienne@demo.mssante.fr", type="ORG", structure="750000001",
                        responsible=PHARMACIST, actor="t")  # fmt: skip
        service.set_bal_active(s, address="ancienne@demo.mssante.fr", active=False, actor="t")
        service.add_professional(
            s, idnat=COLLEAGUE, nom="Durand", prenom="P", profession_code="10", actor="t"
        )
        service.add_bal(s, address="durand@demo.mssante.fr", type="PER", professional=COLLEAGUE, actor="t")
    with engine.connect() as conn:
        # Owner of a PER BAL and responsible of an ORG BAL; a deactivated BAL is no longer held.
        assert held_bals(conn, Identity.professional(PHARMACIST)) == [
            "marie.martin@demo.mssante.fr",
            "officine@demo.mssante.fr",
        ]
        assert held_bals(conn, Identity.professional(COLLEAGUE)) == ["durand@demo.mssante.fr"]
        assert held_bals(conn, Identity.professional("810199999999")) == []
        assert held_bals(conn, Identity.patient(INS)) == [f"{INS}@patient.mssante.fr"]
        assert held_bals(conn, Identity.staff("secretaire.martin")) == []


def test_held_bals_never_scans_the_annuaire(tmp_path: Path) -> None:
    """SQLite's plan for the question: the professional by its unique RPPS key, then the BALs by
    their owner's and responsible's indexes. (Asked as one OR over two outer joins, it read every
    BAL of the annuaire: 150 ms at 400,000 BALs, at every LIST.)"""
    eng = make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    upgrade(eng)
    compiled = _HELD_BY_PROFESSIONAL.compile(dialect=eng.dialect)
    with eng.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", (PHARMACIST, PHARMACIST)).all()
    steps = [str(row[-1]) for row in plan]
    assert not [s for s in steps if s.startswith("SCAN")], steps
    assert sum("ix_annuaire_bals_professional_id" in s for s in steps) == 1, steps
    assert sum("ix_annuaire_bals_responsible_id" in s for s in steps) == 1, steps
    eng.dispose()
