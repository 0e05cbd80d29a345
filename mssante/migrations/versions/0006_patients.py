"""patients: conversations between patient BALs and professionals

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 11:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patient_conversations",
        sa.Column("id", BigId, nullable=False),
        sa.Column("patient_bal", sa.String(length=320), nullable=False),
        sa.Column("professional_bal", sa.String(length=320), nullable=False),
        sa.Column("opened_by", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_conversations")),
    )
    with op.batch_alter_table("patient_conversations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patient_conversations_parties", ["patient_bal", "professional_bal"], unique=False
        )
    op.create_table(
        "patient_conv_messages",
        sa.Column("id", BigId, nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("message_id", sa.String(length=300), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["patient_conversations.id"],
            name=op.f("fk_patient_conv_messages_conversation_id_patient_conversations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_conv_messages")),
        sa.UniqueConstraint(
            "conversation_id", "message_id", name=op.f("uq_patient_conv_messages_conversation_id")
        ),
    )
    with op.batch_alter_table("patient_conv_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_conv_messages_conversation_id"), ["conversation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_patient_conv_messages_message_id"), ["message_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("patient_conv_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_conv_messages_message_id"))
        batch_op.drop_index(batch_op.f("ix_patient_conv_messages_conversation_id"))
    op.drop_table("patient_conv_messages")
    with op.batch_alter_table("patient_conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_patient_conversations_parties")
    op.drop_table("patient_conversations")
