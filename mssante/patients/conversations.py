"""Reading and writing patient conversations.

Reads (:class:`ConversationBook`) serve the patient rules at RCPT and DATA time, on the reader
engine. Writes (:func:`record_to_patient`, :func:`record_from_patient`) run inside the
transaction that stores the message, so a conversation exists exactly when its message does.

A message belongs to a conversation through its Message-ID; a new message joins the
conversation one of its ``In-Reply-To``/``References`` ids belongs to, provided the two
parties are the same and the conversation is still open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.patients.models import FROM_PATIENT, TO_PATIENT, Conversation, ConversationMessage

# A reply rarely cites more than a few dozen ids; beyond that only the most recent count.
MAX_REFERENCES = 50
_MSGID = re.compile(r"<[^<>\s]{1,298}>")


def message_id(value: str | None) -> str | None:
    """The ``<id@domain>`` form of a Message-ID header value, or None."""
    if not value:
        return None
    match = _MSGID.search(value)
    return match.group(0) if match else None


def cited(in_reply_to: Sequence[str], references: Sequence[str]) -> tuple[str, ...]:
    """Ids a message refers to, most relevant first: In-Reply-To, then References newest first."""
    ids = [m for m in (message_id(v) for v in (*in_reply_to, *reversed(references))) if m]
    return tuple(dict.fromkeys(ids))[:MAX_REFERENCES]


@dataclass(frozen=True)
class Received:
    """A message a patient received, as the rules see it."""

    message_id: str
    professional_bal: str
    conversation_id: int
    closed: bool


class ConversationBook:
    """Read side: what a patient received, for the patient rules (synchronous, any thread)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def received(self, patient_bal: str, message_ids: Iterable[str]) -> list[Received]:
        """Messages among ``message_ids`` that ``patient_bal`` received, with their conversation."""
        ids = list(dict.fromkeys(message_ids))[:MAX_REFERENCES]
        if not ids:
            return []
        query = (
            select(
                ConversationMessage.message_id,
                Conversation.professional_bal,
                Conversation.id,
                Conversation.closed_at,
            )
            .join(Conversation, Conversation.id == ConversationMessage.conversation_id)
            .where(
                Conversation.patient_bal == patient_bal.lower(),
                ConversationMessage.direction == TO_PATIENT,
                ConversationMessage.message_id.in_(ids),
            )
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Received(r[0], r[1], r[2], r[3] is not None) for r in rows]


def _now() -> datetime:
    return datetime.now(UTC)


def _find_open(
    session: Session, patient_bal: str, professional_bal: str, ids: Sequence[str], direction: str | None
) -> Conversation | None:
    if not ids:
        return None
    query = (
        select(Conversation)
        .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
        .where(
            Conversation.patient_bal == patient_bal,
            Conversation.professional_bal == professional_bal,
            Conversation.closed_at.is_(None),
            ConversationMessage.message_id.in_(ids),
        )
        .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
        .limit(1)
    )
    if direction is not None:
        query = query.where(ConversationMessage.direction == direction)
    return session.scalars(query).first()


def _add(session: Session, conversation: Conversation, msgid: str, direction: str, at: datetime) -> None:
    known = session.scalars(
        select(ConversationMessage.id).where(
            ConversationMessage.conversation_id == conversation.id, ConversationMessage.message_id == msgid
        )
    ).first()
    if known is None:
        session.add(
            ConversationMessage(conversation_id=conversation.id, message_id=msgid, direction=direction, at=at)
        )
    conversation.last_message_at = at


def _open(
    session: Session,
    patient_bal: str,
    professional_bal: str,
    opened_by: str,
    msgid: str,
    actor: str,
    at: datetime,
) -> Conversation:
    conversation = Conversation(
        patient_bal=patient_bal,
        professional_bal=professional_bal,
        opened_by=opened_by,
        opened_at=at,
        last_message_at=at,
    )
    session.add(conversation)
    session.flush()
    audit.append(
        session,
        AuditEvent(
            actor=actor,
            action="patient.conversation.open",
            bal=patient_bal,
            object=f"conversation/{conversation.id}",
            detail={"with": professional_bal, "opened_by": opened_by, "message_id": msgid},
        ),
    )
    return conversation


def record_to_patient(
    session: Session,
    *,
    patient_bal: str,
    professional_bal: str,
    msgid: str,
    refs: Sequence[str],
    fin: bool,
    actor: str,
) -> Conversation:
    """A professional's message reached a patient: continue or open, and close on ``FIN``."""
    at = _now()
    patient_bal, professional_bal = patient_bal.lower(), professional_bal.lower()
    conversation = _find_open(session, patient_bal, professional_bal, refs, None)
    if conversation is None:
        conversation = _open(session, patient_bal, professional_bal, "professional", msgid, actor, at)
    _add(session, conversation, msgid, TO_PATIENT, at)
    if fin:
        conversation.closed_at = at
        conversation.closed_by = msgid
        audit.append(
            session,
            AuditEvent(
                actor=actor,
                action="patient.conversation.close",
                bal=patient_bal,
                object=f"conversation/{conversation.id}",
                detail={"with": professional_bal, "message_id": msgid},
            ),
        )
    session.flush()
    return conversation


def record_from_patient(
    session: Session, *, patient_bal: str, professional_bal: str, msgid: str, refs: Sequence[str], actor: str
) -> Conversation:
    """A patient's message was accepted: it continues the conversation it answers, or (a new
    message to a pharmacy) opens one, so that the pharmacy's answer continues it."""
    at = _now()
    patient_bal, professional_bal = patient_bal.lower(), professional_bal.lower()
    conversation = _find_open(session, patient_bal, professional_bal, refs, TO_PATIENT)
    if conversation is None:
        conversation = _open(session, patient_bal, professional_bal, "patient", msgid, actor, at)
    _add(session, conversation, msgid, FROM_PATIENT, at)
    session.flush()
    return conversation
