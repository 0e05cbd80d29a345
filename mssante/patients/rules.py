"""The sending rules of patients (Mon Espace Santé), consulted by ``mssante.policy``.

Professionals start conversations; a patient may

* reply, only to a message they received from that BAL (``In-Reply-To``/``References``), in a
  conversation the professional has not closed (``X-MSS-MES: FIN``), and only to the BAL(s)
  of that conversation;
* write first only to the ORG BAL of a pharmacie d'officine, with the prescription attached
  (a PDF or an image);
* never write to another patient, to an application (APP BAL), or outside the trust space.

At RCPT the headers are not known yet: what depends only on the recipient is decided there
(:meth:`PatientMailRules.recipient`), the rest after DATA (:meth:`PatientMailRules.message`).
Every refusal is ``550 5.7.1`` with the reason in French, then in English. The rules read the
annuaire and the conversation records through the two look-ups handed to them, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from mssante.auth.identity import Identity
from mssante.patients.conversations import Received, cited
from mssante.policy import Directory, DirectoryBal, MessageFacts, Recipient, Verdict, refuse

APP = "APP"
PATIENT_BAL_TYPE = "PAT"

# Attachments that can carry a prescription.
PRESCRIPTION_TYPES = ("application/pdf",)
PRESCRIPTION_MAIN_TYPES = ("image",)


class ReceivedLookup(Protocol):
    """What a patient received (``ConversationBook`` satisfies it)."""

    def received(self, patient_bal: str, message_ids: Iterable[str]) -> list[Received]: ...


def is_patient_bal(bal: DirectoryBal) -> bool:
    return bal.ins is not None or bal.type == PATIENT_BAL_TYPE


# Every refusal, French then English, by what refuses; ``{address}`` is the recipient's.
REFUSALS = {
    "patient": (
        "Les patients ne peuvent pas écrire à un autre patient (<{address}>)",
        "Patients may not write to another patient (<{address}>)",
    ),
    "application": (
        "Les patients ne peuvent pas écrire à une BAL applicative (<{address}>)",
        "Patients may not write to an application mailbox (APP BAL) (<{address}>)",
    ),
    "not_allowed": (
        "Les patients ne peuvent écrire qu'à une pharmacie ou répondre à un professionnel qui "
        "leur a écrit (<{address}>)",
        "Patients may only write to a pharmacy or reply to a professional who wrote to them (<{address}>)",
    ),
    "outside": (
        "Les patients n'écrivent qu'au sein de l'espace de confiance MSSanté (<{address}>)",
        "Patients may only write within the MSSanté trust space (<{address}>)",
    ),
    "never_received": (
        "Ce message ne répond à aucun message que vous avez reçu de <{address}>",
        "This message replies to no message you received from <{address}>",
    ),
    "closed": (
        "<{address}> a clos cette conversation (X-MSS-MES: FIN) ; vous ne pouvez plus y répondre",
        "<{address}> closed this conversation (X-MSS-MES: FIN); it accepts no further reply",
    ),
    "other_party": (
        "Une réponse ne va qu'aux BAL de sa conversation ({shown}), pas à <{address}>",
        "A reply goes only to the mailbox(es) of its conversation ({shown}), not to <{address}>",
    ),
    "no_prescription": (
        "Un premier message à la pharmacie <{address}> doit joindre l'ordonnance (PDF ou image)",
        "A first message to the pharmacy <{address}> must attach the prescription (PDF or image)",
    ),
}


def refusal(kind: str, address: str, parties: Iterable[str] = ()) -> Verdict:
    """The ``550 5.7.1`` of :data:`REFUSALS` ``kind`` for ``address`` (``parties``: those of the
    conversation, for ``other_party``)."""
    shown = ", ".join(f"<{p}>" for p in sorted(parties))
    french, english = REFUSALS[kind]
    return refuse(f"{french} / {english}".format(address=address, shown=shown))


def by_recipient(address: str, bal: DirectoryBal | None) -> Verdict | None:
    """What the recipient's BAL alone refuses, at RCPT and again after DATA: another patient,
    an application."""
    if bal is not None and is_patient_bal(bal):
        return refusal("patient", address)
    if bal is not None and bal.type == APP:
        return refusal("application", address)
    return None


def carries_prescription(facts: MessageFacts) -> bool:
    """At least one attachment that is a PDF or an image."""
    for content_type in facts.attachment_types:
        main, _, _ = content_type.partition("/")
        if content_type in PRESCRIPTION_TYPES or main in PRESCRIPTION_MAIN_TYPES:
            return True
    return False


class PatientMailRules:
    """The ``mssante.policy.PatientRules`` of this operator."""

    def __init__(self, directory: Directory, conversations: ReceivedLookup) -> None:
        self.directory = directory
        self.conversations = conversations

    def recipient(self, patient: Identity, sender: DirectoryBal, rcpt: DirectoryBal) -> Verdict | None:
        """RCPT: what the recipient alone decides (another patient, an application)."""
        return by_recipient(rcpt.address, rcpt)

    def outside(self, patient: Identity, address: str) -> Verdict:
        """RCPT: a domain that is not a whitelisted operator of the trust space."""
        return refusal("outside", address)

    def message(
        self, patient: Identity, sender: DirectoryBal, recipients: tuple[Recipient, ...], facts: MessageFacts
    ) -> Verdict | None:
        """DATA: each recipient must be in an open conversation the message replies to, or be a
        pharmacy receiving a prescription."""
        refs = cited(facts.in_reply_to, facts.references)
        received = self.conversations.received(sender.key, refs)
        open_parties = {r.professional_bal for r in received if not r.closed}
        closed_parties = {r.professional_bal for r in received if r.closed}
        for rcpt in recipients:
            bal = self.directory.bal(rcpt.address)
            refused = by_recipient(rcpt.address, bal)
            if refused is not None:
                return refused
            if rcpt.address in open_parties:
                continue
            pharmacy = bal is not None and bal.active and bal.is_pharmacy_org
            if pharmacy and carries_prescription(facts):
                continue
            if rcpt.address in closed_parties:
                return refusal("closed", rcpt.address)
            if pharmacy:
                return refusal("no_prescription", rcpt.address)
            if not refs:
                return refusal("not_allowed", rcpt.address)
            if not received:
                return refusal("never_received", rcpt.address)
            return refusal("other_party", rcpt.address, open_parties | closed_parties)
        return None
