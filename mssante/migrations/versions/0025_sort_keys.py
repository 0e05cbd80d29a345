"""imap sort: the keys SORT and THREAD compare, sealed per blob beside its parsed structure

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 06:00:00

A folder's first SORT or THREAD decrypted and decoded each message's structure to work out its
sent date, base subject, first addresses and thread links; they are now worked out at delivery
and sealed in this compact form (``mssante.store.sortkeys``). Blobs stored before this revision
keep NULL and are read through their structure, as before, until ``mssante db backfill`` seals
theirs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("sortkeys", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("sortkeys")
