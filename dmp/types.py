"""Values of the DMP service: integration error codes, errors, and the records its API takes and returns."""

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from dmp import rules
from dmp.models import (
    Document,
    Patient,
)
from dmp.rules import DocumentFacts, PatientFacts
from mssante.auth.identity import InvalidIdentity, check_ins

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
    # From an XDM deposit: the sender's entryUUID, and the message's X-MSS-INS, X-MSS-CODECDA
    # and X-MSS-NIL as declared (recorded even when they disagree with the package).
    entry_uuid: str | None = None
    mss_ins: str | None = None
    mss_codecda: str | None = None
    mss_nil: str | None = None


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
