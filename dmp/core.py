"""What every part of the DMP service shares: engines, settings, the annuaire, the facts of a patient, the
rules' view of an identity, and the tracing of every action (allowed or refused) in the patient's trace
and the audit trail."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, time
from typing import Any, NoReturn, Self

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from annuaire.identifiers import structure_number
from annuaire.lookup import Annuaire
from dmp import codes as dmp_codes
from dmp import rules
from dmp.models import (
    BlockedProfessional,
    CareTeamMember,
    Document,
    HiddenDocument,
    LegalRepresentative,
    Patient,
    PatientChoices,
    RecordedConsent,
    TraceEntry,
)
from dmp.rules import Actor, Consent, Role
from dmp.types import (
    E_OTHER,
    E_UNKNOWN_PATIENT,
    DMPError,
    DocumentInfo,
    NotFound,
    PatientInfo,
    Refused,
    Traits,
    _flags,
    _ins,
    _Loaded,
    _now,
)
from mssante import audit
from mssante.auth.identity import Identity, IdentityKind
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import transaction
from mssante.notify import Event, Notifier
from mssante.sqlfast import utc
from mssante.store import blobs


class ServiceCore:
    """State and helpers of :class:`dmp.service.DMPService`; the operations live in mixins."""

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
    def from_runtime(cls, runtime: Any) -> Self:
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

    def structures_of(self, idnat: str) -> frozenset[str]:
        """The structures (bare numbers) of a professional's BALs in the annuaire: where they practise."""
        return frozenset(
            structure_number(b.structure_identifier)
            for b in self.annuaire.bals_of_professional(idnat)
            if b.structure_identifier
        )

    def same_organisation(self, idnat: str, extra: frozenset[str], document: Document) -> bool:
        """Is ``idnat`` (or the sending BAL's structures ``extra``) of the organisation of the
        author of ``document`` (the author's BAL structures, or the institution the document
        declared)? ANS guide, error 901."""
        theirs = set(self.structures_of(document.author_idnat))
        if document.author_structure:
            theirs.add(structure_number(document.author_structure))
        return bool((self.structures_of(idnat) | extra) & theirs)

    def document_ref(self, ins: str, ref: str) -> str | None:
        """The unique id of a patient's document named by its unique id or its sender's entryUUID."""
        with Session(self.engine) as s:
            found: str | None = s.scalars(
                select(Document.unique_id)
                .join(Patient, Patient.id == Document.patient_id)
                .where(Patient.ins == ins, (Document.unique_id == ref) | (Document.entry_uuid == ref))
                .order_by(Document.id.desc())
            ).first()
        return found

    def patient_of(self, unique_id: str) -> str | None:
        """The INS of the record a document belongs to (no content, no decision: a routing aid)."""
        with Session(self.engine) as s:
            found: str | None = s.scalars(
                select(Patient.ins)
                .join(Document, Document.patient_id == Patient.id)
                .where(Document.unique_id == unique_id)
            ).first()
        return found

    def _patient_of_document(self, unique_id: str) -> str:
        """:meth:`patient_of`, or :class:`NotFound` for a document the DMP does not hold."""
        ins = self.patient_of(unique_id)
        if ins is None:
            raise NotFound(f"no document {unique_id} in the DMP")
        return ins

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
        detail: dict[str, Any] | None = None,
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
                outcome="refused", reason=message, source=source, detail={"code": code, **(detail or {})},
            )  # fmt: skip
        raise error(message, code)

    def refuse_deposit(
        self, sender: Identity, reason: str, *, ins: str, source: str | None, detail: dict[str, Any]
    ) -> NoReturn:
        """Trace a deposit refused before any document is touched (the sender may not deposit
        for this author: the trace names both) and raise :class:`Refused` (906)."""
        self._refuse(sender, None, "feed", reason, ins=ins, source=source, detail=detail)

    def _notify(self, kind: str, ins: str, **data: str) -> None:
        """Tell the patient, on the channel they chose (read at the time of the notice)."""
        event = Event(kind, self.patient_bal(ins), {**data, **notice_channel(self.engine, ins)})
        self.notifier.notify(event)

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
        start = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
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

    @staticmethod
    def _hidden_ids(s: Session, patient_id: int) -> set[int]:
        """The documents of a record the patient hid from professionals."""
        return set(
            s.scalars(
                select(HiddenDocument.document_id)
                .join(Document, Document.id == HiddenDocument.document_id)
                .where(Document.patient_id == patient_id)
            )
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
