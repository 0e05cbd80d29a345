"""imap search: the header fields SEARCH matches, sealed per blob beside its parsed structure

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 02:30:00

A header SEARCH read and JSON-decoded each message's whole parsed structure; it now reads this
compact, sealed form (``mssante.store.headerindex``), written at delivery. Blobs stored before
this revision keep NULL and are matched through their structure, as before; the server keeps
what it derived in its per-process cache.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("search", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("search")
