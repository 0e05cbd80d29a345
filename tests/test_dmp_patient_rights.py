"""The patient's own rights in the DMP store (seed: "contrôle utilisateur"): hide a document
from professionals, block a professional, declare a médecin traitant, deposit their own
documents and profile entries, choose the notification channel — decided by ``dmp.rules``,
traced, and notified as the seed lists it."""

from __future__ import annotations

import pytest

from dmp import codes, rules
from dmp.rules import Actor, DocumentFacts, PatientFacts, Role
from dmp.service import DMPError, DMPService, DocumentMeta, Refused
from dmp.testing import INFIRMIER, INS, MEDECIN, MEDECIN_TRAITANT, PHARMACIEN, REP_INS, RecordingNotifier
from mssante.auth.identity import Identity

MATRIX = codes.default().matrix
AUTHOR, TRAITANT_ID, OTHER = "810000000101", "810000000102", "810000000103"
DOCTOR = Actor(Role.PROFESSIONAL, OTHER, "10", True)
PATIENT_ACTOR = Actor(Role.PATIENT, INS)
CDA = b"<ClinicalDocument xmlns='urn:hl7-org:v3'><title>CR</title></ClinicalDocument>"
PDF = b"%PDF-1.4\n%%EOF\n"

TRAITANT, AUTRE, PATIENT = (
    Identity.professional(MEDECIN_TRAITANT),
    Identity.professional(MEDECIN),
    Identity.patient(INS),
)


# -- rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reader", "allowed"),
    [(AUTHOR, True), (TRAITANT_ID, True), (OTHER, False)],
    ids=["author", "medecin-traitant", "other-doctor"],
)
def test_a_hidden_document_is_seen_by_its_author_and_the_medecin_traitant_only(
    reader: str, allowed: bool
) -> None:
    patient = PatientFacts(INS, "QUAL", care_team=frozenset({OTHER, AUTHOR}), medecin_traitant=TRAITANT_ID)
    document = DocumentFacts("11488-4", AUTHOR, hidden_by_patient=True)
    actor = Actor(Role.PROFESSIONAL, reader, "10", True)
    assert bool(rules.may_read(actor, patient, document, MATRIX)) is allowed
    assert rules.may_read(PATIENT_ACTOR, patient, document, MATRIX)  # never hidden from the patient


def test_a_blocked_professional_opens_nothing_not_even_by_break_glass() -> None:
    patient = PatientFacts(INS, "QUAL", care_team=frozenset({OTHER}), blocked=frozenset({OTHER}))
    for break_glass in (False, True):
        decision = rules.record_access(DOCTOR, patient, break_glass=break_glass)
        assert not decision and "blocked" in decision.reason


def test_the_medecin_traitant_has_presumed_consent_and_is_told_once_a_day() -> None:
    patient = PatientFacts(INS, "QUAL", medecin_traitant=OTHER)
    assert rules.record_access(DOCTOR, patient).consent is rules.Consent.CARE_TEAM
    assert rules.notify_read(DOCTOR, patient, first_today=True)
    assert not rules.notify_read(DOCTOR, patient, first_today=False)
    outsider = Actor(Role.PROFESSIONAL, AUTHOR, "10", True)
    assert rules.notify_read(outsider, patient, first_today=False)  # outside the team: every read


def test_patients_deposit_only_in_their_space_and_delete_only_their_own() -> None:
    patient = PatientFacts(INS, "QUAL", legal_representatives=frozenset({REP_INS}))
    rep = Actor(Role.LEGAL_REPRESENTATIVE, REP_INS)
    assert rules.may_deposit_own(PATIENT_ACTOR, patient, rules.PATIENT_SPACE)
    assert rules.may_deposit_own(rep, patient, rules.PATIENT_SPACE)  # for a minor
    assert not rules.may_deposit_own(PATIENT_ACTOR, patient, "COMPTES_RENDUS")
    assert not rules.may_deposit_own(DOCTOR, patient, rules.PATIENT_SPACE)
    own = DocumentFacts("DOCPAT01", INS, space=rules.PATIENT_SPACE)
    theirs = DocumentFacts("11488-4", AUTHOR, space="COMPTES_RENDUS")
    assert rules.may_delete_own(PATIENT_ACTOR, patient, own)
    assert not rules.may_delete_own(PATIENT_ACTOR, patient, theirs)
    assert not rules.may_choose(DOCTOR, patient)


# -- service ----------------------------------------------------------------------------------------
def _feed(service: DMPService, title: str = "CR de consultation") -> str:
    return service.feed(TRAITANT, INS, CDA, DocumentMeta("11488-4", title)).unique_id


def _listed(service: DMPService, who: Identity) -> list[str]:
    return [d.title for d in service.list_documents(who, INS)]


def test_hide_block_and_medecin_traitant_end_to_end(dmp_service: DMPService) -> None:
    service = dmp_service
    service.add_care_team(INS, MEDECIN, actor="test")
    uid = _feed(service)
    service.feed(AUTRE, INS, CDA, DocumentMeta("11488-4", "CR de l'autre"))
    assert sorted(_listed(service, AUTRE)) == ["CR de consultation", "CR de l'autre"]

    service.hide(PATIENT, INS, uid, hidden=True)
    assert _listed(service, AUTRE) == ["CR de l'autre"]
    assert sorted(_listed(service, TRAITANT)) == ["CR de consultation", "CR de l'autre"]  # the author
    assert [d.hidden_by_patient for d in service.list_documents(PATIENT, INS) if d.unique_id == uid] == [True]
    with pytest.raises(Refused, match="hidden from professionals by the patient"):
        service.read(AUTRE, uid)
    service.hide(PATIENT, INS, uid, hidden=False)
    assert service.read(AUTRE, uid)[1] == CDA

    with pytest.raises(Refused, match="only the patient"):
        service.hide(AUTRE, INS, uid, hidden=True)  # a professional makes no patient choice

    service.block(PATIENT, INS, MEDECIN, blocked=True)
    with pytest.raises(Refused, match="blocked"):
        service.list_documents(AUTRE, INS, break_glass=True, reason="urgence")
    with pytest.raises(DMPError, match="blocked professional cannot be the médecin traitant"):
        service.set_medecin_traitant(PATIENT, INS, MEDECIN)
    service.block(PATIENT, INS, MEDECIN, blocked=False)
    assert service.set_medecin_traitant(PATIENT, INS, MEDECIN).medecin_traitant == MEDECIN
    with pytest.raises(DMPError, match="médecin traitant cannot be blocked"):
        service.block(PATIENT, INS, MEDECIN, blocked=True)
    with pytest.raises(DMPError, match="not a doctor"):
        service.set_medecin_traitant(PATIENT, INS, PHARMACIEN)

    actions = [(t.action, t.outcome) for t in service.history(PATIENT, INS)]
    for expected in [("patient.hide", "ok"), ("patient.unhide", "ok"), ("patient.hide", "refused"),
                     ("patient.block", "ok"), ("list", "refused"), ("patient.unblock", "ok"),
                     ("patient.medecin_traitant", "ok"), ("patient.block", "refused")]:  # fmt: skip
        assert expected in actions


def test_own_documents_and_profile_under_the_matrix(dmp_service: DMPService) -> None:
    service = dmp_service
    service.add_care_team(INS, INFIRMIER, actor="test")
    service.add_care_team(INS, PHARMACIEN, actor="test")
    doc = service.deposit_own(PATIENT, INS, PDF, DocumentMeta("DOCPAT01", "Mes directives", format="PDF",
                                                              mime_type="application/pdf"))  # fmt: skip
    assert doc.author_idnat == INS and doc.space == "PATIENT"
    with pytest.raises(Refused, match="patient space"):
        service.deposit_own(PATIENT, INS, PDF, DocumentMeta("11488-4", "Faux CR", format="PDF"))
    # the seed's row: directives anticipées are read by doctors and nurses, not pharmacists
    assert "Mes directives" in _listed(service, TRAITANT)
    assert "Mes directives" in _listed(service, Identity.professional(INFIRMIER))
    assert "Mes directives" not in _listed(service, Identity.professional(PHARMACIEN))

    service.set_profile(PATIENT, INS, "directives_anticipees", "Pas d'acharnement thérapeutique.")
    service.set_profile(PATIENT, INS, "contact_urgence", "Paul DUPONT 0612345678")
    assert service.profile(TRAITANT, INS)["directives_anticipees"].startswith("Pas d'acharnement")
    assert "directives_anticipees" not in service.profile(Identity.professional(PHARMACIEN), INS)
    service.set_profile(PATIENT, INS, "contact_urgence", "")
    assert "contact_urgence" not in service.profile(PATIENT, INS)

    uid = _feed(service)
    with pytest.raises(Refused, match="deletes only"):
        service.delete_own(PATIENT, INS, uid)
    service.delete_own(PATIENT, INS, doc.unique_id)
    assert "Mes directives" not in _listed(service, PATIENT)


def test_notifications_follow_the_seed_and_the_patients_channel(dmp_service: DMPService) -> None:
    service = dmp_service
    notifier = service.notifier
    assert isinstance(notifier, RecordingNotifier)
    uid = _feed(service)
    service.read(TRAITANT, uid)  # care team: the first consultation of the day is told
    service.list_documents(TRAITANT, INS)  # the same professional, same day: not again
    service.list_documents(AUTRE, INS, break_glass=True, reason="urgence vitale")
    service.set_notifications(PATIENT, INS, "email", "marie@example.org")
    service.record_consent(INS, MEDECIN, actor="test")
    service.read(AUTRE, uid)  # outside the care team: every consultation
    kinds = [(e.kind, e.data.get("channel")) for e in notifier.events]
    assert kinds == [
        ("dmp.document.added", "webhook"),
        ("dmp.record.consulted", "webhook"),
        ("dmp.break_glass", "webhook"),
        ("dmp.record.consulted", "email"),
    ]
    assert notifier.events[-1].data["email"] == "marie@example.org"
    with pytest.raises(DMPError, match="valid address"):
        service.set_notifications(PATIENT, INS, "email", "pas-une-adresse")
