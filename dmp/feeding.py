"""Feeding the DMP: new documents and new versions (replacement), all of a package or none."""

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime

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
