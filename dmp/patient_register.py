"""Operator and patient actions on a patient: identity (INS, traits, status), opposition, emergency access,
care team, consents, legal representatives."""

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dmp import rules
from dmp.core import ServiceCore
from dmp.models import (
    INS_OIDS,
    PRODUCTION_INS_OIDS,
    CareTeamMember,
    LegalRepresentative,
    Patient,
    RecordedConsent,
)
from dmp.rules import Actor
from dmp.types import (
    E_NO_INS,
    E_TRAITS,
    E_UNKNOWN_PATIENT,
    IDENTITY_STATUSES,
    DMPError,
    NotFound,
    PatientInfo,
    Traits,
    _ins,
    _now,
)
from mssante.auth.identity import Identity
from mssante.db import transaction


class PatientRegister(ServiceCore):
    # -- patients (operator actions) -----------------------------------------------------------
    def add_patient(
        self,
        *,
        ins: str,
        traits: Traits,
        identity_status: str = rules.QUALIFIED,
        ins_oid: str = INS_OIDS[0],
        actor: str,
    ) -> PatientInfo:
        """Create or update a patient (INS, OID, traits, identity status). The INS-NIR test and
        demo OIDs only where ``dmp.test_ins_oids`` allows them (never in production)."""
        ins = _ins(ins)
        accepted = INS_OIDS if self.settings.dmp.test_ins_oids else PRODUCTION_INS_OIDS
        if ins_oid not in accepted:
            raise DMPError(f"{ins_oid} is not an accepted INS OID here ({', '.join(accepted)})", E_NO_INS)
        if identity_status not in IDENTITY_STATUSES:
            raise DMPError(
                f"identity status {identity_status!r} is not one of {', '.join(IDENTITY_STATUSES)}"
            )
        missing = traits.missing()
        if missing:
            raise DMPError(f"incomplete INS traits: {', '.join(missing)}", E_TRAITS)
        with transaction(self.writer) as s:
            row = s.scalars(select(Patient).where(Patient.ins == ins)).first()
            now = _now()
            values = dict(
                ins_oid=ins_oid,
                birth_name=traits.birth_name,
                first_given_name=traits.first_given_name,
                given_names=traits.given_names,
                birth_date=traits.birth_date,
                sex=traits.sex,
                birthplace=traits.birthplace,
                identity_status=identity_status,
                updated_at=now,
            )
            if row is None:
                row = Patient(ins=ins, created_at=now, opposition=False, emergency_access=True, **values)
                s.add(row)
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            s.flush()
            self._trace(
                s, actor, None, "patient.update", patient=row, reason=f"identity status {identity_status}"
            )
            loaded = self._load(s, ins)
        assert loaded is not None
        return loaded.info

    def patient(self, ins: str) -> PatientInfo:
        """Operator view of a patient (CLI); professionals use :meth:`search_patient`."""
        with Session(self.engine) as s:
            loaded = self._load(s, _ins(ins))
        if loaded is None:
            raise NotFound(f"no patient with INS {ins} in the DMP", E_UNKNOWN_PATIENT)
        return loaded.info

    def _change_patient(
        self, ins: str, actor: str | Identity, action: str, reason: str, change: Any
    ) -> PatientInfo:
        """Change a patient as the operator (``actor`` is a str) or as the patient or a legal
        representative (an :class:`Identity`, checked by the rules and traced either way)."""
        who: Actor | None = None
        with transaction(self.writer) as s:
            loaded = self._load(s, _ins(ins))
            if loaded is None:
                raise NotFound(f"no patient with INS {ins} in the DMP", E_UNKNOWN_PATIENT)
            decision = rules.Decision(True, reason)
            if isinstance(actor, Identity):
                who = self.actor(actor, loaded.info)
                decision = rules.may_manage_consent(who, loaded.info.facts())
            if decision:
                change(s, loaded.row)
                loaded.row.updated_at = _now()
                s.flush()
                self._trace(s, actor, who, action, patient=loaded.row, reason=reason)
                fresh = self._load(s, loaded.row.ins)
        if not decision:
            self._refuse(actor, who, action, decision.reason, ins=ins)
        assert fresh is not None
        return fresh.info

    def set_opposition(self, ins: str, opposed: bool, *, actor: str | Identity) -> PatientInfo:
        return self._change_patient(
            ins, actor, "patient.opposition", "opposed" if opposed else "opposition lifted",
            lambda _s, row: setattr(row, "opposition", opposed),
        )  # fmt: skip

    def set_emergency_access(self, ins: str, allowed: bool, *, actor: str | Identity) -> PatientInfo:
        return self._change_patient(
            ins, actor, "patient.emergency_access", "allowed" if allowed else "refused",
            lambda _s, row: setattr(row, "emergency_access", allowed),
        )  # fmt: skip

    def add_care_team(self, ins: str, idnat: str, *, actor: str) -> PatientInfo:
        def change(s: Session, row: Patient) -> None:
            if s.get(CareTeamMember, (row.id, idnat)) is None:
                s.add(CareTeamMember(patient_id=row.id, idnat=idnat, added_at=_now(), added_by=actor))

        return self._change_patient(ins, actor, "patient.care_team.add", idnat, change)

    def remove_care_team(self, ins: str, idnat: str, *, actor: str) -> PatientInfo:
        def change(s: Session, row: Patient) -> None:
            s.execute(
                delete(CareTeamMember).where(
                    CareTeamMember.patient_id == row.id, CareTeamMember.idnat == idnat
                )
            )

        return self._change_patient(ins, actor, "patient.care_team.remove", idnat, change)

    def record_consent(self, ins: str, idnat: str, *, actor: str) -> PatientInfo:
        def change(s: Session, row: Patient) -> None:
            if s.get(RecordedConsent, (row.id, idnat)) is None:
                s.add(RecordedConsent(patient_id=row.id, idnat=idnat, recorded_at=_now(), recorded_by=actor))

        return self._change_patient(ins, actor, "patient.consent", idnat, change)

    def add_legal_representative(self, ins: str, representative_ins: str, *, actor: str) -> PatientInfo:
        rep = _ins(representative_ins)

        def change(s: Session, row: Patient) -> None:
            if rep == row.ins:
                raise DMPError("a patient is not their own legal representative")
            if s.get(LegalRepresentative, (row.id, rep)) is None:
                s.add(LegalRepresentative(patient_id=row.id, ins=rep, added_at=_now()))

        return self._change_patient(ins, actor, "patient.legal_representative.add", rep, change)
