"""imap conformance: subscriptions by name, \\Recent ownership, a UIDVALIDITY counter per BAL

Revision ID: 0015
Revises: 0008
Create Date: 2026-12-05 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_subscriptions",
        sa.Column("bal", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["bal"],
            ["mail_accounts.bal"],
            name=op.f("fk_mailbox_subscriptions_bal_mail_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bal", "name", name=op.f("pk_mailbox_subscriptions")),
    )
    op.execute("INSERT INTO mailbox_subscriptions (bal, name) SELECT bal, name FROM folders WHERE subscribed")
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_recent_uid", sa.BigInteger(), nullable=False, server_default="1")
        )
        batch_op.drop_column("subscribed")
    # Messages already stored are not \Recent for anyone.
    op.execute("UPDATE folders SET first_recent_uid = uidnext")
    with op.batch_alter_table("mail_accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_uidvalidity", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE mail_accounts SET last_uidvalidity = COALESCE("
        "(SELECT MAX(uidvalidity) FROM folders WHERE folders.bal = mail_accounts.bal), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("mail_accounts", schema=None) as batch_op:
        batch_op.drop_column("last_uidvalidity")
    with op.batch_alter_table("folders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subscribed", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.drop_column("first_recent_uid")
    op.execute(
        "UPDATE folders SET subscribed = EXISTS (SELECT 1 FROM mailbox_subscriptions s "
        "WHERE s.bal = folders.bal AND s.name = folders.name)"
    )
    op.drop_table("mailbox_subscriptions")
