"""Conversation records on both databases: threading by Message-ID, FIN, what a patient received."""

from __future__ import annotations

from sqlalchemy import select

from mssante.audit import AuditRecord
from mssante.db import transaction
from mssante.patients.conversations import (
    ConversationBook,
    cited,
    message_id,
    record_from_patient,
    record_to_patient,
)
from mssante.runtime import Runtime

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
