"""web: sessions of the patient space and DMP web; the patient's choices in the DMP

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _patient_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["patient_id"],
        ["dmp_patients.id"],
        name=op.f(f"fk_{table}_patient_id_dmp_patients"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=320), nullable=False),
        sa.Column("login", sa.String(length=320), nullable=True),
        sa.Column("space", sa.String(length=16), nullable=False),
        sa.Column("acting_for", sa.String(length=15), nullable=True),
        sa.Column("emergency", sa.Text(), nullable=True),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_web_sessions_principal", ["principal"], unique=False)
    op.create_table(
        "web_second_factors",
        sa.Column("login", sa.String(length=320), nullable=False),
        sa.Column("totp_secret", sa.String(length=128), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("login", name=op.f("pk_web_second_factors")),
    )
    op.create_table(
        "dmp_patient_choices",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("medecin_traitant", sa.String(length=32), nullable=True),
        sa.Column("notify_channel", sa.String(length=16), nullable=False),
        sa.Column("notify_email", sa.String(length=320), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("dmp_patient_choices"),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_dmp_patient_choices")),
    )
    op.create_table(
        "dmp_blocked",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("idnat", sa.String(length=32), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("dmp_blocked"),
        sa.PrimaryKeyConstraint("patient_id", "idnat", name=op.f("pk_dmp_blocked")),
    )
    op.create_table(
        "dmp_hidden",
        sa.Column("document_id", BigId, nullable=False),
        sa.Column("hidden_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hidden_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["dmp_documents.id"],
            name=op.f("fk_dmp_hidden_document_id_dmp_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", name=op.f("pk_dmp_hidden")),
    )
    op.create_table(
        "dmp_profile",
        sa.Column("patient_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("dmp_profile"),
        sa.PrimaryKeyConstraint("patient_id", "kind", name=op.f("pk_dmp_profile")),
    )


def downgrade() -> None:
    op.drop_table("dmp_profile")
    op.drop_table("dmp_hidden")
    op.drop_table("dmp_blocked")
    op.drop_table("dmp_patient_choices")
    op.drop_table("web_second_factors")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_web_sessions_principal")
    op.drop_table("web_sessions")
