"""smtp queue: the entries of the submission queue already delivered

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 10:00:00

With ``smtp.acknowledge = "queued"`` a message is answered once sealed in the node's queue
database (``queue.db``) and delivered just after by another process; each delivery writes its
entry's id here in the same transaction, so that an entry left by a crash after the commit is
recognised as delivered.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "smtp_queue_delivered",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("smtp_queue_delivered")
