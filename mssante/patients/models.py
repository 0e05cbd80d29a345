"""Tables of patient conversations.

A conversation joins one patient BAL and one professional BAL (a PER BAL, or an ORG BAL such
as a service or a pharmacy). It is made of the Message-IDs exchanged in it, each with its
direction, which is what a patient's reply is checked against: a patient may answer only a
message they actually received, from that BAL, in a conversation still open. A professional
closes a conversation with ``X-MSS-MES: FIN``; a closed conversation stays closed (a later
message from the professional opens a new one).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

BigId = BigInteger().with_variant(Integer, "sqlite")

TO_PATIENT = "to_patient"
FROM_PATIENT = "from_patient"


class Conversation(Base):
    __tablename__ = "patient_conversations"
    __table_args__ = (Index("ix_patient_conversations_parties", "patient_bal", "professional_bal"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_bal: Mapped[str] = mapped_column(String(320))
    professional_bal: Mapped[str] = mapped_column(String(320))
    opened_by: Mapped[str] = mapped_column(String(16))  # "professional" | "patient"
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_message_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_by: Mapped[str | None] = mapped_column(String(300))  # the Message-ID carrying FIN


class ConversationMessage(Base):
    __tablename__ = "patient_conv_messages"
    __table_args__ = (UniqueConstraint("conversation_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("patient_conversations.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[str] = mapped_column(String(300), index=True)
    direction: Mapped[str] = mapped_column(String(16))  # TO_PATIENT | FROM_PATIENT
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
