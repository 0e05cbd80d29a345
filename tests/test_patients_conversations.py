"""Conversation records on both databases: threading by Message-ID, FIN, what a patient received."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from mssante.audit import AuditRecord
from mssante.config import NotifySection
from mssante.db import transaction
from mssante.notify import Notifier
from mssante.patients.conversations import (
    ConversationBook,
    cited,
    message_id,
    record_from_patient,
    record_to_patient,
)
from mssante.patients.hook import PatientHook
from mssante.policy import MessageFacts, Recipient
from mssante.runtime import Runtime
from mssante.smtp.hooks import DeliveryContext

PATIENT = "280017512345610@patient.mssante.fr"
OTHER = "175056912378901@patient.mssante.fr"
MARTIN = "claire.martin@demo.mssante.fr"
DURAND = "paul.durand@demo.mssante.fr"
PHARMACIE = "pharmacie.parc@demo.mssante.fr"


def to_patient(
    runtime: Runtime,
    msgid: str,
    refs: tuple[str, ...] = (),
    *,
    patient: str = PATIENT,
    pro: str = MARTIN,
    fin: bool = False,
) -> int:
    with transaction(runtime.writer_engine) as s:
        return record_to_patient(
            s, patient_bal=patient, professional_bal=pro, msgid=msgid, refs=refs, fin=fin, actor="test"
        ).id


def from_patient(runtime: Runtime, msgid: str, refs: tuple[str, ...] = (), *, pro: str = MARTIN) -> int:
    with transaction(runtime.writer_engine) as s:
        return record_from_patient(
            s, patient_bal=PATIENT, professional_bal=pro, msgid=msgid, refs=refs, actor="test"
        ).id


def test_message_ids_and_citations() -> None:
    assert message_id(" <a@b> (comment)") == "<a@b>"
    assert message_id("no id here") is None and message_id(None) is None
    # In-Reply-To first, then References from the newest.
    assert cited(("<c@x>",), ("<a@x>", "<b@x>", "<c@x>")) == ("<c@x>", "<b@x>", "<a@x>")
    assert len(cited((), tuple(f"<{i}@x>" for i in range(500)))) == 50


def test_a_thread_is_one_conversation_until_fin(runtime: Runtime) -> None:
    book = ConversationBook(runtime.engine)
    first = to_patient(runtime, "<1@demo>")
    assert from_patient(runtime, "<2@patient>", ("<1@demo>",)) == first
    assert to_patient(runtime, "<3@demo>", ("<1@demo>", "<2@patient>")) == first
    # What the patient received, with its conversation; the patient's own messages are not in it.
    got = book.received(PATIENT, ["<1@demo>", "<2@patient>", "<3@demo>", "<unknown@x>"])
    assert sorted((r.message_id, r.professional_bal, r.conversation_id, r.closed) for r in got) == [
        ("<1@demo>", MARTIN, first, False),
        ("<3@demo>", MARTIN, first, False),
    ]
    # Another patient, or another professional, sees none of it.
    assert book.received(OTHER, ["<1@demo>"]) == []
    assert to_patient(runtime, "<4@demo>", ("<1@demo>",), pro=DURAND) != first
    # FIN closes; afterwards a message in the same thread opens a new conversation.
    assert to_patient(runtime, "<5@demo>", ("<3@demo>",), fin=True) == first
    assert {r.closed for r in book.received(PATIENT, ["<1@demo>", "<5@demo>"])} == {True}
    second = to_patient(runtime, "<6@demo>", ("<5@demo>",))
    assert second != first
    assert [r.closed for r in book.received(PATIENT, ["<6@demo>"])] == [False]
    with transaction(runtime.engine) as s:
        actions = s.scalars(select(AuditRecord.action).where(AuditRecord.bal == PATIENT)).all()
    assert (
        actions.count("patient.conversation.open") == 3 and actions.count("patient.conversation.close") == 1
    )


def test_a_patient_opens_a_conversation_with_a_pharmacy(runtime: Runtime) -> None:
    opened = from_patient(runtime, "<rx@patient>", pro=PHARMACIE)
    assert to_patient(runtime, "<ok@pharmacie>", ("<rx@patient>",), pro=PHARMACIE) == opened
    # The same Message-ID recorded twice (a resend) stays one entry.
    assert to_patient(runtime, "<ok@pharmacie>", ("<rx@patient>",), pro=PHARMACIE) == opened
    assert len(ConversationBook(runtime.engine).received(PATIENT, ["<ok@pharmacie>"])) == 1


def test_fin_on_a_first_message_opens_it_closed(runtime: Runtime) -> None:
    """``X-MSS-MES: FIN`` on a first message: information the patient cannot answer."""
    to_patient(runtime, "<info@demo>", fin=True)
    assert [r.closed for r in ConversationBook(runtime.engine).received(PATIENT, ["<info@demo>"])] == [True]


async def test_no_conversation_without_its_message(runtime: Runtime) -> None:
    """The hook's record commits with the message or not at all: here a write after it fails."""
    with transaction(runtime.writer_engine) as s:
        annuaire_service.add_patient_bal(s, ins=PATIENT.partition("@")[0], actor="test")
    hook = PatientHook(runtime.annuaire, Notifier(NotifySection()))

    def broken(session: Session) -> None:
        raise RuntimeError("a later write of the same transaction fails")

    async def deliver(msgid: str, *also: Callable[[Session], None]) -> dict[str, int]:
        raw = f"From: {MARTIN}\r\nMessage-ID: {msgid}\r\nSubject: x\r\n\r\nBonjour\r\n".encode()
        routes = (Recipient(PATIENT, "local", "patient.mssante.fr"),)
        ctx = DeliveryContext("relay", None, MARTIN, None, routes, MessageFacts((MARTIN,)), raw, msgid)
        write = hook.in_transaction(ctx)
        assert write is not None
        return await runtime.store.deliver(raw, MARTIN, [PATIENT], also=[write, *also])

    with pytest.raises(RuntimeError, match="a later write"):
        await deliver("<lost@demo>", broken)
    book = ConversationBook(runtime.engine)
    assert book.received(PATIENT, ["<lost@demo>"]) == []
    assert await deliver("<kept@demo>") == {PATIENT: 1}
    assert [r.professional_bal for r in book.received(PATIENT, ["<kept@demo>"])] == [MARTIN]
