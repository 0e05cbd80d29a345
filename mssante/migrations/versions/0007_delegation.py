"""delegation: grants and ORG memberships on BALs, generation counter

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 11:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delegation_grants",
        sa.Column("id", BigId, nullable=False),
        sa.Column("bal", sa.String(length=320), nullable=False),
        sa.Column("grantee", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("rights", sa.String(length=64), nullable=False),
        sa.Column("granted_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delegation_grants")),
    )
    with op.batch_alter_table("delegation_grants", schema=None) as batch_op:
        batch_op.create_index("ix_delegation_grants_bal", ["bal"], unique=False)
        batch_op.create_index("ix_delegation_grants_grantee", ["grantee"], unique=False)
    op.create_table(
        "delegation_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delegation_state")),
    )
    state = sa.table(
        "delegation_state", sa.column("id", sa.Integer()), sa.column("generation", sa.BigInteger())
    )
    op.bulk_insert(state, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("delegation_state")
    with op.batch_alter_table("delegation_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_delegation_grants_grantee")
        batch_op.drop_index("ix_delegation_grants_bal")
    op.drop_table("delegation_grants")
