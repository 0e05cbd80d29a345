"""Feeding the DMP: new documents and new versions (replacement), all of a package or none."""

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dmp import rules
from dmp.core import ServiceCore
from dmp.models import (
    Document,
    Patient,
)
from dmp.rules import Actor, DocumentFacts
from dmp.types import (
    E_NO_INS,
    E_NOT_AUTHOR,
    E_OTHER,
    E_VERSION,
    FORMATS,
    DMPError,
    DocumentInfo,
    DocumentMeta,
    FeedItem,
    _now,
    _Undo,
)
from mssante.auth.identity import Identity
from mssante.store import blobs


class Feeding(ServiceCore):
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
        self, s: Session, actor: Actor, patient: Patient, replaces: str, structures: frozenset[str]
    ) -> tuple[Document | None, tuple[str, int, str | None] | None]:
        """The version a new document replaces (by unique id or the sender's entryUUID), or why
        it may not replace it: 900 unknown or not the current version, 901 not the author nor
        of the author's organisation."""
        old = s.scalars(
            select(Document)
            .where(Document.patient_id == patient.id)
            .where((Document.unique_id == replaces) | (Document.entry_uuid == replaces))
            .order_by(Document.id.desc())
        ).first()
        if old is None:
            return None, (f"no document {replaces} for this patient to replace", E_VERSION, None)
        colleague = self.same_organisation(actor.id, structures, old)
        facts = DocumentFacts(old.type_code, old.author_idnat, status=old.status)
        managed = rules.may_replace_or_delete(actor, facts, same_organisation=colleague)
        if not managed:
            person_ok = actor.id == old.author_idnat or colleague
            return None, (managed.reason, E_VERSION if person_ok else E_NOT_AUTHOR, old.unique_id)
        return old, None

    def feed_many(
        self,
        identity: Identity,
        ins: str,
        items: Sequence[FeedItem],
        *,
        source: str | None = None,
        structures: frozenset[str] = frozenset(),
        detail: dict[str, Any] | None = None,
    ) -> list[DocumentInfo]:
        """Deposit several documents of one author for one patient: all of them, or none.

        ``structures`` are those of the BAL the request came from (for 901: a replacement by a
        member of the author's organisation); ``detail`` goes to the audit trail (sender, headers).
        """
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
                        old, refusal = self._replaced(s, actor, loaded.row, item.replaces, structures)
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
                        reason=decision.reason, source=source, detail=detail,
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
            self._notify("dmp.document.added", info.ins, document=info.unique_id, actor=info.author_idnat)
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
            entry_uuid=meta.entry_uuid,
            mss_ins=meta.mss_ins,
            mss_codecda=(meta.mss_codecda or "")[:300] or None,
            mss_nil=(meta.mss_nil or "")[:300] or None,
        )
