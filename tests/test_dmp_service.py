"""The DMP service against a real database: feeding, reading under the rules, masking,
deleting, replacing, break-glass, refusals traced, history, notifications, encryption at rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from dmp.service import DMPError, DMPService, DocumentMeta, NotFound, Refused
from dmp.testing import (
    INFIRMIER,
    INS,
    MEDECIN,
    MEDECIN_TRAITANT,
    PHARMACIEN,
    REP_INS,
    TRAITS,
    UNKNOWN_INS,
    RecordingNotifier,
)
from mssante.audit import AuditRecord
from mssante.auth.identity import Identity

CDA = b"<ClinicalDocument xmlns='urn:hl7-org:v3'><title>CR</title>SECRET-CONTENT</ClinicalDocument>"
TRAITANT = Identity.professional(MEDECIN_TRAITANT)
AUTRE_MEDECIN = Identity.professional(MEDECIN)
PATIENT = Identity.patient(INS)
REPRESENTANT = Identity.patient(REP_INS)


def _feed(service: DMPService, type_code: str = "34112-3", **kw: object) -> str:
    meta = DocumentMeta(type_code=type_code, title="CR d'hospitalisation", **kw)  # type: ignore[arg-type]
    return service.feed(TRAITANT, INS, CDA, meta, source="test").unique_id


def _events(service: DMPService) -> list[str]:
    notifier = service.notifier
    assert isinstance(notifier, RecordingNotifier)
    return notifier.kinds()


def test_feed_then_read_by_care_team_and_patient(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    info, content = dmp_service.read(TRAITANT, uid)
    assert content == CDA and info.space == "COMPTES_RENDUS" and info.author_profession == "10"
    assert dmp_service.read(PATIENT, uid)[1] == CDA
    assert [d.unique_id for d in dmp_service.list_documents(TRAITANT, INS)] == [uid]
    # the patient is told of the feed and of the care team's first consultation of the day
    # (one notice per professional and day: the later list is not notified); their own reads never
    assert _events(dmp_service) == ["dmp.document.added", "dmp.record.consulted"]
    assert dmp_service.notifier.events[1].data["team"] == "care_team"  # type: ignore[attr-defined]
    assert dmp_service.notifier.events[0].recipient == f"{INS}@patient.mssante.fr"  # type: ignore[attr-defined]
    assert "SECRET" not in dmp_service.notifier.events[0].body().decode()


def test_content_is_encrypted_at_rest(dmp_service: DMPService) -> None:
    _feed(dmp_service)
    with dmp_service.engine.connect() as conn:
        chunks = b"".join(bytes(r[0]) for r in conn.execute(text("SELECT data FROM blob_chunks")))
    assert b"SECRET-CONTENT" not in chunks


def test_outside_care_team_needs_consent_or_break_glass(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    with pytest.raises(Refused, match="no consent"):
        dmp_service.read(AUTRE_MEDECIN, uid)
    with pytest.raises(DMPError, match="needs a reason"):
        dmp_service.read(AUTRE_MEDECIN, uid, break_glass=True)
    info, _ = dmp_service.read(
        AUTRE_MEDECIN, uid, break_glass=True, reason="urgence vitale, patient inconscient"
    )
    assert info.unique_id == uid
    dmp_service.record_consent(INS, MEDECIN, actor="test")
    dmp_service.read(AUTRE_MEDECIN, uid)
    assert _events(dmp_service) == ["dmp.document.added", "dmp.break_glass", "dmp.record.consulted"]
    history = dmp_service.history(PATIENT, INS)
    actions = [(h.action, h.outcome) for h in history if h.actor == AUTRE_MEDECIN.principal]
    assert actions == [("read", "refused"), ("break_glass", "ok"), ("read", "ok"), ("read", "ok")]
    glass = next(h for h in history if h.action == "break_glass")
    assert glass.reason == "urgence vitale, patient inconscient" and glass.role == "professional"


def test_break_glass_refused_when_emergency_access_not_allowed(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    dmp_service.set_emergency_access(INS, False, actor="test")
    with pytest.raises(Refused, match="emergency access"):
        dmp_service.read(AUTRE_MEDECIN, uid, break_glass=True, reason="urgence")


def test_opposition_blocks_professionals_not_the_patient(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    dmp_service.set_opposition(INS, True, actor="test")
    with pytest.raises(Refused, match="opposed"):
        dmp_service.list_documents(TRAITANT, INS)
    assert dmp_service.read(PATIENT, uid)[1] == CDA


def test_matrix_and_masking(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    for idnat in (PHARMACIEN, INFIRMIER):
        dmp_service.add_care_team(INS, idnat, actor="test")
    with pytest.raises(Refused, match="matrix"):
        dmp_service.read(Identity.professional(PHARMACIEN), uid)  # 21 does not read 34112-3
    dmp_service.read(Identity.professional(INFIRMIER), uid)
    dmp_service.set_visibility(TRAITANT, uid, ["MASQUE_PS"], on=True)
    with pytest.raises(Refused, match="MASQUE_PS"):
        dmp_service.read(Identity.professional(INFIRMIER), uid)
    dmp_service.read(TRAITANT, uid)  # the author still reads it
    with pytest.raises(Refused, match="only the author"):
        dmp_service.set_visibility(Identity.professional(INFIRMIER), uid, ["MASQUE_PS"], on=False)
    dmp_service.set_visibility(TRAITANT, uid, ["MASQUE_PS"], on=False)
    dmp_service.read(Identity.professional(INFIRMIER), uid)


def test_patient_and_representative_visibility(dmp_service: DMPService) -> None:
    hidden = _feed(dmp_service, flags=frozenset({"INVISIBLE_PATIENT"}))
    rep_hidden = _feed(dmp_service, flags=frozenset({"INVISIBLE_REP_LEGAUX"}))
    plain = _feed(dmp_service)
    assert {d.unique_id for d in dmp_service.list_documents(PATIENT, INS)} == {rep_hidden, plain}
    assert {d.unique_id for d in dmp_service.list_documents(REPRESENTANT, INS)} == {plain}
    with pytest.raises(Refused, match="INVISIBLE_PATIENT"):
        dmp_service.read(PATIENT, hidden)
    assert len(dmp_service.list_documents(TRAITANT, INS)) == 3
    with pytest.raises(Refused):
        dmp_service.list_documents(Identity.patient(UNKNOWN_INS), INS)


def test_delete_and_replace(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    meta = DocumentMeta(type_code="34112-3", title="CR v2")
    with pytest.raises(Refused) as refused:
        dmp_service.feed(Identity.professional(INFIRMIER), INS, b"<v2/>", meta, replaces=uid)
    assert refused.value.code == 901
    new = dmp_service.feed(TRAITANT, INS, b"<v2/>", meta, replaces=uid)
    assert new.replaces == uid
    [listed] = dmp_service.list_documents(TRAITANT, INS)
    assert listed.unique_id == new.unique_id and listed.replaces == uid
    assert dmp_service.read(PATIENT, new.unique_id)[0].replaces == uid
    with pytest.raises(Refused) as again:
        dmp_service.feed(TRAITANT, INS, b"<v3/>", meta, replaces=uid)
    assert again.value.code == 900  # replacing an old version
    with pytest.raises(Refused) as not_author:
        dmp_service.delete(AUTRE_MEDECIN, new.unique_id)
    assert not_author.value.code == 901  # neither the author nor of the author's CH
    dmp_service.delete(TRAITANT, new.unique_id, reason="erreur de patient")
    assert dmp_service.list_documents(TRAITANT, INS) == []
    with pytest.raises(Refused, match="deleted"):
        dmp_service.read(PATIENT, new.unique_id)


def test_filters(dmp_service: DMPService) -> None:
    hosp = _feed(dmp_service)
    vacc = _feed(dmp_service, type_code="11369-6")
    assert [d.unique_id for d in dmp_service.list_documents(TRAITANT, INS, type_code="11369-6")] == [vacc]
    assert {d.unique_id for d in dmp_service.list_documents(TRAITANT, INS, author_profession="10")} == {
        hosp,
        vacc,
    }
    assert dmp_service.list_documents(TRAITANT, INS, author_profession="60") == []
    later = datetime.now(UTC) + timedelta(hours=1)
    assert dmp_service.list_documents(TRAITANT, INS, since=later) == []
    assert len(dmp_service.list_documents(TRAITANT, INS, until=later)) == 2


def test_feed_refusals_are_traced(dmp_service: DMPService) -> None:
    meta = DocumentMeta(type_code="34112-3", title="CR")
    with pytest.raises(NotFound) as unknown:
        dmp_service.feed(TRAITANT, UNKNOWN_INS, CDA, meta)
    assert unknown.value.code == 902
    dmp_service.add_patient(ins=INS, traits=TRAITS, identity_status="VALI", actor="test")
    with pytest.raises(Refused) as not_qualified:
        dmp_service.feed(TRAITANT, INS, CDA, meta)
    assert not_qualified.value.code == 903
    with pytest.raises(Refused, match="registered"):
        dmp_service.feed(Identity.professional("810999999999"), INS, CDA, meta)
    with pytest.raises(DMPError, match="JDV_J07"):
        dmp_service.feed(TRAITANT, INS, CDA, DocumentMeta(type_code="0000-0", title="?"))
    refused = [h for h in dmp_service.trace_of(INS) if h.outcome == "refused"]
    assert [h.action for h in refused] == ["feed", "feed"]
    with dmp_service.engine.connect() as conn:
        audited = conn.execute(
            text("SELECT action, outcome FROM audit_log WHERE action = 'dmp.feed' ORDER BY seq")
        ).all()
    assert [tuple(r) for r in audited] == [("dmp.feed", "refused")] * 3
    assert AuditRecord.__tablename__ == "audit_log"


def test_history_is_for_the_patient_only(dmp_service: DMPService) -> None:
    _feed(dmp_service)
    with pytest.raises(Refused):
        dmp_service.history(TRAITANT, INS)
    entries = dmp_service.history(REPRESENTANT, INS)
    assert any(e.action == "feed" and e.actor == TRAITANT.principal for e in entries)


def test_staff_reads_nothing(dmp_service: DMPService) -> None:
    uid = _feed(dmp_service)
    secretary = Identity.staff("secretariat.cardio")
    dmp_service.record_consent(INS, secretary.id, actor="test")
    with pytest.raises(Refused, match="profession 54"):
        dmp_service.read(secretary, uid)
    with pytest.raises(Refused, match="registered"):
        dmp_service.feed(secretary, INS, CDA, DocumentMeta(type_code="34112-3", title="CR"))


def test_test_and_demo_ins_oids_only_where_allowed(dmp_service: DMPService) -> None:
    from dmp.models import OID_INS_NIR_DEMO, OID_INS_NIR_TEST
    from dmp.testing import TRAITS

    for oid in (OID_INS_NIR_TEST, OID_INS_NIR_DEMO):
        with pytest.raises(DMPError) as refused:
            dmp_service.add_patient(ins=UNKNOWN_INS, traits=TRAITS, ins_oid=oid, actor="test")
        assert refused.value.code == 903
    dmp_service.settings.dmp.test_ins_oids = True
    assert dmp_service.add_patient(
        ins=UNKNOWN_INS, traits=TRAITS, ins_oid=OID_INS_NIR_DEMO, actor="t"
    ).ins_oid == (OID_INS_NIR_DEMO)
