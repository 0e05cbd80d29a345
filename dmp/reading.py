"""Reading the DMP: patient search, document lists and reads under the rules, the patient's history."""

import hashlib
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from dmp import rules
from dmp.core import ServiceCore
from dmp.models import (
    Document,
    HiddenDocument,
    LegalRepresentative,
    Patient,
    TraceEntry,
)
from dmp.rules import Role
from dmp.types import (
    E_UNKNOWN_PATIENT,
    DMPError,
    DocumentInfo,
    NotFound,
    PatientInfo,
    TraceInfo,
    _ins,
)
from mssante.auth.identity import Identity, IdentityKind
from mssante.sqlfast import utc


class Reading(ServiceCore):
    def list_documents(
        self,
        identity: Identity,
        ins: str,
        *,
        type_code: str | None = None,
        author_profession: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        break_glass: bool = False,
        reason: str | None = None,
        source: str | None = None,
    ) -> list[DocumentInfo]:
        """The current documents of a patient this actor may see, filtered, newest first."""
        with self._patient_for(identity, ins, "list", source) as (s, loaded, actor):
            decision = self._open_record(s, identity, loaded, actor, "list", break_glass, reason, source)
            found: list[DocumentInfo] = []
            if decision:
                hidden = self._hidden_ids(s, loaded.row.id)
                older = aliased(Document)
                query = (
                    select(Document, older.unique_id)
                    .outerjoin(older, older.id == Document.replaces_id)
                    .where(Document.patient_id == loaded.row.id, Document.status == "current")
                )
                if type_code:
                    query = query.where(Document.type_code == type_code)
                if author_profession:
                    query = query.where(Document.author_profession == author_profession)
                if since:
                    query = query.where(Document.submitted_at >= since)
                if until:
                    query = query.where(Document.submitted_at < until)
                for row, replaces in s.execute(
                    query.order_by(Document.submitted_at.desc(), Document.id.desc())
                ):
                    info = self._info(row, loaded.row.ins, replaces, row.id in hidden)
                    if rules.visible(actor, loaded.info.facts(), info.facts(), self.codes.matrix):
                        found.append(info)
                self._trace(
                    s, identity, actor, "list", patient=loaded.row,
                    reason=reason if break_glass else decision.reason, source=source,
                    detail={"count": len(found), "matrix": self.codes.matrix.version},
                )  # fmt: skip
        if not decision:
            self._refuse(identity, actor, "list", decision.reason, ins=ins, source=source)
        self._after_access(actor, loaded.info, decision, "list")
        return found

    def read(
        self,
        identity: Identity,
        unique_id: str,
        *,
        break_glass: bool = False,
        reason: str | None = None,
        source: str | None = None,
    ) -> tuple[DocumentInfo, bytes]:
        """One document and its content, if the rules allow this actor to read it."""
        ins = self._patient_of_document(unique_id)
        with self._patient_for(identity, ins, "read", source) as (s, loaded, actor):
            row = s.scalars(select(Document).where(Document.unique_id == unique_id)).one()
            info = self._info(row, ins, self._replaces(s, row), s.get(HiddenDocument, row.id) is not None)
            decision = self._open_record(s, identity, loaded, actor, "read", break_glass, reason, source)
            if decision:
                seen = rules.visible(actor, loaded.info.facts(), info.facts(), self.codes.matrix)
                if not seen:
                    decision = seen
            if decision:
                content = self.reader.read(s, row.blob_id)
                if hashlib.sha256(content).hexdigest() != row.sha256:
                    raise DMPError(f"document {unique_id} failed its integrity check")
                self._trace(
                    s, identity, actor, "read", patient=loaded.row, document=row,
                    reason=reason if break_glass else decision.reason, source=source,
                    detail={"matrix": self.codes.matrix.version},
                )  # fmt: skip
        if not decision:
            self._refuse(
                identity, actor, "read", decision.reason, ins=ins, unique_id=unique_id, source=source
            )
        self._after_access(actor, loaded.info, decision, "read")
        return info, content

    def represented(self, representative_ins: str) -> list[PatientInfo]:
        """The patients (minors, protected adults) this person is a legal representative of."""
        with Session(self.engine) as s:
            found = list(
                s.scalars(
                    select(Patient.ins)
                    .join(LegalRepresentative, LegalRepresentative.patient_id == Patient.id)
                    .where(LegalRepresentative.ins == representative_ins)
                    .order_by(Patient.ins)
                )
            )
            loaded = [self._load(s, ins) for ins in found]
        return [x.info for x in loaded if x is not None]

    def document_titles(self, ins: str) -> dict[str, str]:
        """Unique id → title of every version of a record (to name documents in the patient's
        own history; no content, no decision)."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(Document.unique_id, Document.title)
                .join(Patient, Patient.id == Document.patient_id)
                .where(Patient.ins == _ins(ins))
            ).all()
        return {uid: title for uid, title in rows}

    def find_patients(
        self,
        identity: Identity,
        *,
        birth_name: str,
        given_name: str = "",
        birth_date: date | None = None,
        source: str | None = None,
    ) -> list[PatientInfo]:
        """A professional looks patients up by their traits (birth name, a given name, birth
        date); each patient found is traced as a search, so the patient sees who looked."""
        if not birth_name.strip():
            raise DMPError("a search by traits needs at least the birth name")
        with Session(self.engine) as s:
            query = select(Patient.ins).where(func.upper(Patient.birth_name) == birth_name.strip().upper())
            if birth_date is not None:
                query = query.where(Patient.birth_date == birth_date)
            candidates = list(s.scalars(query.limit(50)))
        found = []
        for ins in candidates:
            with Session(self.engine) as s:
                loaded = self._load(s, ins)
            if loaded is not None and _traits_match(loaded.info, birth_name, given_name, birth_date):
                found.append(self.search_patient(identity, ins, source=source))
        return found

    # -- history ----------------------------------------------------------------------------------

    def search_patient(self, identity: Identity, ins: str, *, source: str | None = None) -> PatientInfo:
        """A professional looks a patient up by INS (traits only; traced)."""
        with self._patient_for(identity, ins, "search", source) as (s, loaded, actor):
            allowed = actor.role is Role.PROFESSIONAL and (
                actor.registered or identity.kind is IdentityKind.STAFF
            )
            if allowed:
                self._trace(s, identity, actor, "search", patient=loaded.row, source=source)
        if not allowed:
            self._refuse(
                identity, actor, "search", "only professionals search patients", ins=ins, source=source
            )
        return loaded.info

    # -- history ----------------------------------------------------------------------------------
    def history(self, identity: Identity, ins: str) -> list[TraceInfo]:
        """The patient's (or legal representative's) view of every action on the record."""
        with Session(self.engine) as s:
            loaded = self._load(s, _ins(ins))
        if loaded is None:
            raise NotFound(f"no patient with INS {ins} in the DMP", E_UNKNOWN_PATIENT)
        actor = self.actor(identity, loaded.info)
        decision = rules.may_read_history(actor, loaded.info.facts())
        if not decision:
            self._refuse(identity, actor, "history", decision.reason, ins=ins)
        return self.trace_of(ins)

    def trace_of(self, ins: str) -> list[TraceInfo]:
        """Every trace entry of a patient, oldest first (operator use, and :meth:`history`)."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(TraceEntry, Document.unique_id)
                .join(Patient, Patient.id == TraceEntry.patient_id)
                .outerjoin(Document, Document.id == TraceEntry.document_id)
                .where(Patient.ins == _ins(ins))
                .order_by(TraceEntry.id)
            ).all()
        return [
            TraceInfo(utc(t.at), t.action, t.outcome, t.actor, t.role, t.profession, t.reason, uid)
            for t, uid in rows
        ]


def _traits_match(info: PatientInfo, birth_name: str, given: str, birth_date: date | None) -> bool:
    t = info.traits
    return (
        t.birth_name.casefold() == birth_name.strip().casefold()
        and (not given or given.strip().casefold() in t.given_names.casefold().split())
        and (birth_date is None or t.birth_date == birth_date)
    )
