"""dmp: entryUUID and MSSanté header values (X-MSS-INS, X-MSS-CODECDA, X-MSS-NIL) of deposits

Revision ID: 0010
Revises: 0017
Create Date: 2026-12-05 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dmp_documents") as batch:
        batch.add_column(sa.Column("entry_uuid", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("mss_ins", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("mss_codecda", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("mss_nil", sa.String(length=300), nullable=True))
        batch.create_index("ix_dmp_documents_entry_uuid", ["entry_uuid"])


def downgrade() -> None:
    with op.batch_alter_table("dmp_documents") as batch:
        batch.drop_index("ix_dmp_documents_entry_uuid")
        batch.drop_column("mss_nil")
        batch.drop_column("mss_codecda")
        batch.drop_column("mss_ins")
        batch.drop_column("entry_uuid")
