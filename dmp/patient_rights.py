"""The patient's own rights in the DMP (seed: "contrôle utilisateur"; Mon Espace Santé): hide a
document from professionals, block a professional, declare a médecin traitant, choose how to be
notified, write profile entries and deposit their own documents — by the patient, or for a minor
by a legal representative. Each is decided by :mod:`dmp.rules` and traced like every other
action (a refusal in its own transaction)."""

import re
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dmp import rules
from dmp.feeding import Feeding
from dmp.models import BlockedProfessional, Document, HiddenDocument, Patient, PatientChoices, ProfileEntry
from dmp.rules import DocumentFacts, Role
from dmp.types import DMPError, DocumentInfo, DocumentMeta, FeedItem, PatientInfo, _now
from mssante.auth.identity import Identity, InvalidIdentity, check_idnat
from mssante.store import blobs

NOTIFY_CHANNELS = ("webhook", "email")
# Profile entry → the JDV_J07 type it reads as under the matrix (DOCPAT01/02: directives
# anticipées, personne de confiance; the emergency contact is read like the trusted person).
PROFILE_KINDS = {
    "directives_anticipees": "DOCPAT01",
    "personne_confiance": "DOCPAT02",
    "contact_urgence": "DOCPAT02",
}
MAX_PROFILE_CHARS = 4000
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class PatientRights(Feeding):
    def _choose(
        self,
        identity: Identity,
        ins: str,
        action: str,
        reason: str,
        change: Any,
        *,
        source: str | None = None,
        document: str | None = None,
    ) -> PatientInfo:
        """One choice of the patient (or a legal representative): decided, done and traced in
        one transaction; a refusal is traced in its own."""
        with self._patient_for(identity, ins, action, source) as (s, loaded, actor):
            decision = rules.may_choose(actor, loaded.info.facts())
            row: Document | None = None
            if decision and document is not None:
                row = s.scalars(
                    select(Document).where(
                        Document.unique_id == document, Document.patient_id == loaded.row.id
                    )
                ).first()
                if row is None or row.status != "current":
                    decision = rules.Decision(False, f"no current document {document} in this record")
            if decision:
                problem = change(s, loaded.row, row)
                if problem:
                    decision = rules.Decision(False, problem)
            if decision:
                loaded.row.updated_at = _now()
                s.flush()
                self._trace(
                    s, identity, actor, action, patient=loaded.row, document=row, reason=reason, source=source
                )
                fresh = self._load(s, loaded.row.ins)
        if not decision:
            self._refuse(identity, actor, action, decision.reason, ins=ins, unique_id=document, source=source)
        assert fresh is not None
        return fresh.info

    def hide(
        self, identity: Identity, ins: str, unique_id: str, *, hidden: bool, source: str | None = None
    ) -> PatientInfo:
        """The patient hides a document from professionals (author and médecin traitant excepted)."""

        def change(s: Session, _patient: Patient, row: Document | None) -> str | None:
            assert row is not None
            found = s.get(HiddenDocument, row.id)
            if hidden and found is None:
                s.add(HiddenDocument(document_id=row.id, hidden_at=_now(), hidden_by=identity.principal))
            elif not hidden and found is not None:
                s.delete(found)
            return None

        action = "patient.hide" if hidden else "patient.unhide"
        return self._choose(identity, ins, action, unique_id, change, source=source, document=unique_id)

    def block(
        self, identity: Identity, ins: str, idnat: str, *, blocked: bool, source: str | None = None
    ) -> PatientInfo:
        """The patient blocks (or unblocks) a professional, named by IdNat_PS (8 + RPPS)."""
        try:
            idnat = check_idnat(idnat)
        except InvalidIdentity as exc:
            raise DMPError(str(exc)) from None

        def change(s: Session, patient: Patient, _row: Document | None) -> str | None:
            found = s.get(BlockedProfessional, (patient.id, idnat))
            if blocked and found is None:
                choices = s.get(PatientChoices, patient.id)
                if choices is not None and choices.medecin_traitant == idnat:
                    return "the médecin traitant cannot be blocked: declare another one first"
                s.add(BlockedProfessional(patient_id=patient.id, idnat=idnat, blocked_at=_now()))
            elif not blocked and found is not None:
                s.delete(found)
            return None

        action = "patient.block" if blocked else "patient.unblock"
        return self._choose(identity, ins, action, idnat, change, source=source)

    def _choices(self, s: Session, patient: Patient) -> PatientChoices:
        found = s.get(PatientChoices, patient.id)
        if found is None:
            found = PatientChoices(patient_id=patient.id, notify_channel="webhook", updated_at=_now())
            s.add(found)
        return found

    def set_medecin_traitant(
        self, identity: Identity, ins: str, idnat: str | None, *, source: str | None = None
    ) -> PatientInfo:
        """The patient declares their médecin traitant (a registered doctor), or none."""
        if idnat:
            try:
                idnat = check_idnat(idnat)
            except InvalidIdentity as exc:
                raise DMPError(str(exc)) from None
            pro = self.annuaire.professional(idnat)
            if pro is None or pro.profession_code != "10":
                raise DMPError(f"{idnat} is not a doctor (profession 10) registered in the annuaire")

        def change(s: Session, patient: Patient, _row: Document | None) -> str | None:
            if idnat and s.get(BlockedProfessional, (patient.id, idnat)) is not None:
                return "a blocked professional cannot be the médecin traitant: unblock them first"
            choices = self._choices(s, patient)
            choices.medecin_traitant, choices.updated_at = idnat or None, _now()
            return None

        return self._choose(identity, ins, "patient.medecin_traitant", idnat or "none", change, source=source)

    def set_notifications(
        self, identity: Identity, ins: str, channel: str, email: str | None, *, source: str | None = None
    ) -> PatientInfo:
        """How the patient wants to be told: ``webhook`` (the app) or ``email`` (a personal address)."""
        if channel not in NOTIFY_CHANNELS:
            raise DMPError(f"channel must be one of {', '.join(NOTIFY_CHANNELS)}")
        email = (email or "").strip() or None
        if channel == "email" and (email is None or not _EMAIL.match(email)):
            raise DMPError("an e-mail channel needs a valid address")

        def change(s: Session, patient: Patient, _row: Document | None) -> str | None:
            choices = self._choices(s, patient)
            choices.notify_channel, choices.notify_email, choices.updated_at = channel, email, _now()
            return None

        return self._choose(identity, ins, "patient.notifications", channel, change, source=source)

    def set_profile(
        self, identity: Identity, ins: str, kind: str, value: str, *, source: str | None = None
    ) -> PatientInfo:
        """One profile entry (contact d'urgence, personne de confiance, directives anticipées);
        an empty value removes it."""
        if kind not in PROFILE_KINDS:
            raise DMPError(f"profile entry must be one of {', '.join(PROFILE_KINDS)}")
        value = value.strip()
        if len(value) > MAX_PROFILE_CHARS:
            raise DMPError(f"a profile entry holds at most {MAX_PROFILE_CHARS} characters")

        def change(s: Session, patient: Patient, _row: Document | None) -> str | None:
            found = s.get(ProfileEntry, (patient.id, kind))
            if not value:
                if found is not None:
                    s.delete(found)
            elif found is None:
                s.add(ProfileEntry(patient_id=patient.id, kind=kind, value=value, updated_at=_now()))
            else:
                found.value, found.updated_at = value, _now()
            return None

        return self._choose(identity, ins, "patient.profile", kind, change, source=source)

    def profile(self, identity: Identity, ins: str, *, source: str | None = None) -> dict[str, str]:
        """The profile entries: the patient's own view, or a professional's under the matrix
        (an entry reads like a document of its type: ``PROFILE_KINDS`` gives the type code)."""
        with self._patient_for(identity, ins, "profile", source) as (s, loaded, actor):
            facts = loaded.info.facts()
            decision = rules.record_access(actor, facts)
            entries: dict[str, str] = {}
            if decision:
                for entry in s.scalars(select(ProfileEntry).where(ProfileEntry.patient_id == loaded.row.id)):
                    doc = DocumentFacts(PROFILE_KINDS[entry.kind], loaded.row.ins, space=rules.PATIENT_SPACE)
                    if rules.visible(actor, facts, doc, self.codes.matrix):
                        entries[entry.kind] = entry.value
                if actor.role is Role.PROFESSIONAL:
                    self._trace(s, identity, actor, "profile", patient=loaded.row, source=source)
        if not decision:
            self._refuse(identity, actor, "profile", decision.reason, ins=ins, source=source)
        return entries

    def deposit_own(
        self, identity: Identity, ins: str, content: bytes, meta: DocumentMeta, *, source: str | None = None
    ) -> DocumentInfo:
        """The patient (or a legal representative) deposits a document of the patient space."""
        self._check_meta(meta)
        space = self.codes.space_of(meta.type_code)
        blob = blobs.seal(self.keyring, content, None, self.settings.storage.chunk_size)
        with self._patient_for(identity, ins, "deposit", source) as (s, loaded, actor):
            decision = rules.may_deposit_own(actor, loaded.info.facts(), space)
            if decision:
                now = _now()
                item = FeedItem(content, replace(meta, flags=frozenset()))
                unique_id = f"2.25.{uuid.uuid4().int}"
                row = self._new_document(item, unique_id, loaded.row, actor, blobs.put(s, blob), source, now)
                s.add(row)
                s.flush()
                self._trace(
                    s, identity, actor, "deposit", patient=loaded.row, document=row,
                    reason=decision.reason, source=source,
                )  # fmt: skip
                info = self._info(row, loaded.row.ins)
        if not decision:
            self._refuse(identity, actor, "deposit", decision.reason, ins=ins, source=source)
        return info

    def delete_own(self, identity: Identity, ins: str, unique_id: str, *, source: str | None = None) -> None:
        """The patient deletes a document they deposited (the row stays, ``deleted``, for the trace)."""
        with self._patient_for(identity, ins, "delete", source) as (s, loaded, actor):
            row = s.scalars(
                select(Document).where(Document.unique_id == unique_id, Document.patient_id == loaded.row.id)
            ).first()
            if row is None:
                decision = rules.Decision(False, f"no document {unique_id} in this record")
            else:
                decision = rules.may_delete_own(actor, loaded.info.facts(), self._info(row, ins).facts())
            if decision and row is not None:
                row.status, row.changed_at = "deleted", _now()
                self._trace(s, identity, actor, "delete", patient=loaded.row, document=row, source=source)
        if not decision:
            self._refuse(identity, actor, "delete", decision.reason, ins=ins, source=source)
