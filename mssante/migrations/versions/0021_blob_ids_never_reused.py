"""blob ids never reused: a high-water mark for SQLite, which gives a deleted highest rowid again

Revision ID: 0021
Revises: 0019
Create Date: 2026-12-06 00:40:00

SQLite (without AUTOINCREMENT, which cannot be added to an existing table in place) numbers a
new row after the highest one present, so a blob collected after its last message was expunged
gave its id to the next message stored. An IMAP session that still held the expunged message
(RFC 2180 §4.1: its number stays valid until the session is told) then read the new message's
content under the old one's number (imaptest stress: "Header Subject changed"). The store now
takes SQLite blob ids from this mark; PostgreSQL's sequence never goes back.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blob_id_high",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blob_id_high")),
    )
    op.execute("INSERT INTO blob_id_high (id, last) SELECT 1, coalesce(max(id), 0) FROM blobs")


def downgrade() -> None:
    op.drop_table("blob_id_high")
