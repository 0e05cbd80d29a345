"""folder changes indexed by folder and modseq

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 02:05:00

``changes_since`` (what an IMAP session missed: after a notification from another node, a
QRESYNC, a CHANGEDSINCE) reads ``folder_id = ? AND modseq > ?``. Indexed by the folder alone,
it read every change the folder ever had and dropped all but the last few: on PostgreSQL, 9,999
rows removed by the filter for one change of a 10,000-message folder (EXPLAIN ANALYZE in the
README). The index on both columns finds the few directly, and still serves the folder alone
(the cascade from ``folders``).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_folder_changes_folder_id_modseq", "folder_changes", ["folder_id", "modseq"])
    op.drop_index("ix_folder_changes_folder_id", table_name="folder_changes")


def downgrade() -> None:
    op.create_index("ix_folder_changes_folder_id", "folder_changes", ["folder_id"])
    op.drop_index("ix_folder_changes_folder_id_modseq", table_name="folder_changes")
