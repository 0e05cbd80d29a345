"""dmp: patients, documents, consent, access trace

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dmp_patients",
        sa.Column("id", BigId, nullable=False),
        sa.Column("ins", sa.String(length=15), nullable=False),
        sa.Column("ins_oid", sa.String(length=64), nullable=False),
        sa.Column("birth_name", sa.String(length=200), nullable=False),
        sa.Column("first_given_name", sa.String(length=200), nullable=False),
        sa.Column("given_names", sa.String(length=400), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("sex", sa.String(length=1), nullable=False),
        sa.Column("birthplace", sa.String(length=5), nullable=True),
        sa.Column("identity_status", sa.String(length=8), nullable=False),
        sa.Column("opposition", sa.Boolean(), nullable=False),
        sa.Column("emergency_access", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dmp_patients")),
        sa.UniqueConstraint("ins", name=op.f("uq_dmp_patients_ins")),
    )
    op.create_table(
        "dmp_care_team",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("idnat", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["dmp_patients.id"],
            name=op.f("fk_dmp_care_team_patient_id_dmp_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("patient_id", "idnat", name=op.f("pk_dmp_care_team")),
    )
    op.create_table(
        "dmp_consents",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("idnat", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["dmp_patients.id"],
            name=op.f("fk_dmp_consents_patient_id_dmp_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("patient_id", "idnat", name=op.f("pk_dmp_consents")),
    )
    op.create_table(
        "dmp_documents",
        sa.Column("id", BigId, nullable=False),
        sa.Column("unique_id", sa.String(length=128), nullable=False),
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("type_code", sa.String(length=32), nullable=False),
        sa.Column("space", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("author_idnat", sa.String(length=32), nullable=False),
        sa.Column("author_profession", sa.String(length=8), nullable=True),
        sa.Column("author_structure", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("mime_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("masque_ps", sa.Boolean(), nullable=False),
        sa.Column("invisible_patient", sa.Boolean(), nullable=False),
        sa.Column("invisible_rep_legaux", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("replaces_id", BigId, nullable=True),
        sa.Column("blob_id", BigId, nullable=False),
        sa.Column("source", sa.String(length=128), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["blob_id"], ["blobs.id"], name=op.f("fk_dmp_documents_blob_id_blobs")),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["dmp_patients.id"], name=op.f("fk_dmp_documents_patient_id_dmp_patients")
        ),
        sa.ForeignKeyConstraint(
            ["replaces_id"], ["dmp_documents.id"], name=op.f("fk_dmp_documents_replaces_id_dmp_documents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dmp_documents")),
        sa.UniqueConstraint("unique_id", name="uq_dmp_documents_unique_id"),
    )
    with op.batch_alter_table("dmp_documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dmp_documents_author_idnat"), ["author_idnat"], unique=False)
        batch_op.create_index(batch_op.f("ix_dmp_documents_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dmp_documents_submitted_at"), ["submitted_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_dmp_documents_type_code"), ["type_code"], unique=False)

    op.create_table(
        "dmp_legal_representatives",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("ins", sa.String(length=15), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["dmp_patients.id"],
            name=op.f("fk_dmp_legal_representatives_patient_id_dmp_patients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("patient_id", "ins", name=op.f("pk_dmp_legal_representatives")),
    )
    with op.batch_alter_table("dmp_legal_representatives", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dmp_legal_representatives_ins"), ["ins"], unique=False)

    op.create_table(
        "dmp_trace",
        sa.Column("id", BigId, nullable=False),
        sa.Column("patient_id", BigId, nullable=True),
        sa.Column("document_id", BigId, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("profession", sa.String(length=8), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["document_id"], ["dmp_documents.id"], name=op.f("fk_dmp_trace_document_id_dmp_documents")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["dmp_patients.id"], name=op.f("fk_dmp_trace_patient_id_dmp_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dmp_trace")),
    )
    with op.batch_alter_table("dmp_trace", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dmp_trace_patient_id"), ["patient_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dmp_trace", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dmp_trace_patient_id"))

    op.drop_table("dmp_trace")
    with op.batch_alter_table("dmp_legal_representatives", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dmp_legal_representatives_ins"))

    op.drop_table("dmp_legal_representatives")
    with op.batch_alter_table("dmp_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dmp_documents_type_code"))
        batch_op.drop_index(batch_op.f("ix_dmp_documents_submitted_at"))
        batch_op.drop_index(batch_op.f("ix_dmp_documents_patient_id"))
        batch_op.drop_index(batch_op.f("ix_dmp_documents_author_idnat"))

    op.drop_table("dmp_documents")
    op.drop_table("dmp_consents")
    op.drop_table("dmp_care_team")
    op.drop_table("dmp_patients")
