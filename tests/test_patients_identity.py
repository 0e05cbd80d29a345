"""Patient BALs are opened only for a qualified INS (service and command line, both databases)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from annuaire.lookup import Annuaire
from annuaire.models import Bal
from dmp.service import DMPService, Traits
from mssante.audit import AuditRecord
from mssante.cli import app
from mssante.db import transaction
from mssante.patients.identity import NotQualified, open_patient_bal
from mssante.runtime import Runtime

TRAITS = Traits("DUPONT", "Marie", "Marie Anne", date(1980, 1, 15), "F")


def _valid(first13: str) -> str:
    from annuaire.identifiers import nir_key

    return f"{first13}{nir_key(first13):02d}"


@pytest.fixture
def dmp(runtime: Runtime) -> Iterator[DMPService]:
    service = DMPService(runtime.engine, runtime.writer_engine, runtime.keyring, runtime.settings)
    yield service
    service.notifier.close()


def test_a_qualified_ins_gets_its_bal_and_the_opening_is_audited(runtime: Runtime, dmp: DMPService) -> None:
    ins = _valid("2800175123456")
    dmp.add_patient(ins=ins, traits=TRAITS, actor="test")
    with transaction(runtime.writer_engine) as s:
        saved = open_patient_bal(s, ins=ins, actor="test")
        assert (saved.row.address, saved.status) == (f"{ins}@patient.mssante.fr", "added")
    with transaction(runtime.writer_engine) as s:
        assert open_patient_bal(s, ins=ins, actor="test").status == "unchanged"
    info = Annuaire(runtime.engine).bal(f"{ins}@patient.mssante.fr")
    assert info is not None and info.active and info.ins == ins
    with transaction(runtime.engine) as s:
        actions = s.scalars(
            select(AuditRecord.action).where(AuditRecord.bal == f"{ins}@patient.mssante.fr")
        ).all()
    assert actions.count("patient.bal.open") == 2


@pytest.mark.parametrize("status", ["PROV", "VALI", "DOUB", "DESA"])
def test_an_ins_not_qualified_gets_no_bal(runtime: Runtime, dmp: DMPService, status: str) -> None:
    ins = _valid("1750569123789")
    dmp.add_patient(ins=ins, traits=TRAITS, identity_status=status, actor="test")
    with (
        pytest.raises(
            NotQualified, match=f"identity status {status}: a patient BAL is opened only for a qualified INS"
        ),
        transaction(runtime.writer_engine) as s,
    ):
        open_patient_bal(s, ins=ins, actor="test")
    with transaction(runtime.engine) as s:
        assert s.scalars(select(Bal).where(Bal.ins == ins)).first() is None


def test_unknown_or_malformed_ins_gets_no_bal(runtime: Runtime) -> None:
    with transaction(runtime.writer_engine) as s:
        with pytest.raises(NotQualified, match="is not in the register of patient identities"):
            open_patient_bal(s, ins=_valid("2800175999999"), actor="test")
        with pytest.raises(NotQualified, match="not an INS matricule"):
            open_patient_bal(s, ins="280017512345699", actor="test")  # wrong key


def test_incomplete_traits_get_no_bal(runtime: Runtime, dmp: DMPService) -> None:
    ins = _valid("2800175123457")
    dmp.add_patient(ins=ins, traits=TRAITS, actor="test")
    # The register is written by the DMP service, which refuses incomplete traits; a row edited
    # behind its back is still checked.
    with transaction(runtime.writer_engine) as s:
        from dmp.models import Patient

        row = s.scalars(select(Patient).where(Patient.ins == ins)).one()
        row.first_given_name = " "
    with (
        transaction(runtime.writer_engine) as s,
        pytest.raises(NotQualified, match="incomplete identity traits"),
    ):
        open_patient_bal(s, ins=ins, actor="test")


def test_command_line(runtime: Runtime, dmp: DMPService) -> None:
    qualified, validated = _valid("2800175123458"), _valid("1750569123780")
    dmp.add_patient(ins=qualified, traits=TRAITS, actor="test")
    dmp.add_patient(ins=validated, traits=replace(TRAITS, sex="M"), identity_status="VALI", actor="test")
    runner = CliRunner()
    base = ["--data-dir", str(runtime.settings.data_dir)]
    env = {"MSSANTE_DATABASE__URL": runtime.settings.database_url, "COLUMNS": "200"}
    result = runner.invoke(app, [*base, "patients", "open-bal", qualified, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"bal": f"{qualified}@patient.mssante.fr", "status": "added"}
    result = runner.invoke(app, [*base, "patients", "open-bal", validated], env=env)
    assert result.exit_code == 1
    assert "identity status VALI" in result.output and "qualified INS (QUAL)" in result.output
    result = runner.invoke(
        app, [*base, "patients", "conversations", f"{qualified}@patient.mssante.fr"], env=env
    )
    assert result.exit_code == 0 and result.output == ""
