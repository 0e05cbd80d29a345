"""The web sessions of the patient space and the professionals' DMP web.

A session is a row, not a signed cookie, so that logging out (or an operator disabling an
account) ends it at once on every node sharing the database. The cookie holds a random token;
the table holds only its SHA-256, so a copied database gives no usable session.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base


class WebSession(Base):
    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(320), index=True)  # e.g. patient:2800175…
    login: Mapped[str | None] = mapped_column(String(320))
    space: Mapped[str] = mapped_column(String(16))  # "patient" or "pro"
    # The INS of the record a legal representative acts on (None: the patient's own).
    acting_for: Mapped[str | None] = mapped_column(String(15))
    # A professional's break-glass in force in this session: {INS: reason} as JSON.
    emergency: Mapped[str | None] = mapped_column(Text)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebSecondFactor(Base):
    """The second factor of a web login (TOTP standing in for "mot de passe + SMS"), for accounts
    whose mail clients log in with the password alone: enrolling it changes nothing for SMTP and
    IMAP. The secret is sealed by the key ring; a code is accepted once (its time step is kept)."""

    __tablename__ = "web_second_factors"

    login: Mapped[str] = mapped_column(String(320), primary_key=True)
    totp_secret: Mapped[str] = mapped_column(String(128))
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
