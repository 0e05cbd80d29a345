"""audit: keyed chain (HMAC-SHA256 under a key derived from the key ring), key id on the head

Existing records are re-chained under the audit key: the old SHA-256 chain protected nothing
against a database writer, so keeping it would only keep a weak segment. The state of the old
chain (intact, or where it was broken) is recorded, under the key, in an ``audit.chain_keyed``
record. An empty trail needs no key here (the first append uses the bound key). A downgrade
drops the key id column only: the records stay keyed, which older code reports as edited.

Revision ID: 0008
Revises: 0011
Create Date: 2026-12-05 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision: str = "0008"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    from mssante import audit

    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))
    conn = op.get_bind()
    config = op.get_context().config
    key = config.attributes.get("audit_key") if config is not None else None
    has_records = conn.execute(sa.text("SELECT 1 FROM audit_log LIMIT 1")).first() is not None
    if key is None:
        if has_records:
            raise RuntimeError(
                "revision 0008 re-chains the audit trail under the key ring's audit key, but the key "
                "ring could not be read: run `mssante db upgrade` with the key ring in place (keys.path)"
            )
        return
    with Session(bind=conn) as session:
        if has_records:
            audit.rechain(session, key)
        else:
            conn.execute(sa.text("UPDATE audit_head SET key_id = :kid WHERE id = 1"), {"kid": key.key_id})
        session.flush()


def downgrade() -> None:
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.drop_column("key_id")
