"""Test support for the DMP: a small cast of professionals and patients, and a notifier that
keeps what it was given. Only tests import this module (``pytest_plugins = ("dmp.testing",)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from annuaire.service import add_bal, add_patient_bal, add_professional
from dmp.service import DMPService, Traits
from mssante.config import NotifySection
from mssante.db import transaction
from mssante.notify import Event, Notifier
from mssante.runtime import Runtime

DOMAIN = "demo.mssante.fr"
INS = "279035121518989"  # key verifies: 97 − (2790351215189 mod 97) = 89
REP_INS = "180017512345660"
UNKNOWN_INS = "185057800608491"
TRAITS = Traits("DUPONT", "MARIE", "MARIE CLAIRE", date(1979, 3, 5), "F", "75115")

# IdNat_PS → profession code; the médecin traitant is in the care team.
MEDECIN_TRAITANT = "810000000010"
MEDECIN = "810000000011"
PHARMACIEN = "810000000021"
INFIRMIER = "810000000060"
AUDIOPROTHESISTE = "810000000026"
PROFESSIONS = {
    MEDECIN_TRAITANT: "10",
    MEDECIN: "10",
    PHARMACIEN: "21",
    INFIRMIER: "60",
    AUDIOPROTHESISTE: "26",
}


def bal_of(idnat: str) -> str:
    return f"pro.{idnat}@{DOMAIN}"


class RecordingNotifier(Notifier):
    """Keeps the events instead of sending them (the notifier has its own tests)."""

    def __init__(self) -> None:
        super().__init__(NotifySection())
        self.events: list[Event] = []

    def notify(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def seed(service: DMPService) -> None:
    """Professionals (with PER BALs) in the annuaire; the patient, qualified, with a care team."""
    with transaction(service.writer) as s:
        for idnat, code in PROFESSIONS.items():
            add_professional(
                s, idnat=idnat, nom=f"PRO{code}", prenom="Test", profession_code=code, actor="test"
            )
            add_bal(s, address=bal_of(idnat), type="PER", professional=idnat, actor="test")
        add_patient_bal(s, ins=INS, actor="test")
    service.annuaire.invalidate()
    service.add_patient(ins=INS, traits=TRAITS, actor="test")
    service.add_care_team(INS, MEDECIN_TRAITANT, actor="test")
    service.add_legal_representative(INS, REP_INS, actor="test")


@pytest.fixture
def dmp_service(runtime: Runtime) -> Iterator[DMPService]:
    service = DMPService(
        runtime.engine, runtime.writer_engine, runtime.keyring, runtime.settings, notifier=RecordingNotifier()
    )
    seed(service)
    yield service
    service.notifier.close()
