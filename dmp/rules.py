"""Every access decision of the DMP store, as pure functions of plain facts.

Nothing here reads a database or a clock: the service gathers the facts (who acts, the
patient's consent state, the document's flags, the matrix) and asks. Each answer is a
:class:`Decision` whose ``reason`` is what the trace and the refusal message say.

The rules (seed document, DESIGN.md §5):

* every registered professional may feed, and only for a patient with a *qualified* INS;
* only a document's author may mask, unmask, replace or delete it;
* a professional reads a document only if the patient has not opposed, the professional has
  consent (care team = presumed consent, or consent recorded) or uses break-glass while the
  patient allows emergency access, the matrix allows the profession for the type, and the
  document is not ``MASQUE_PS`` unless the reader is its author;
* the patient sees everything but ``INVISIBLE_PATIENT``; a legal representative everything
  but ``INVISIBLE_REP_LEGAUX`` and what hides from the patient;
* deleted and replaced versions are read by nobody through the normal paths.

The patient's own rights (seed: "contrôle utilisateur"; Mon Espace Santé), exercised by the
patient or, for a minor or protected patient, a legal representative:

* a professional the patient *blocked* (by IdNat_PS/RPPS) opens nothing, break-glass included —
  the patient's refusal is explicit, unlike the mere absence of consent;
* the *médecin traitant* the patient declared has presumed consent, like the care team;
* a document the patient *hid* is invisible to professionals except its author and the
  médecin traitant (as in the DMP); the patient always sees it;
* the patient (or a legal representative) deposits their own documents only in the patient
  space (``PATIENT``: directives anticipées, personne de confiance…), and deletes only those;
  professionals read them under the matrix like any other type.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dmp.codes import Matrix


class Role(StrEnum):
    PROFESSIONAL = "professional"
    PATIENT = "patient"
    LEGAL_REPRESENTATIVE = "legal_representative"


class Consent(StrEnum):
    """On what ground a professional's read was allowed (recorded in the trace)."""

    CARE_TEAM = "care_team"
    RECORDED = "recorded"
    BREAK_GLASS = "break_glass"
    AUTHOR = "author"


# Visibility flags (TRE_A07 / MetaDMPMSS).
MASQUE_PS = "MASQUE_PS"
INVISIBLE_PATIENT = "INVISIBLE_PATIENT"
INVISIBLE_REP_LEGAUX = "INVISIBLE_REP_LEGAUX"
VISIBILITY_FLAGS = (MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX)

# Identity status of an INS: only QUAL (qualified) may be fed.
QUALIFIED = "QUAL"


@dataclass(frozen=True)
class Actor:
    """Who acts. ``id`` is the IdNat_PS (professional, staff local id) or the INS (patient,
    legal representative); ``registered`` says the professional is in the annuaire."""

    role: Role
    id: str
    profession: str | None = None
    registered: bool = False


@dataclass(frozen=True)
class PatientFacts:
    ins: str
    identity_status: str
    opposition: bool = False
    emergency_access: bool = True
    care_team: frozenset[str] = frozenset()
    consents: frozenset[str] = frozenset()
    legal_representatives: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()
    medecin_traitant: str | None = None


@dataclass(frozen=True)
class DocumentFacts:
    type_code: str
    author: str
    flags: frozenset[str] = frozenset()
    status: str = "current"
    hidden_by_patient: bool = False
    space: str | None = None


# The DMP space where only the patient deposits (type codes DOCPAT*).
PATIENT_SPACE = "PATIENT"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    consent: Consent | None = None

    def __bool__(self) -> bool:
        return self.allowed


def _no(reason: str) -> Decision:
    return Decision(False, reason)


def may_feed(actor: Actor, patient: PatientFacts) -> Decision:
    if actor.role is not Role.PROFESSIONAL or not actor.registered:
        return _no("only a professional registered in the annuaire may feed the DMP")
    if patient.identity_status != QUALIFIED:
        return _no(f"the patient's INS is not qualified (status {patient.identity_status})")
    return Decision(True, "registered professional, qualified INS")


def may_manage(actor: Actor, document: DocumentFacts) -> Decision:
    """Mask, unmask, replace, delete: the author only, on a current version."""
    if actor.role is not Role.PROFESSIONAL or actor.id != document.author:
        return _no("only the author of a document may mask, unmask, replace or delete it")
    if document.status != "current":
        return _no(f"the document is {document.status}")
    return Decision(True, "author", Consent.AUTHOR)


def may_replace_or_delete(actor: Actor, document: DocumentFacts, *, same_organisation: bool) -> Decision:
    """Replace or delete (ANS guide, error 901): the author, or a professional of the author's
    organisation; only the current version (900 otherwise)."""
    if actor.role is not Role.PROFESSIONAL:
        return _no("only a professional may replace or delete a document")
    if actor.id != document.author and not same_organisation:
        return _no(f"{actor.id} is neither the author ({document.author}) nor of the author's organisation")
    if document.status != "current":
        return _no(f"the document is {document.status}: only its current version may be replaced or deleted")
    return Decision(
        True, "author" if actor.id == document.author else "author's organisation", Consent.AUTHOR
    )


@dataclass(frozen=True)
class SendingBal:
    """The BAL a deposit arrived from (annuaire facts)."""

    address: str
    type: str
    professional: str | None
    structure: str | None
    responsible: str | None


def may_deposit_for(bal: SendingBal | None, author: str, author_structures: frozenset[str]) -> Decision:
    """May a message from ``bal`` deposit documents authored by ``author``?

    The professional's own BAL (sent by the professional or by a delegate the messaging policy
    already allowed to send from it), or an ORG/APP BAL of the author's structure (a DPI, a
    service's secretariat). Everything else is refused, naming sender and author.
    """
    if bal is None:
        return _no(f"the sending BAL is not in the annuaire; author {author}")
    if bal.type in ("PER", "CAB"):
        if bal.professional == author:
            return Decision(True, f"the author's own BAL {bal.address}")
        return _no(f"the sending BAL {bal.address} belongs to {bal.professional}, not to the author {author}")
    if bal.type in ("ORG", "APP"):
        if bal.structure and bal.structure in author_structures:
            return Decision(True, f"{bal.type} BAL {bal.address} of the author's structure {bal.structure}")
        if bal.responsible == author:
            return Decision(True, f"{bal.type} BAL {bal.address} of which the author is responsible")
        return _no(
            f"the author {author} is not of the structure {bal.structure or '(none)'} "
            f"of the sending {bal.type} BAL {bal.address}"
        )
    return _no(f"a {bal.type} BAL ({bal.address}) may not deposit documents; author {author}")


def record_access(actor: Actor, patient: PatientFacts, *, break_glass: bool = False) -> Decision:
    """May this actor open the patient's record at all (before looking at any document)?"""
    if actor.role is Role.PATIENT:
        if actor.id == patient.ins:
            return Decision(True, "the patient")
        return _no("a patient may only open their own record")
    if actor.role is Role.LEGAL_REPRESENTATIVE:
        if actor.id in patient.legal_representatives:
            return Decision(True, "legal representative")
        return _no("not a legal representative of this patient")
    if actor.id in patient.blocked:
        return _no("the patient has blocked this professional from their record")
    if patient.opposition:
        return _no("the patient has opposed access to the DMP")
    if actor.id == patient.medecin_traitant:
        return Decision(True, "médecin traitant (presumed consent)", Consent.CARE_TEAM)
    if actor.id in patient.care_team:
        return Decision(True, "member of the care team (presumed consent)", Consent.CARE_TEAM)
    if actor.id in patient.consents:
        return Decision(True, "consent recorded", Consent.RECORDED)
    if break_glass:
        if patient.emergency_access:
            return Decision(True, "break-glass (emergency access)", Consent.BREAK_GLASS)
        return _no("the patient has not authorised emergency access (break-glass)")
    return _no("no consent: not in the care team and no consent recorded")


def visible(actor: Actor, patient: PatientFacts, document: DocumentFacts, matrix: Matrix) -> Decision:
    """Given record access, may this actor see this document (in a list or by reading it)?"""
    if document.status != "current":
        return _no(f"the document is {document.status}")
    flags = document.flags
    if actor.role is Role.PATIENT:
        if INVISIBLE_PATIENT in flags:
            return _no("hidden from the patient (INVISIBLE_PATIENT)")
        return Decision(True, "the patient")
    if actor.role is Role.LEGAL_REPRESENTATIVE:
        if INVISIBLE_REP_LEGAUX in flags or INVISIBLE_PATIENT in flags:
            return _no("hidden from legal representatives")
        return Decision(True, "legal representative")
    if MASQUE_PS in flags and actor.id != document.author:
        return _no("masked to professionals (MASQUE_PS)")
    if document.hidden_by_patient and actor.id not in (document.author, patient.medecin_traitant):
        return _no("hidden from professionals by the patient")
    if not matrix.may_read(actor.profession, document.type_code):
        return _no(
            f"the authorisation matrix {matrix.version} does not allow profession "
            f"{actor.profession or 'unknown'} to read type {document.type_code}"
        )
    return Decision(True, "authorisation matrix")


def may_read(
    actor: Actor,
    patient: PatientFacts,
    document: DocumentFacts,
    matrix: Matrix,
    *,
    break_glass: bool = False,
) -> Decision:
    """Record access and document visibility together (one document)."""
    opened = record_access(actor, patient, break_glass=break_glass)
    if not opened:
        return opened
    seen = visible(actor, patient, document, matrix)
    if not seen:
        return seen
    return Decision(True, f"{opened.reason}; {seen.reason}", opened.consent)


def may_read_history(actor: Actor, patient: PatientFacts) -> Decision:
    """The access trace is the patient's (and their legal representatives')."""
    if actor.role in (Role.PATIENT, Role.LEGAL_REPRESENTATIVE):
        return record_access(actor, patient)
    return _no("only the patient and their legal representatives read the access history")


def may_manage_consent(actor: Actor, patient: PatientFacts) -> Decision:
    """Opposition and emergency access are the patient's choices (or a legal representative's)."""
    if actor.role in (Role.PATIENT, Role.LEGAL_REPRESENTATIVE):
        return record_access(actor, patient)
    return _no("only the patient and their legal representatives set opposition and emergency access")


def outside_care_team(actor: Actor, patient: PatientFacts) -> bool:
    """A professional who is neither in the care team nor the médecin traitant."""
    return (
        actor.role is Role.PROFESSIONAL
        and actor.id not in patient.care_team
        and actor.id != patient.medecin_traitant
    )


def may_choose(actor: Actor, patient: PatientFacts) -> Decision:
    """The patient's own choices (hide documents, block professionals, médecin traitant,
    profile, notifications) are the patient's, or a legal representative's."""
    if actor.role in (Role.PATIENT, Role.LEGAL_REPRESENTATIVE):
        return record_access(actor, patient)
    return _no("only the patient and their legal representatives make these choices")


def may_deposit_own(actor: Actor, patient: PatientFacts, space: str) -> Decision:
    """The patient (or a legal representative) deposits in the patient space only."""
    opened = may_choose(actor, patient)
    if not opened:
        return opened
    if space != PATIENT_SPACE:
        return _no(
            "a patient deposits only in the patient space (directives anticipées, personne de confiance…)"
        )
    return Decision(True, f"{opened.reason}: the patient's own document")


def may_delete_own(actor: Actor, patient: PatientFacts, document: DocumentFacts) -> Decision:
    """A patient deletes only a current document of their own space that they deposited."""
    opened = may_choose(actor, patient)
    if not opened:
        return opened
    if document.space != PATIENT_SPACE or document.author not in (patient.ins, actor.id):
        return _no("a patient deletes only the documents they deposited themselves")
    if document.status != "current":
        return _no(f"the document is {document.status}")
    return Decision(True, "the patient's own document")


def notify_read(actor: Actor, patient: PatientFacts, first_today: bool) -> bool:
    """Whether a professional's read is told to the patient: every read outside the care team,
    and a care-team member's first read of the day (one notice per professional and day)."""
    if actor.role is not Role.PROFESSIONAL:
        return False
    if outside_care_team(actor, patient):
        return True
    return first_today
