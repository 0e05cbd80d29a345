"""The patients' part in mail flow: a delivery hook (``mssante.smtp.hooks.DeliveryHook``).

In the accepting transaction it records conversations: a professional's message to a local
patient BAL opens or continues one (``X-MSS-MES: FIN`` closes it); a patient's accepted message
joins the conversation it answers (or, to a pharmacy, opens one). The record commits with
the message or not at all, so the patient rules never see a conversation without its message.

After the commit it notifies each patient who received the message: recipient INS, time and
the sender's display name, never a subject or a body (``mssante.notify``). The name is the
annuaire's (the professional's name, the structure and service of an ORG BAL) whenever the
sender is published there, so a sender cannot pose as someone else in a notification; only
for senders unknown to the annuaire is the ``From:`` display name used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session

from mssante.auth.identity import IdentityKind
from mssante.notify import Event, Notifier
from mssante.patients.conversations import cited, message_id, record_from_patient, record_to_patient
from mssante.patients.rules import is_patient_bal
from mssante.policy import Directory, DirectoryBal

if TYPE_CHECKING:
    from mssante.smtp.hooks import DeliveryContext

EVENT_KIND = "patient.message.received"


@dataclass(frozen=True)
class _Patient:
    address: str  # comparison key
    ins: str


class _Person(Protocol):
    @property
    def nom(self) -> str | None: ...
    @property
    def prenom(self) -> str | None: ...


class _Structure(Protocol):
    @property
    def raison_sociale(self) -> str | None: ...


class _Bal(DirectoryBal, Protocol):
    @property
    def structure_identifier(self) -> str | None: ...
    @property
    def service(self) -> str | None: ...


class Annuaire(Directory, Protocol):
    """The look-ups the hook needs (``annuaire.lookup.Annuaire`` satisfies it)."""

    def bal(self, address: str) -> _Bal | None: ...
    def professional(self, idnat: str) -> _Person | None: ...
    def structure(self, identifier: str) -> _Structure | None: ...


def annuaire_name(annuaire: Annuaire, bal: _Bal) -> str | None:
    """How the annuaire names a BAL's holder: « Claire MARTIN », « Pharmacie du Parc — Cardiologie »."""
    if bal.professional_idnat:
        person = annuaire.professional(bal.professional_idnat)
        if person is not None:
            return " ".join(p for p in (person.prenom, person.nom) if p) or None
        return None
    structure = annuaire.structure(bal.structure_identifier) if bal.structure_identifier else None
    if structure is None or not structure.raison_sociale:
        return None
    if bal.service:
        return f"{structure.raison_sociale} — {bal.service}"
    return structure.raison_sociale


def display_name(from_header: str | None, fallback: str) -> str:
    """The From: display name (RFC 2047 decoded), else the address."""
    for name, address in getaddresses([from_header or ""]):
        if name:
            try:
                return str(make_header(decode_header(name))).strip() or address or fallback
            except (ValueError, LookupError):
                return name.strip()
        if address:
            return address
    return fallback


class PatientHook:
    def __init__(
        self,
        directory: Annuaire,
        notifier: Notifier,
        channel: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.directory = directory
        self.notifier = notifier
        # The patient's chosen notification channel by INS (``dmp.service.notice_channel``).
        self.channel = channel

    def _patients(self, ctx: DeliveryContext) -> list[_Patient]:
        found = []
        for rcpt in ctx.recipients:
            if rcpt.route != "local":
                continue
            bal = self.directory.bal(rcpt.address)
            if bal is not None and is_patient_bal(bal):
                found.append(_Patient(rcpt.address, bal.ins or rcpt.address.partition("@")[0].upper()))
        return found

    @staticmethod
    def _professional(ctx: DeliveryContext) -> str:
        if ctx.sender_bal is not None:
            return ctx.sender_bal.key
        froms = ctx.facts.from_addresses
        return (froms[0] if froms else ctx.mail_from).strip().strip("<>").lower()

    def in_transaction(self, ctx: DeliveryContext) -> Callable[[Session], None] | None:
        msgid = message_id(ctx.message_id)
        if msgid is None:
            return None
        refs = cited(ctx.facts.in_reply_to, ctx.facts.references)
        actor = ctx.identity.principal if ctx.identity is not None else f"relay:{ctx.mail_from}"
        identity = ctx.identity
        if identity is not None and identity.kind is IdentityKind.PATIENT and ctx.sender_bal is not None:
            patient_bal = ctx.sender_bal.key
            parties = [r.address for r in ctx.recipients]

            def from_patient(session: Session) -> None:
                for party in parties:
                    record_from_patient(
                        session,
                        patient_bal=patient_bal,
                        professional_bal=party,
                        msgid=msgid,
                        refs=refs,
                        actor=actor,
                    )

            return from_patient
        patients = self._patients(ctx)
        professional = self._professional(ctx)
        sender = self.directory.bal(professional)
        if not patients or (sender is not None and is_patient_bal(sender)):
            return None
        fin = ctx.facts.headers.get("x-mss-mes", "").strip().upper() == "FIN"

        def to_patients(session: Session) -> None:
            for patient in patients:
                record_to_patient(
                    session,
                    patient_bal=patient.address,
                    professional_bal=professional,
                    msgid=msgid,
                    refs=refs,
                    fin=fin,
                    actor=actor,
                )

        return to_patients

    def after_commit(self, ctx: DeliveryContext) -> Coroutine[Any, Any, None] | None:
        patients = [p for p in self._patients(ctx) if p.address in ctx.uids]
        return self._notify(ctx, patients) if patients else None

    async def _notify(self, ctx: DeliveryContext, patients: list[_Patient]) -> None:
        professional = self._professional(ctx)
        bal = self.directory.bal(professional)
        name = (bal is not None and annuaire_name(self.directory, bal)) or display_name(
            ctx.facts.headers.get("from"), professional
        )
        for patient in patients:
            routing = await asyncio.to_thread(self.channel, patient.ins) if self.channel else {}
            data = {"ins": patient.ins, "sender": name, **routing}
            self.notifier.notify(Event(EVENT_KIND, patient.address, data))
