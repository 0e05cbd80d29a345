"""Tables of delegation: grants (and ORG memberships) on BALs, and a generation counter.

A grant is immutable once written: changing someone's rights revokes the current grant and
writes a new one, so the table itself is the history of who could do what, when, granted by
whom. ``role`` tells a delegation (a secretary on a doctor's PER BAL) from a membership (a
member of an ORG BAL); both count the same way in the effective rights.

``delegation_state`` holds one generation number bumped by every grant and revocation, in the
same transaction: live IMAP sessions and SMTP transactions of every process compare it to
what they cached, which is what makes a revocation take effect at the next command.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

BigId = BigInteger().with_variant(Integer, "sqlite")

DELEGATE = "delegate"
MEMBER = "member"


class Grant(Base):
    __tablename__ = "delegation_grants"
    __table_args__ = (
        Index("ix_delegation_grants_bal", "bal"),
        Index("ix_delegation_grants_grantee", "grantee"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bal: Mapped[str] = mapped_column(String(320))  # the BAL's address key (lower-cased)
    grantee: Mapped[str] = mapped_column(String(200))  # Identity.principal, e.g. staff:secretaire.martin
    role: Mapped[str] = mapped_column(String(16))  # delegate | member
    rights: Mapped[str] = mapped_column(String(64))  # canonical: IMAP letters, then " send"
    granted_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class DelegationState(Base):
    """One row: bumped by every change of grants."""

    __tablename__ = "delegation_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
