"""The author's hand on a document: masking, unmasking and deletion."""

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from dmp import rules
from dmp.core import ServiceCore
from dmp.models import (
    Document,
)
from dmp.types import E_NOT_AUTHOR, E_VERSION, DMPError, DocumentInfo, _now
from mssante.auth.identity import Identity


class Managing(ServiceCore):
    def _manage(
        self,
        identity: Identity,
        unique_id: str,
        action: str,
        change: Any,
        reason: str | None,
        source: str | None,
        structures: frozenset[str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> DocumentInfo:
        """Change a document; ``structures`` not None means a replace/delete rule (author or the
        author's organisation, 900/901), None the author-only rule of masking."""
        ins = self._patient_of_document(unique_id)
        with self._patient_for(identity, ins, action, source) as (s, loaded, actor):
            row = s.scalars(select(Document).where(Document.unique_id == unique_id)).one()
            facts = self._info(row, ins).facts()
            colleague = structures is not None and self.same_organisation(actor.id, structures, row)
            if structures is None:
                decision = rules.may_manage(actor, facts)
            else:
                decision = rules.may_replace_or_delete(actor, facts, same_organisation=colleague)
            if decision:
                change(row)
                row.changed_at = _now()
                s.flush()
                self._trace(
                    s, identity, actor, action, patient=loaded.row, document=row, reason=reason,
                    source=source, detail=detail,
                )  # fmt: skip
                info = self._info(row, ins, self._replaces(s, row))
        if not decision:
            code = E_NOT_AUTHOR if actor.id != row.author_idnat and not colleague else E_VERSION
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
        self,
        identity: Identity,
        unique_id: str,
        *,
        reason: str | None = None,
        source: str | None = None,
        structures: frozenset[str] = frozenset(),
        detail: dict[str, Any] | None = None,
    ) -> DocumentInfo:
        """Delete the current version of a document: its author or a professional of the author's
        organisation (``structures``: those of the sending BAL, if any). The row stays, with
        status ``deleted``, for the trace."""
        return self._manage(
            identity, unique_id, "delete", lambda row: setattr(row, "status", "deleted"), reason, source,
            structures, detail,
        )  # fmt: skip
