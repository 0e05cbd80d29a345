"""Tables of identities and credentials: local accounts, APP certificates, failure counters.

Only credentials live here. What an identity owns in the annuaire (its BALs) and what it may
use through delegation are other tables, joined on the identity's id (IdNat_PS, INS, local id,
certificate fingerprint).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

BigId = BigInteger().with_variant(Integer, "sqlite")


class LocalAccount(Base):
    """A login known to this operator: dev and test accounts, staff, patients without an IdP,
    and APP identities (which have certificates and never a password).

    Exactly one of ``idnat`` / ``local_id`` / ``ins`` is set, matching ``kind``, except for
    applications, identified by their certificates (``auth_certificates``).
    """

    __tablename__ = "auth_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    login: Mapped[str] = mapped_column(String(320), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    idnat: Mapped[str | None] = mapped_column(String(32), index=True)
    ins: Mapped[str | None] = mapped_column(String(15), index=True)
    local_id: Mapped[str | None] = mapped_column(String(128), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200))
    # Sealed with the key ring (``<key id>:<base64>``): a copied database reveals no second factor.
    totp_secret: Mapped[str | None] = mapped_column(String(128))
    # Last accepted TOTP time step: a code is accepted once (no replay within its window).
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AccountCertificate(Base):
    """A client certificate that authenticates an APP identity (SASL EXTERNAL)."""

    __tablename__ = "auth_certificates"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of DER, hex
    account_id: Mapped[int] = mapped_column(ForeignKey("auth_accounts.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(1024))
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FailureCounter(Base):
    """Recent authentication failures of one claimed identity or one client IP.

    Times are POSIX seconds (floats) so that arithmetic is the same on SQLite and PostgreSQL.
    """

    __tablename__ = "auth_failures"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # "identity" or "ip"
    key: Mapped[str] = mapped_column(String(320))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[float] = mapped_column(Float)
    last_at: Mapped[float] = mapped_column(Float)
    locked_until: Mapped[float | None] = mapped_column(Float)
