"""the \\Deleted messages of a folder indexed

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 22:50:00

EXPUNGE and CLOSE remove a folder's messages flagged \\Deleted, in the writer's transaction.
They read every message of the folder to find them (37-60 ms at 20,000 messages, with nothing
to remove, while every delivery waited). A partial index holds only the \\Deleted messages, by
folder and UID: they are found among the few. Its predicate is the text of
``mssante.store.models.has_flag`` (repeated here: a migration does not change with the code).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_deleted",
        "messages",
        ["folder_id", "uid"],
        sqlite_where=sa.text("instr(flags, '\\Deleted') > 0"),
        postgresql_where=sa.text("strpos(flags, E'\\\\Deleted') > 0"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_deleted", table_name="messages")
