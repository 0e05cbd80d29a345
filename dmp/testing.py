"""Test support for the DMP: a small cast of professionals and patients, and a notifier that
keeps what it was given. Only tests import this module (``pytest_plugins = ("dmp.testing",)``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date

import pytest

from annuaire.service import add_bal, add_patient_bal, add_professional, add_structure
from dmp.models import OID_INS_NIR
from dmp.service import DMPService, Traits
from dmp.xdm import XdmAuthor, XdmDocument, XdmPackage, XdmPatient
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


# The hospital where the médecin traitant practises (the PER BAL hangs on it), and its DPI's APP BAL.
CH_TEST = "750000000"
DPI_BAL = f"dpi@{DOMAIN}"
AT_CH_TEST = (MEDECIN_TRAITANT,)


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
        add_structure(s, identifier=CH_TEST, raison_sociale="CH TEST", id_type="FINESS", actor="test")
        for idnat, code in PROFESSIONS.items():
            add_professional(
                s, idnat=idnat, nom=f"PRO{code}", prenom="Test", profession_code=code, actor="test"
            )
            where = CH_TEST if idnat in AT_CH_TEST else None
            add_bal(s, address=bal_of(idnat), type="PER", professional=idnat, structure=where, actor="test")
        add_bal(s, address=DPI_BAL, type="APP", structure=CH_TEST, responsible=MEDECIN, actor="test")
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


def cda(
    ins: str = INS,
    type_code: str = "34112-3",
    title: str = "CR d'hospitalisation",
    oid: str = OID_INS_NIR,
    traits: Traits = TRAITS,
) -> bytes:
    """A minimal CDA R2 whose recordTarget carries the INS and its traits (CI-SIS header)."""
    t = traits
    place = f"<birthplace><place><addr><censusTract>{t.birthplace}</censusTract></addr></place></birthplace>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">'
        f'<code code="{type_code}" codeSystem="2.16.840.1.113883.6.1"/><title>{title}</title>'
        f'<recordTarget><patientRole><id root="{oid}" extension="{ins}"/><patient>'
        f'<name><given>{t.first_given_name}</given><given qualifier="BR">{t.given_names}</given>'
        f'<family qualifier="BR">{t.birth_name}</family></name>'
        f'<administrativeGenderCode code="{t.sex}" codeSystem="2.16.840.1.113883.5.1"/>'
        f'<birthTime value="{t.birth_date:%Y%m%d}"/>{place if t.birthplace else ""}'
        "</patient></patientRole></recordTarget>"
        "<component><nonXMLBody><text>Séjour, SECRET-CONTENT.</text></nonXMLBody></component>"
        "</ClinicalDocument>"
    ).encode()


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def package(
    *,
    ins: str = INS,
    author: str = MEDECIN_TRAITANT,
    documents: tuple[XdmDocument, ...] | None = None,
    traits: Traits = TRAITS,
    with_pdf: bool = False,
    oid: str = OID_INS_NIR,
) -> XdmPackage:
    """A package for ``ins`` with one CDA (and optionally its PDF rendering)."""
    who = XdmAuthor(author, PROFESSIONS.get(author, "10"), "Médecin", "PRO", "Test", "1750000000", "CH TEST")
    docs = documents or (
        XdmDocument(
            cda(ins, traits=traits, oid=oid),
            "34112-3",
            "CR d'hospitalisation",
            who,
            unique_id=f"2.25.{uuid.uuid4().int}",
        ),
    )
    if with_pdf:
        docs += (
            XdmDocument(PDF, "34112-3", "CR (PDF)", who, format="PDF", mime_type="application/pdf",
                        unique_id=f"2.25.{uuid.uuid4().int}"),
        )  # fmt: skip
    patient = XdmPatient(
        ins, oid, traits.birth_name, traits.first_given_name, traits.given_names,
        traits.birth_date, traits.sex, traits.birthplace,
    )  # fmt: skip
    return XdmPackage(patient, docs, submission_id=f"2.25.{uuid.uuid4().int}")
