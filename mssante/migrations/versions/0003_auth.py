"""auth: local accounts, credentials, lockouts

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "auth_accounts",
        sa.Column("id", BigId, nullable=False),
        sa.Column("login", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idnat", sa.String(length=32), nullable=True),
        sa.Column("ins", sa.String(length=15), nullable=True),
        sa.Column("local_id", sa.String(length=128), nullable=True),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("password_hash", sa.String(length=200), nullable=True),
        sa.Column("totp_secret", sa.String(length=128), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_accounts")),
        sa.UniqueConstraint("login", name=op.f("uq_auth_accounts_login")),
    )
    with op.batch_alter_table("auth_accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_accounts_idnat"), ["idnat"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_accounts_ins"), ["ins"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_accounts_local_id"), ["local_id"], unique=False)

    op.create_table(
        "auth_certificates",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("account_id", BigId, nullable=False),
        sa.Column("subject", sa.String(length=1024), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["auth_accounts.id"],
            name=op.f("fk_auth_certificates_account_id_auth_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_auth_certificates")),
    )
    with op.batch_alter_table("auth_certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_certificates_account_id"), ["account_id"], unique=False)

    op.create_table(
        "auth_failures",
        sa.Column("id", BigId, nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
        sa.UniqueConstraint("scope", "key", name=op.f("uq_auth_failures_scope")),
    )


def downgrade() -> None:
    op.drop_table("auth_failures")
    with op.batch_alter_table("auth_certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_certificates_account_id"))
    op.drop_table("auth_certificates")
    with op.batch_alter_table("auth_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_accounts_local_id"))
        batch_op.drop_index(batch_op.f("ix_auth_accounts_ins"))
        batch_op.drop_index(batch_op.f("ix_auth_accounts_idnat"))
    op.drop_table("auth_accounts")
