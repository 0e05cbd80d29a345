"""Patient mailboxes over real SMTP (the shared demo server): every patient rule accepted and
refused, conversations opened, continued and closed by what actually reaches the patient."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante.patients.models import Conversation, ConversationMessage
from tests.demo_server import DemoServer
from tests.mailbox import StoredMail

DOMAIN = "demo.mssante.fr"
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
CARDIO = f"cardiologie@{DOMAIN}"
PHARMACIE = f"pharmacie.parc@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@dataclass(frozen=True)
class Reply:
    stage: str  # the command answered: MAIL, RCPT or DATA
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return self.stage == "DATA" and self.code == 250


@pytest.fixture
def stored(demo: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(demo.data_dir)
    yield view
    view.close()


def patients(demo: DemoServer) -> list[str]:
    return [a["address"] for a in demo.doc["accounts"] if a["kind"] == "patient"]


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@{DOMAIN}>"


def mail(
    sender: str,
    to: list[str],
    subject: str,
    *,
    msgid: str | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    fin: bool = False,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    from_name: str | None = None,
) -> tuple[str, bytes]:
    """A message (CRLF, as a client sends it) and its Message-ID."""
    msg = EmailMessage()
    msg["From"] = f"{from_name} <{sender}>" if from_name else sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msgid = msgid or new_id()
    msg["Message-ID"] = msgid
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    if fin:
        msg["X-MSS-MES"] = "FIN"
    msg.set_content("Bonjour,\nmessage de test.\n")
    for filename, ctype, data in attachments:
        main, _, sub = ctype.partition("/")
        msg.add_attachment(data, maintype=main, subtype=sub, filename=filename)
    return msgid, msg.as_bytes(policy=SMTP)


def send(demo: DemoServer, login: str, sender: str, to: list[str], raw: bytes) -> Reply:
    """MAIL, RCPT for each recipient, DATA: the first refusal, or the DATA answer."""
    account = demo.account(login)
    with smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=demo.ca_cert))
        client.login(account["login"], account["password"])
        # SMTPUTF8: the replies' French reasons then come with their accents (RFC 6531).
        code, text = client.mail(sender, ["SMTPUTF8"])
        if code != 250:
            return Reply("MAIL", code, text.decode())
        for rcpt in to:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return Reply("RCPT", code, text.decode())
        code, text = client.data(raw)
        return Reply("DATA", code, text.decode())


def pro_writes(
    demo: DemoServer, sender: str, patient: str, subject: str, *, login: str | None = None, **kw: object
) -> str:
    msgid, raw = mail(sender, [patient], subject, **kw)  # type: ignore[arg-type]
    reply = send(demo, login or sender, sender, [patient], raw)
    assert reply.ok, reply
    return msgid


def refused(reply: Reply, stage: str, *fragments: str) -> None:
    assert (reply.stage, reply.code) == (stage, 550), reply
    assert reply.text.startswith("5.7.1 "), reply
    for fragment in fragments:
        assert fragment in reply.text, reply


def unique(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:10]}"


def test_reply_within_a_conversation_is_accepted_and_the_thread_goes_on(
    demo: DemoServer, stored: StoredMail
) -> None:
    patient = patients(demo)[0]
    first = pro_writes(demo, MARTIN, patient, unique("Resultats"))
    subject = unique("Re: Resultats")
    reply_id, raw = mail(patient, [MARTIN], subject, in_reply_to=first, references=[first])
    assert send(demo, patient, patient, [MARTIN], raw).ok
    assert len(stored.with_subject(MARTIN, subject)) == 1
    # The doctor answers the reply; the patient may answer that answer too.
    second = pro_writes(
        demo, MARTIN, patient, unique("Re: Re"), in_reply_to=reply_id, references=[first, reply_id]
    )
    _, raw = mail(
        patient, [MARTIN], unique("Re: Re: Re"), in_reply_to=second, references=[first, reply_id, second]
    )
    assert send(demo, patient, patient, [MARTIN], raw).ok
    with Session(stored.engine) as s:
        conversation = s.scalars(
            select(Conversation)
            .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
            .where(ConversationMessage.message_id == first)
        ).one()
        ids = s.scalars(
            select(ConversationMessage.message_id).where(
                ConversationMessage.conversation_id == conversation.id
            )
        ).all()
    assert (conversation.patient_bal, conversation.professional_bal) == (patient, MARTIN)
    assert conversation.opened_by == "professional" and conversation.closed_at is None
    assert len(ids) == 4 and {first, reply_id, second} <= set(ids)


def test_reply_to_an_org_bal_goes_to_that_org_bal_only(demo: DemoServer, stored: StoredMail) -> None:
    patient = patients(demo)[0]
    first = pro_writes(demo, CARDIO, patient, unique("Convocation"), login=CARDIO)
    subject = unique("Re: Convocation")
    _, raw = mail(patient, [CARDIO], subject, in_reply_to=first)
    assert send(demo, patient, patient, [CARDIO], raw).ok
    assert len(stored.with_subject(CARDIO, subject)) == 1
    # The doctor responsible for the service is not a party of the service's conversation.
    _, raw = mail(patient, [DURAND], unique("Re: Convocation"), in_reply_to=first)
    refused(
        send(demo, patient, patient, [DURAND], raw),
        "DATA",
        f"Une réponse ne va qu'aux BAL de sa conversation (<{CARDIO}>), pas à <{DURAND}>",
        f"A reply goes only to the mailbox(es) of its conversation (<{CARDIO}>), not to <{DURAND}>",
    )
    # Nor may a reply carry an extra recipient beside the conversation's BAL.
    _, raw = mail(patient, [CARDIO, MARTIN], unique("Re: Convocation"), in_reply_to=first)
    refused(send(demo, patient, patient, [CARDIO, MARTIN], raw), "DATA", f"pas à <{MARTIN}>")


def test_reply_after_fin_is_refused(demo: DemoServer, stored: StoredMail) -> None:
    patient = patients(demo)[1]
    first = pro_writes(demo, DURAND, patient, unique("Suivi"))
    _, raw = mail(patient, [DURAND], unique("Re: Suivi"), in_reply_to=first)
    assert send(demo, patient, patient, [DURAND], raw).ok
    last = pro_writes(
        demo, DURAND, patient, unique("Fin du suivi"), in_reply_to=first, references=[first], fin=True
    )
    for target in (last, first):  # neither the closing message nor an earlier one may be answered
        _, raw = mail(patient, [DURAND], unique("Re: Fin"), in_reply_to=target, references=[first])
        refused(
            send(demo, patient, patient, [DURAND], raw),
            "DATA",
            f"<{DURAND}> a clos cette conversation (X-MSS-MES: FIN)",
            f"<{DURAND}> closed this conversation (X-MSS-MES: FIN); it accepts no further reply",
        )
    with Session(stored.engine) as s:
        conversation = s.scalars(
            select(Conversation)
            .join(ConversationMessage, ConversationMessage.conversation_id == Conversation.id)
            .where(ConversationMessage.message_id == first)
        ).one()
    assert conversation.closed_at is not None and conversation.closed_by == last
    # A new message from the professional opens a new conversation the patient may answer.
    again = pro_writes(demo, DURAND, patient, unique("Nouveau suivi"), in_reply_to=last)
    _, raw = mail(patient, [DURAND], unique("Re: Nouveau suivi"), in_reply_to=again)
    assert send(demo, patient, patient, [DURAND], raw).ok


def test_reply_to_a_message_the_patient_never_received_is_refused(demo: DemoServer) -> None:
    patient = patients(demo)[0]
    _, raw = mail(patient, [MARTIN], unique("Re: ?"), in_reply_to=new_id())
    refused(
        send(demo, patient, patient, [MARTIN], raw),
        "DATA",
        f"Ce message ne répond à aucun message que vous avez reçu de <{MARTIN}>",
        f"This message replies to no message you received from <{MARTIN}>",
    )


def test_forged_references_are_refused(demo: DemoServer) -> None:
    first_patient, other_patient = patients(demo)
    # A message the doctor sent to another patient: its Message-ID proves nothing for this one.
    theirs = pro_writes(demo, MARTIN, other_patient, unique("Pour l'autre patient"))
    _, raw = mail(first_patient, [MARTIN], unique("Re: forge"), in_reply_to=theirs, references=[theirs])
    refused(
        send(demo, first_patient, first_patient, [MARTIN], raw),
        "DATA",
        f"This message replies to no message you received from <{MARTIN}>",
    )
    # A genuine message from one professional does not open the door to another one.
    genuine = pro_writes(demo, DURAND, first_patient, unique("Ordonnance"))
    _, raw = mail(first_patient, [MARTIN], unique("Re: Ordonnance"), references=[genuine])
    refused(
        send(demo, first_patient, first_patient, [MARTIN], raw),
        "DATA",
        f"A reply goes only to the mailbox(es) of its conversation (<{DURAND}>), not to <{MARTIN}>",
    )


@pytest.mark.parametrize(
    ("attachment", "ok"),
    [
        (("ordonnance.pdf", "application/pdf", PDF), True),
        (("ordonnance.png", "image/png", PNG), True),
        (None, False),
        (("ordonnance.txt", "text/plain", b"Doliprane 1 g"), False),
        (("ordonnance.zip", "application/zip", b"PK\x03\x04"), False),
    ],
    ids=["pdf", "image", "no-attachment", "text-attachment", "zip-attachment"],
)
def test_new_message_to_a_pharmacy_needs_the_prescription(
    demo: DemoServer, stored: StoredMail, attachment: tuple[str, str, bytes] | None, ok: bool
) -> None:
    patient = patients(demo)[0]
    subject = unique("Mon ordonnance")
    _, raw = mail(patient, [PHARMACIE], subject, attachments=(attachment,) if attachment else ())
    reply = send(demo, patient, patient, [PHARMACIE], raw)
    if ok:
        assert reply.ok, reply
        assert len(stored.with_subject(PHARMACIE, subject)) == 1
    else:
        refused(
            reply,
            "DATA",
            f"Un premier message à la pharmacie <{PHARMACIE}> doit joindre l'ordonnance (PDF ou image)",
            f"A first message to the pharmacy <{PHARMACIE}> must attach the prescription (PDF or image)",
        )
        assert stored.with_subject(PHARMACIE, subject) == []


def test_the_pharmacy_answers_and_the_patient_replies(demo: DemoServer) -> None:
    patient = patients(demo)[1]
    sent, raw = mail(
        patient, [PHARMACIE], unique("Ordonnance"), attachments=(("o.pdf", "application/pdf", PDF),)
    )
    assert send(demo, patient, patient, [PHARMACIE], raw).ok
    answer = pro_writes(
        demo,
        PHARMACIE,
        patient,
        unique("Re: Ordonnance"),
        login=PHARMACIE,
        in_reply_to=sent,
        references=[sent],
    )
    _, raw = mail(
        patient, [PHARMACIE], unique("Re: Re: Ordonnance"), in_reply_to=answer, references=[sent, answer]
    )
    assert send(demo, patient, patient, [PHARMACIE], raw).ok


def test_new_message_to_a_doctor_is_refused(demo: DemoServer, stored: StoredMail) -> None:
    patient = patients(demo)[0]
    subject = unique("Question")
    _, raw = mail(patient, [DURAND], subject, attachments=(("o.pdf", "application/pdf", PDF),))
    refused(
        send(demo, patient, patient, [DURAND], raw),
        "DATA",
        "Les patients ne peuvent écrire qu'à une pharmacie ou répondre à un professionnel qui leur a écrit",
        "Patients may only write to a pharmacy or reply to a professional who wrote to them",
    )
    assert stored.with_subject(DURAND, subject) == []


def test_patients_cannot_write_to_other_patients_applications_or_outside(demo: DemoServer) -> None:
    patient, other = patients(demo)
    _, raw = mail(patient, [other], unique("Bonjour"))
    refused(
        send(demo, patient, patient, [other], raw),
        "RCPT",
        f"Les patients ne peuvent pas écrire à un autre patient (<{other}>)",
        f"Patients may not write to another patient (<{other}>)",
    )
    refused(send(demo, patient, patient, [patient], raw), "RCPT", "another patient")
    refused(
        send(demo, patient, patient, [DPI], raw),
        "RCPT",
        "Les patients ne peuvent pas écrire à une BAL applicative",
        f"Patients may not write to an application mailbox (APP BAL) (<{DPI}>)",
    )
    for outsider in ("quelqu.un@gmail.com", "dr.x@operateur-inconnu.mssante.fr"):
        refused(
            send(demo, patient, patient, [outsider], raw),
            "RCPT",
            f"Les patients n'écrivent qu'au sein de l'espace de confiance MSSanté (<{outsider}>)",
            f"Patients may only write within the MSSanté trust space (<{outsider}>)",
        )


def test_professionals_are_not_bound_by_patient_rules(demo: DemoServer, stored: StoredMail) -> None:
    """A professional writes to a patient without any reference, and to a colleague freely."""
    patient = patients(demo)[0]
    subject = unique("Premier contact")
    pro_writes(demo, MARTIN, patient, subject)
    assert len(stored.with_subject(patient, subject)) == 1
