"""The DMP service: the one API that the CLI, the HTTP routes and the deposit from messages
call. Each call takes the acting :class:`~mssante.auth.identity.Identity`, gathers the facts,
asks :mod:`dmp.rules`, and writes what happened — allowed or refused — to the patient's trace
(``dmp_trace``, which the patient reads) and to the product audit trail, in the transaction
of the action itself. Refusals are traced in their own transaction before the error is raised,
so that a refused attempt is never lost with a rolled-back action.

Notifications (``mssante.notify``) go to the patient's BAL after commit, as the seed lists
them: on each feed, on break-glass, on each consultation by a professional outside the care
team, and on a care-team member's first consultation of the day (one notice per professional
and day). Each carries the channel the patient chose (``webhook``: the Mon Espace Santé app;
``email``: a message to the personal address they gave), for the gateway that delivers it.

The patient's own rights (hide a document, block a professional, declare a médecin traitant,
deposit their own documents and profile entries, choose the notification channel) are
methods here too, decided by :mod:`dmp.rules` and traced like every other action.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from typing import Any, NoReturn

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, aliased

from annuaire.lookup import Annuaire
from dmp import codes as dmp_codes
from dmp import rules
from dmp.models import (
    INS_OIDS,
    BlockedProfessional,
    CareTeamMember,
    Document,
    HiddenDocument,
    LegalRepresentative,
    Patient,
    PatientChoices,
    ProfileEntry,
    RecordedConsent,
    TraceEntry,
)
from dmp.rules import Actor, Consent, DocumentFacts, PatientFacts, Role
from mssante import audit
from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity, check_idnat, check_ins
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import transaction
from mssante.notify import Event, Notifier
from mssante.sqlfast import utc
from mssante.store import blobs

# ANS integration error codes (guide "transmission LPS doc CDA courriel MSS").
E_VERSION, E_NOT_AUTHOR, E_UNKNOWN_PATIENT, E_NO_INS, E_INS_MISMATCH, E_TRAITS, E_OTHER = (
    900, 901, 902, 903, 904, 905, 906,
)  # fmt: skip
FORMATS = ("CDA_R2", "PDF", "OTHER")
IDENTITY_STATUSES = ("PROV", "VALI", "QUAL", "DOUB", "DESA")


class DMPError(Exception):
    """A refused or impossible DMP operation, with its ANS integration code."""

    http_status = 400

    def __init__(self, message: str, code: int = E_OTHER) -> None:
        super().__init__(message)
        self.code = code


class Refused(DMPError):
    http_status = 403


class NotFound(DMPError):
    http_status = 404


@dataclass(frozen=True)
class Traits:
    """INS traits: birth name, first given name, all given names, birth date, sex, birthplace."""

    birth_name: str
    first_given_name: str
    given_names: str
    birth_date: date
    sex: str
    birthplace: str | None = None

    def missing(self) -> list[str]:
        """Names of the traits that are empty (an INS with incomplete traits is refused: 905)."""
        out = [n for n in ("birth_name", "first_given_name", "given_names") if not getattr(self, n).strip()]
        if self.sex not in ("M", "F", "I"):
            out.append("sex")
        return out


@dataclass(frozen=True)
class PatientInfo:
    ins: str
    ins_oid: str
    traits: Traits
    identity_status: str
    opposition: bool
    emergency_access: bool
    care_team: tuple[str, ...]
    consents: tuple[str, ...]
    legal_representatives: tuple[str, ...]
    blocked: tuple[str, ...] = ()
    medecin_traitant: str | None = None
    notify_channel: str = "webhook"
    notify_email: str | None = None

    def facts(self) -> PatientFacts:
        return PatientFacts(
            self.ins,
            self.identity_status,
            self.opposition,
            self.emergency_access,
            frozenset(self.care_team),
            frozenset(self.consents),
            frozenset(self.legal_representatives),
            frozenset(self.blocked),
            self.medecin_traitant,
        )


@dataclass(frozen=True)
class DocumentMeta:
    """What the author declares about a document when feeding it."""

    type_code: str
    title: str
    format: str = "CDA_R2"
    mime_type: str = "text/xml"
    created_at: datetime | None = None
    unique_id: str | None = None
    author_structure: str | None = None
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FeedItem:
    """One document to deposit: its content, what the author declares, what it replaces."""

    content: bytes
    meta: DocumentMeta
    replaces: str | None = None


@dataclass(frozen=True)
class DocumentInfo:
    unique_id: str
    ins: str
    type_code: str
    space: str
    title: str
    author_idnat: str
    author_profession: str | None
    author_structure: str | None
    created_at: datetime
    submitted_at: datetime
    format: str
    mime_type: str
    size: int
    sha256: str
    flags: tuple[str, ...]
    status: str
    replaces: str | None = None
    hidden_by_patient: bool = False

    def facts(self) -> DocumentFacts:
        return DocumentFacts(
            self.type_code,
            self.author_idnat,
            frozenset(self.flags),
            self.status,
            self.hidden_by_patient,
            self.space,
        )

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["created_at"] = self.created_at.isoformat()
        out["submitted_at"] = self.submitted_at.isoformat()
        out["flags"] = list(self.flags)
        return out


@dataclass(frozen=True)
class TraceInfo:
    at: datetime
    action: str
    outcome: str
    actor: str
    role: str
    profession: str | None
    reason: str | None
    document: str | None

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["at"] = self.at.isoformat()
        return out


class _Undo(Exception):
    """Raised inside a transaction to roll it back (the refusal is traced afterwards)."""


@dataclass
class _Loaded:
    """A patient row with its consent state, read in one session."""

    row: Patient
    info: PatientInfo


def _now() -> datetime:
    return datetime.now(UTC)


def _flags(row: Document) -> tuple[str, ...]:
    values = (row.masque_ps, row.invisible_patient, row.invisible_rep_legaux)
    return tuple(f for f, on in zip(rules.VISIBILITY_FLAGS, values, strict=True) if on)


def _ins(value: str) -> str:
    try:
        return check_ins(value)
    except InvalidIdentity as exc:
        raise DMPError(str(exc), E_NO_INS) from None


class DMPService:
    """One per process (cheap to share); all methods are synchronous (call them off the loop)."""

    def __init__(
        self,
        engine: Engine,
        writer_engine: Engine,
        keyring: KeyRing,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        annuaire: Annuaire | None = None,
        codes: dmp_codes.DMPCodes | None = None,
    ) -> None:
        self.engine, self.writer, self.keyring, self.settings = engine, writer_engine, keyring, settings
        self.notifier = notifier or Notifier(settings.notify)
        self.annuaire = annuaire or Annuaire(engine)
        self.codes = codes or (
            dmp_codes.load(settings.dmp.config_dir) if settings.dmp.config_dir else dmp_codes.default()
        )
        self.reader = blobs.BlobReader(engine, keyring)

    @classmethod
    def from_runtime(cls, runtime: Any) -> DMPService:
        """The service of a ``mssante.runtime.Runtime``, created once and kept in its extras."""
        found = runtime.extras.get("dmp")
        if found is None:
            found = cls(
                runtime.engine,
                runtime.writer_engine,
                runtime.keyring,
                runtime.settings,
                notifier=Notifier.of_runtime(runtime),
                annuaire=getattr(runtime, "annuaire", None),
            )
            runtime.extras["dmp"] = found
        return found  # type: ignore[no-any-return]

    def patient_bal(self, ins: str) -> str:
        return f"{ins}@{self.settings.server.patient_domain}"

    # -- facts ----------------------------------------------------------------------------------
    def _load(self, session: Session, ins: str) -> _Loaded | None:
        row = session.scalars(select(Patient).where(Patient.ins == ins)).first()
        if row is None:
            return None

        def ids(column: Any, owner: Any) -> tuple[str, ...]:
            return tuple(sorted(session.scalars(select(column).where(owner == row.id))))

        info = PatientInfo(
            ins=row.ins,
            ins_oid=row.ins_oid,
            traits=Traits(
                row.birth_name, row.first_given_name, row.given_names, row.birth_date, row.sex, row.birthplace
            ),
            identity_status=row.identity_status,
            opposition=row.opposition,
            emergency_access=row.emergency_access,
            care_team=ids(CareTeamMember.idnat, CareTeamMember.patient_id),
            consents=ids(RecordedConsent.idnat, RecordedConsent.patient_id),
            legal_representatives=ids(LegalRepresentative.ins, LegalRepresentative.patient_id),
            blocked=ids(BlockedProfessional.idnat, BlockedProfessional.patient_id),
        )
        choices = session.get(PatientChoices, row.id)
        if choices is not None:
            info = replace(
                info,
                medecin_traitant=choices.medecin_traitant,
                notify_channel=choices.notify_channel,
                notify_email=choices.notify_email,
            )
        return _Loaded(row, info)

    def actor(self, identity: Identity, patient: PatientInfo | None = None) -> Actor:
        """The rules' view of an identity (profession from the annuaire; staff as configured)."""
        if identity.kind is IdentityKind.PROFESSIONAL:
            pro = self.annuaire.professional(identity.id)
            return Actor(
                Role.PROFESSIONAL, identity.id, pro.profession_code if pro else None, pro is not None
            )
        if identity.kind is IdentityKind.STAFF:
            return Actor(Role.PROFESSIONAL, identity.id, self.settings.dmp.staff_profession, False)
        if identity.kind is IdentityKind.PATIENT:
            if (
                patient is not None
                and identity.id != patient.ins
                and identity.id in patient.legal_representatives
            ):
                return Actor(Role.LEGAL_REPRESENTATIVE, identity.id)
            return Actor(Role.PATIENT, identity.id)
        return Actor(Role.PROFESSIONAL, identity.id, None, False)  # an application reads nothing itself

    # -- tracing --------------------------------------------------------------------------------
    def _trace(
        self,
        session: Session,
        identity: Identity | str,
        actor: Actor | None,
        action: str,
        *,
        patient: Patient | None = None,
        document: Document | None = None,
        outcome: str = "ok",
        reason: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        principal = identity.principal if isinstance(identity, Identity) else identity
        role = actor.role.value if actor else "operator"
        session.add(
            TraceEntry(
                patient_id=patient.id if patient else None,
                document_id=document.id if document else None,
                at=_now(),
                action=action,
                outcome=outcome,
                actor=principal,
                role=role,
                profession=actor.profession if actor else None,
                reason=reason,
            )
        )
        session.flush()
        audit.append(
            session,
            audit.AuditEvent(
                actor=principal,
                action=f"dmp.{action}",
                outcome=outcome,
                bal=self.patient_bal(patient.ins) if patient else None,
                object=document.unique_id if document else (patient.ins if patient else None),
                source=source,
                detail={"role": role, "reason": reason, **(detail or {})},
            ),
        )

    def _refuse(
        self,
        identity: Identity | str,
        actor: Actor | None,
        action: str,
        message: str,
        *,
        code: int = E_OTHER,
        ins: str | None = None,
        unique_id: str | None = None,
        source: str | None = None,
        error: type[DMPError] = Refused,
    ) -> NoReturn:
        with transaction(self.writer) as s:
            patient = s.scalars(select(Patient).where(Patient.ins == ins)).first() if ins else None
            document = (
                s.scalars(select(Document).where(Document.unique_id == unique_id)).first()
                if unique_id
                else None
            )
            self._trace(
                s, identity, actor, action, patient=patient, document=document,
                outcome="refused", reason=message, source=source, detail={"code": code},
            )  # fmt: skip
        raise error(message, code)

    def _notify(self, kind: str, ins: str, **data: str) -> None:
        """Tell the patient, on the channel they chose (read at the time of the notice)."""
        event = Event(kind, self.patient_bal(ins), {**data, **notice_channel(self.engine, ins)})
        self.notifier.notify(event)

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
        """Create or update a patient (INS, OID, traits, identity status)."""
        ins = _ins(ins)
        if ins_oid not in INS_OIDS:
            raise DMPError(f"{ins_oid} is not an INS OID ({', '.join(INS_OIDS)})", E_NO_INS)
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

    # -- documents ------------------------------------------------------------------------------
    @contextmanager
    def _patient_for(
        self, identity: Identity, ins: str, action: str, source: str | None
    ) -> Iterator[tuple[Session, _Loaded, Actor]]:
        """Open a write transaction on a known patient, or trace the refusal (902)."""
        ins = _ins(ins)
        with transaction(self.writer) as s:
            loaded = self._load(s, ins)
            if loaded is not None:
                yield s, loaded, self.actor(identity, loaded.info)
                return
        self._refuse(
            identity, self.actor(identity), action, f"no patient with INS {ins} in the DMP",
            code=E_UNKNOWN_PATIENT, source=source, error=NotFound,
        )  # fmt: skip

    def feed(
        self,
        identity: Identity,
        ins: str,
        content: bytes,
        meta: DocumentMeta,
        *,
        replaces: str | None = None,
        source: str | None = None,
    ) -> DocumentInfo:
        """Deposit a document (or a new version of ``replaces``) for a patient."""
        return self.feed_many(identity, ins, [FeedItem(content, meta, replaces)], source=source)[0]

    def _check_meta(self, meta: DocumentMeta) -> None:
        if meta.type_code not in self.codes.type_codes:
            raise DMPError(f"type code {meta.type_code!r} is not in JDV_J07 (config/dmp/type_codes.csv)")
        if meta.format not in FORMATS:
            raise DMPError(f"format {meta.format!r} is not one of {', '.join(FORMATS)}")
        unknown = meta.flags - set(rules.VISIBILITY_FLAGS)
        if unknown:
            raise DMPError(f"unknown visibility code(s) {', '.join(sorted(unknown))}")

    def _replaced(
        self, s: Session, actor: Actor, patient: Patient, replaces: str
    ) -> tuple[Document | None, tuple[str, int, str | None] | None]:
        """The version a new document replaces, or why it may not replace it (900/901)."""
        old = s.scalars(select(Document).where(Document.unique_id == replaces)).first()
        if old is None or old.patient_id != patient.id:
            return None, (f"no document {replaces} for this patient to replace", E_VERSION, None)
        managed = rules.may_manage(actor, DocumentFacts(old.type_code, old.author_idnat, status=old.status))
        if not managed:
            code = E_NOT_AUTHOR if old.status == "current" else E_VERSION
            return None, (managed.reason, code, old.unique_id)
        return old, None

    def feed_many(
        self, identity: Identity, ins: str, items: Sequence[FeedItem], *, source: str | None = None
    ) -> list[DocumentInfo]:
        """Deposit several documents of one author for one patient: all of them, or none."""
        for item in items:
            self._check_meta(item.meta)
        chunk = self.settings.storage.chunk_size
        sealed = [blobs.seal(self.keyring, item.content, None, chunk) for item in items]
        action = "replace" if any(item.replaces for item in items) else "feed"
        refusal: tuple[str, int, str | None] | None = None
        infos: list[DocumentInfo] = []
        try:
            with self._patient_for(identity, ins, action, source) as (s, loaded, actor):
                decision = rules.may_feed(actor, loaded.info.facts())
                if not decision:
                    code = E_NO_INS if loaded.info.identity_status != rules.QUALIFIED else E_OTHER
                    refusal = (decision.reason, code, None)
                now = _now()
                for item, blob in zip(items, sealed, strict=True):
                    if refusal is not None:
                        break
                    old: Document | None = None
                    if item.replaces:
                        old, refusal = self._replaced(s, actor, loaded.row, item.replaces)
                        if refusal is not None:
                            break
                    unique_id = item.meta.unique_id or f"2.25.{uuid.uuid4().int}"
                    if s.scalars(select(Document.id).where(Document.unique_id == unique_id)).first():
                        refusal = (
                            f"a document with unique id {unique_id} is already in the DMP",
                            E_VERSION,
                            None,
                        )
                        break
                    row = self._new_document(
                        item, unique_id, loaded.row, actor, blobs.put(s, blob), source, now
                    )
                    row.replaces_id = old.id if old else None
                    if old is not None:
                        old.status, old.changed_at = "replaced", now
                    s.add(row)
                    s.flush()
                    self._trace(
                        s, identity, actor, "replace" if old else "feed", patient=loaded.row, document=row,
                        reason=decision.reason, source=source,
                    )  # fmt: skip
                    infos.append(self._info(row, loaded.row.ins, old.unique_id if old else None))
                if refusal is not None:
                    raise _Undo  # none of the package, not even its blobs
        except _Undo:
            pass
        if refusal is not None:
            self._refuse(
                identity,
                actor,
                action,
                refusal[0],
                code=refusal[1],
                ins=ins,
                unique_id=refusal[2],
                source=source,
            )
        for info in infos:
            self._notify("dmp.document.added", info.ins, document=info.unique_id)
        return infos

    def _new_document(
        self,
        item: FeedItem,
        unique_id: str,
        patient: Patient,
        actor: Actor,
        blob_id: int,
        source: str | None,
        now: datetime,
    ) -> Document:
        meta = item.meta
        return Document(
            unique_id=unique_id,
            patient_id=patient.id,
            type_code=meta.type_code,
            space=self.codes.space_of(meta.type_code),
            title=meta.title[:300],
            author_idnat=actor.id,
            author_profession=actor.profession,
            author_structure=meta.author_structure,
            created_at=meta.created_at or now,
            submitted_at=now,
            format=meta.format,
            mime_type=meta.mime_type,
            size=len(item.content),
            sha256=hashlib.sha256(item.content).hexdigest(),
            masque_ps=rules.MASQUE_PS in meta.flags,
            invisible_patient=rules.INVISIBLE_PATIENT in meta.flags,
            invisible_rep_legaux=rules.INVISIBLE_REP_LEGAUX in meta.flags,
            status="current",
            blob_id=blob_id,
            source=source,
            changed_at=now,
        )

    @staticmethod
    def _replaces(s: Session, row: Document) -> str | None:
        """The unique id of the version this one replaced (the replacement chain, one step back)."""
        if row.replaces_id is None:
            return None
        return s.scalars(select(Document.unique_id).where(Document.id == row.replaces_id)).first()

    def _info(
        self, row: Document, ins: str, replaces: str | None = None, hidden: bool = False
    ) -> DocumentInfo:
        return DocumentInfo(
            unique_id=row.unique_id,
            ins=ins,
            type_code=row.type_code,
            space=row.space,
            title=row.title,
            author_idnat=row.author_idnat,
            author_profession=row.author_profession,
            author_structure=row.author_structure,
            created_at=utc(row.created_at),
            submitted_at=utc(row.submitted_at),
            format=row.format,
            mime_type=row.mime_type,
            size=row.size,
            sha256=row.sha256,
            flags=_flags(row),
            status=row.status,
            replaces=replaces,
            hidden_by_patient=hidden,
        )

    def _open_record(
        self,
        s: Session,
        identity: Identity,
        loaded: _Loaded,
        actor: Actor,
        action: str,
        break_glass: bool,
        reason: str | None,
        source: str | None,
    ) -> rules.Decision:
        if break_glass and not (reason and reason.strip()):
            raise DMPError("break-glass needs a reason")
        decision = rules.record_access(actor, loaded.info.facts(), break_glass=break_glass)
        if decision and decision.consent is Consent.BREAK_GLASS:
            self._trace(s, identity, actor, "break_glass", patient=loaded.row, reason=reason, source=source)
        return decision

    def _after_access(self, actor: Actor, info: PatientInfo, decision: rules.Decision, what: str) -> None:
        if decision.consent is Consent.BREAK_GLASS:
            self._notify("dmp.break_glass", info.ins, actor_role=actor.role.value, actor=actor.id)
        elif rules.notify_read(actor, info.facts(), self._first_today(actor, info.ins)):
            team = "outside" if rules.outside_care_team(actor, info.facts()) else "care_team"
            self._notify(
                "dmp.record.consulted", info.ins, actor_role=actor.role.value, actor=actor.id,
                what=what, team=team,
            )  # fmt: skip

    def _first_today(self, actor: Actor, ins: str) -> bool:
        """Whether the consultation just traced is this professional's first of the day (UTC)."""
        start = datetime.combine(_now().date(), time(0), tzinfo=UTC)
        with Session(self.engine) as s:
            count = len(
                s.scalars(
                    select(TraceEntry.id)
                    .join(Patient, Patient.id == TraceEntry.patient_id)
                    .where(
                        Patient.ins == ins,
                        TraceEntry.actor.like(f"%:{actor.id}"),
                        TraceEntry.action.in_(("list", "read")),
                        TraceEntry.outcome == "ok",
                        TraceEntry.at >= start,
                    )
                    .limit(2)
                ).all()
            )
        return count <= 1

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
        with Session(self.engine) as s:
            ins = s.scalars(
                select(Patient.ins)
                .join(Document, Document.patient_id == Patient.id)
                .where(Document.unique_id == unique_id)
            ).first()
        if ins is None:
            raise NotFound(f"no document {unique_id} in the DMP")
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

    def _manage(
        self,
        identity: Identity,
        unique_id: str,
        action: str,
        change: Any,
        reason: str | None,
        source: str | None,
    ) -> DocumentInfo:
        with Session(self.engine) as s:
            ins = s.scalars(
                select(Patient.ins)
                .join(Document, Document.patient_id == Patient.id)
                .where(Document.unique_id == unique_id)
            ).first()
        if ins is None:
            raise NotFound(f"no document {unique_id} in the DMP")
        with self._patient_for(identity, ins, action, source) as (s, loaded, actor):
            row = s.scalars(select(Document).where(Document.unique_id == unique_id)).one()
            decision = rules.may_manage(actor, self._info(row, ins).facts())
            if decision:
                change(row)
                row.changed_at = _now()
                s.flush()
                self._trace(
                    s, identity, actor, action, patient=loaded.row, document=row, reason=reason, source=source
                )
                info = self._info(row, ins, self._replaces(s, row))
        if not decision:
            code = E_NOT_AUTHOR if actor.id != row.author_idnat else E_VERSION
            self._refuse(
                identity,
                actor,
                action,
                decision.reason,
                code=code,
                ins=ins,
                unique_id=unique_id,
                source=source,
            )
        return info

    def set_visibility(
        self,
        identity: Identity,
        unique_id: str,
        flags: Iterable[str],
        *,
        on: bool,
        reason: str | None = None,
        source: str | None = None,
    ) -> DocumentInfo:
        """Mask (``on``) or unmask a document to professionals, the patient or legal representatives."""
        wanted = set(flags)
        unknown = wanted - set(rules.VISIBILITY_FLAGS)
        if unknown or not wanted:
            raise DMPError(f"visibility codes must be among {', '.join(rules.VISIBILITY_FLAGS)}")
        columns = {rules.MASQUE_PS: "masque_ps", rules.INVISIBLE_PATIENT: "invisible_patient",
                   rules.INVISIBLE_REP_LEGAUX: "invisible_rep_legaux"}  # fmt: skip

        def change(row: Document) -> None:
            for flag in wanted:
                setattr(row, columns[flag], on)

        action = "mask" if on else "unmask"
        return self._manage(identity, unique_id, action, change, reason or ",".join(sorted(wanted)), source)

    def delete(
        self, identity: Identity, unique_id: str, *, reason: str | None = None, source: str | None = None
    ) -> DocumentInfo:
        """Delete a document (its author only). The row stays, with status ``deleted``, for the trace."""
        return self._manage(
            identity, unique_id, "delete", lambda row: setattr(row, "status", "deleted"), reason, source
        )

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

    def patient_of(self, unique_id: str) -> str | None:
        """The INS of the record a document belongs to (no content, no decision: a routing aid)."""
        with Session(self.engine) as s:
            return s.scalars(
                select(Patient.ins)
                .join(Document, Document.patient_id == Patient.id)
                .where(Document.unique_id == unique_id)
            ).first()

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

    # -- the patient's own rights -----------------------------------------------------------------
    @staticmethod
    def _hidden_ids(s: Session, patient_id: int) -> set[int]:
        return set(
            s.scalars(
                select(HiddenDocument.document_id)
                .join(Document, Document.id == HiddenDocument.document_id)
                .where(Document.patient_id == patient_id)
            )
        )

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


def _traits_match(info: PatientInfo, birth_name: str, given: str, birth_date: date | None) -> bool:
    t = info.traits
    return (
        t.birth_name.casefold() == birth_name.strip().casefold()
        and (not given or given.strip().casefold() in t.given_names.casefold().split())
        and (birth_date is None or t.birth_date == birth_date)
    )


def notice_channel(engine: Engine, ins: str) -> dict[str, str]:
    """The fields that route a notice to the patient's chosen channel: ``channel`` (``webhook``
    by default, or ``email``) and, for e-mail, the personal ``email`` address."""
    with Session(engine) as s:
        found = s.execute(
            select(PatientChoices.notify_channel, PatientChoices.notify_email)
            .join(Patient, Patient.id == PatientChoices.patient_id)
            .where(Patient.ins == ins)
        ).first()
    channel, email = found if found is not None else ("webhook", None)
    return {"channel": channel, **({"email": email} if channel == "email" and email else {})}
