"""Tables of the DMP store: patients and their consent state, documents, access trace.

A document's content is a sealed blob of the message store (``blobs``), so it is encrypted at
rest exactly like message bodies and stored once. Versions are rows: a replacement is a new
row whose ``replaces_id`` names the old one, which turns ``replaced``; deletion only changes
the status, so the trace keeps pointing at something.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

BigId = BigInteger().with_variant(Integer, "sqlite")

# INS OIDs (Interop'Santé FR Core).
OID_INS_NIR = "1.2.250.1.213.1.4.8"
OID_INS_NIA = "1.2.250.1.213.1.4.9"
OID_INS_NIR_TEST = "1.2.250.1.213.1.4.10"
OID_INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS = (OID_INS_NIR, OID_INS_NIA, OID_INS_NIR_TEST, OID_INS_NIR_DEMO)
# Production accepts only the real ones; the test and demo OIDs need ``dmp.test_ins_oids``.
PRODUCTION_INS_OIDS = (OID_INS_NIR, OID_INS_NIA)
INS_OID_NAMES = {
    OID_INS_NIR: "INS-NIR",
    OID_INS_NIA: "INS-NIA",
    OID_INS_NIR_TEST: "INS-NIR test",
    OID_INS_NIR_DEMO: "INS-NIR demo",
}


class Patient(Base):
    __tablename__ = "dmp_patients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ins: Mapped[str] = mapped_column(String(15), unique=True)
    ins_oid: Mapped[str] = mapped_column(String(64))
    birth_name: Mapped[str] = mapped_column(String(200))
    first_given_name: Mapped[str] = mapped_column(String(200))
    given_names: Mapped[str] = mapped_column(String(400))
    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1))
    birthplace: Mapped[str | None] = mapped_column(String(5))
    identity_status: Mapped[str] = mapped_column(String(8))
    opposition: Mapped[bool] = mapped_column(Boolean, default=False)
    emergency_access: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LegalRepresentative(Base):
    """A person (identified by their own INS) who acts for a minor or protected patient."""

    __tablename__ = "dmp_legal_representatives"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    ins: Mapped[str] = mapped_column(String(15), primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CareTeamMember(Base):
    """A professional of the care team: consent is presumed."""

    __tablename__ = "dmp_care_team"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    idnat: Mapped[str] = mapped_column(String(32), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    added_by: Mapped[str] = mapped_column(String(320))


class RecordedConsent(Base):
    """Consent the patient gave to one professional outside the care team."""

    __tablename__ = "dmp_consents"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    idnat: Mapped[str] = mapped_column(String(32), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_by: Mapped[str] = mapped_column(String(320))


class Document(Base):
    __tablename__ = "dmp_documents"
    __table_args__ = (UniqueConstraint("unique_id", name="uq_dmp_documents_unique_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    unique_id: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[int] = mapped_column(ForeignKey("dmp_patients.id"), index=True)
    type_code: Mapped[str] = mapped_column(String(32), index=True)
    space: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(300))
    author_idnat: Mapped[str] = mapped_column(String(32), index=True)
    author_profession: Mapped[str | None] = mapped_column(String(8))
    author_structure: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    format: Mapped[str] = mapped_column(String(16))
    mime_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    masque_ps: Mapped[bool] = mapped_column(Boolean, default=False)
    invisible_patient: Mapped[bool] = mapped_column(Boolean, default=False)
    invisible_rep_legaux: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="current")
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("dmp_documents.id"))
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"))
    source: Mapped[str | None] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The entryUUID the sender gave the document in its XDM package (an RPLC or deletion may
    # name it), and the declarative headers of the message that deposited it.
    entry_uuid: Mapped[str | None] = mapped_column(String(128), index=True)
    mss_ins: Mapped[str | None] = mapped_column(String(8))
    mss_codecda: Mapped[str | None] = mapped_column(String(300))
    mss_nil: Mapped[str | None] = mapped_column(String(300))


class TraceEntry(Base):
    """One action on a patient's record, as the patient reads it in their history."""

    __tablename__ = "dmp_trace"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("dmp_patients.id"), index=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("dmp_documents.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(32))
    profession: Mapped[str | None] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(Text)


# -- the patient's own choices (Mon Espace Santé "contrôle utilisateur") ------------------------


class PatientChoices(Base):
    """What the patient chose: their médecin traitant and how they want to be told of actions."""

    __tablename__ = "dmp_patient_choices"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    medecin_traitant: Mapped[str | None] = mapped_column(String(32))
    notify_channel: Mapped[str] = mapped_column(String(16), default="webhook")
    notify_email: Mapped[str | None] = mapped_column(String(320))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlockedProfessional(Base):
    """A professional the patient has barred from their record (break-glass included)."""

    __tablename__ = "dmp_blocked"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    idnat: Mapped[str] = mapped_column(String(32), primary_key=True)
    blocked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HiddenDocument(Base):
    """A document the patient hid from professionals (its author and the médecin traitant still
    see it). Kept apart from the author's visibility flags: the two never override each other."""

    __tablename__ = "dmp_hidden"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_documents.id", ondelete="CASCADE"), primary_key=True
    )
    hidden_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    hidden_by: Mapped[str] = mapped_column(String(320))


class ProfileEntry(Base):
    """One entry of the patient's medical profile: emergency contact, trusted person,
    advance directives (free text the patient writes; professionals read it under the matrix)."""

    __tablename__ = "dmp_profile"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("dmp_patients.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
