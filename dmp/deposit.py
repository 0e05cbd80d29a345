"""Deposit from a message: an accepted message carrying ``IHE_XDM.ZIP`` for a patient becomes
documents in the DMP (or replaces or deletes them), and the sender gets the answer the ANS
guide describes (:mod:`dmp.answers`).

The SMTP side calls :func:`deposit_message` after the message is committed (so a failed
deposit never loses mail) with the raw bytes, the authenticated sender, its BAL, the envelope
sender (``Return-Path``) and the envelope recipients; it delivers the returned answer, if any.

The package decides (:mod:`dmp.xdm_reader`): the INS and its traits come from the CDA headers
and are compared with the stored identity (902 unknown, 903 no INS or not qualified, 904 any
difference, 905 incomplete). The declarative headers ``X-MSS-INS``, ``X-MSS-CODECDA`` and
``X-MSS-NIL`` are recorded on each document and in the trace; a header that disagrees with
the package is traced and reported in the answer's text, never decisive.

Who may deposit (:func:`dmp.rules.may_deposit_for`): the author's own BAL (the professional or a
delegate the messaging policy let send from it), or an ORG/APP BAL of the author's structure.
Replacement (``RPLC``) and deletion (``UpdateAvailabilityStatus`` → ``Deprecated``) need the
author or a member of the author's organisation (901) and the current version (900).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import formatdate, make_msgid
from typing import Any

from annuaire.identifiers import structure_number
from dmp import answers, rules
from dmp.answers import Answer, Attachment, Outcome
from dmp.models import INS_OIDS, PRODUCTION_INS_OIDS
from dmp.service import (
    E_INS_MISMATCH,
    E_OTHER,
    E_UNKNOWN_PATIENT,
    E_VERSION,
    DMPError,
    DMPService,
    DocumentInfo,
    DocumentMeta,
    FeedItem,
    PatientInfo,
)
from dmp.xdm import ZIP_NAME, XdmPackage, XdmPatient
from dmp.xdm_reader import Limits, XdmError, read
from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity
from mssante.store.spooled import Raw

log = logging.getLogger("dmp.deposit")

__all__ = ["Answer", "DepositResult", "Depositor", "build_message", "deposit_message"]


@dataclass(frozen=True)
class MssHeaders:
    """The MSSanté declarative headers of the message (Référentiel #2), as sent."""

    ins: str | None
    codecda: str | None
    nil: str | None

    @classmethod
    def of(cls, message: Message) -> MssHeaders:
        def get(name: str) -> str | None:
            value = message.get(name)
            return " ".join(str(value).split()) or None if value is not None else None

        return cls(get("X-MSS-INS"), get("X-MSS-CODECDA"), get("X-MSS-NIL"))

    def as_detail(self) -> dict[str, str | None]:
        return {"x_mss_ins": self.ins, "x_mss_codecda": self.codecda, "x_mss_nil": self.nil}


@dataclass(frozen=True)
class DepositResult:
    code: int | None  # None: every request of the package was carried out
    message: str
    documents: list[DocumentInfo] = field(default_factory=list)
    answer: Answer | None = None
    deleted: list[DocumentInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code is None


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _attachments(message: Message) -> tuple[bytes | None, list[Attachment]]:
    """The XDM zip, and every zip/PDF attachment (re-attached to the answer), in order."""
    zip_data: bytes | None = None
    kept: list[Attachment] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        name = part.get_filename() or ""
        ctype = part.get_content_type()
        is_zip = name.upper() == ZIP_NAME
        if not (is_zip or ctype == "application/pdf" or name.lower().endswith(".pdf")):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if is_zip and zip_data is None:
            zip_data = payload
        kept.append(
            Attachment(name or "document.pdf", "application/zip" if is_zip else "application/pdf", payload)
        )
    return zip_data, kept


def _norm(value: object) -> str:
    return " ".join(str(value or "").split()).upper()


def identity_differences(given: XdmPatient, stored: PatientInfo) -> list[str]:
    """The INS traits (and matricule, OID) that differ; birthplace only when both sides have it."""
    t = stored.traits
    pairs = [
        ("matricule", given.ins, stored.ins),
        ("INS OID", given.ins_oid, stored.ins_oid),
        ("birth name", _norm(given.birth_name), _norm(t.birth_name)),
        ("first given name", _norm(given.first_given_name), _norm(t.first_given_name)),
        ("given names", _norm(given.given_names), _norm(t.given_names)),
        ("birth date", given.birth_date, t.birth_date),
        ("sex", _norm(given.sex), _norm(t.sex)),
    ]
    if given.birthplace and t.birthplace:
        pairs.append(("birthplace", _norm(given.birthplace), _norm(t.birthplace)))
    return [name for name, a, b in pairs if a != b]


def dmp_targets(service: DMPService, recipients: list[str]) -> list[str]:
    """The recipients that make a message one for the DMP: the gateway, patients' BALs."""
    gateway = service.settings.dmp.gateway_address.lower()
    suffix = "@" + service.settings.server.patient_domain.lower()
    return [r for r in recipients if r.lower() == gateway or r.lower().endswith(suffix)]


class Depositor:
    def __init__(self, service: DMPService) -> None:
        self.service = service
        self.settings = service.settings
        self.gateway = service.settings.dmp.gateway_address.lower()
        self.ins_oids = INS_OIDS if service.settings.dmp.test_ins_oids else PRODUCTION_INS_OIDS

    def _targets(self, recipients: list[str]) -> list[str]:
        return dmp_targets(self.service, recipients)

    def deposit(
        self,
        raw: bytes | bytearray,
        *,
        sender: Identity,
        sender_bal: str,
        recipients: list[str],
        return_path: str | None = None,
    ) -> DepositResult | None:
        """Deposit the package of a message, or None when the message is not for the DMP."""
        targets = self._targets(recipients)
        if not targets:
            return None
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        zip_data, attached = _attachments(message)
        if zip_data is None and self.gateway not in (t.lower() for t in targets):
            return None  # an ordinary message to a patient
        headers = MssHeaders.of(message)
        source = f"mss:{message.get('Message-ID', '').strip()}"[:128]
        notes: list[str] = []
        deposited: list[DocumentInfo] = []
        deleted: list[DocumentInfo] = []
        try:
            if zip_data is None:
                raise _Failure(E_OTHER, f"no {ZIP_NAME} attachment in a message to the DMP gateway")
            packages = self._read(zip_data)
            notes += self._header_notes(headers, packages)
            self._check_patient_bal(packages, targets)
            for package in packages:
                patient = self._patient(package)
                acting, structures = self._acting(sender, sender_bal, package, patient.ins, source)
                detail: dict[str, Any] = {"sender": sender.principal, "sender_bal": sender_bal}
                detail |= {**headers.as_detail(), "notes": notes}
                deposited += self._feed(package, patient, acting, headers, structures, source, detail)
                deleted += self._delete(package, patient, acting, structures, source, detail)
            done = f"{len(deposited)} document(s) deposited" + (
                f", {len(deleted)} deleted" if deleted else ""
            )
            result = DepositResult(None, done, deposited, None, deleted, notes)
        except _Failure as exc:
            log.info("DMP deposit of %s refused: %s %s", source, exc.code, exc)
            result = DepositResult(exc.code, str(exc), deposited, None, deleted, notes)
        outcome = Outcome(result.code, self._human(message, result))
        answer = answers.compose(
            raw, message, outcome, receiving=targets[0], return_path=return_path, attached=attached
        )
        return DepositResult(result.code, result.message, result.documents, answer, result.deleted, notes)

    # -- steps ----------------------------------------------------------------------------------
    def _read(self, data: bytes) -> list[XdmPackage]:
        try:
            return read(data, Limits.of(self.settings.dmp), self.ins_oids)
        except XdmError as exc:
            raise _Failure(exc.code, str(exc)) from None

    @staticmethod
    def _header_notes(headers: MssHeaders, packages: list[XdmPackage]) -> list[str]:
        """Where the declarative headers disagree with the package (reported, not decisive)."""
        notes = []
        if headers.ins not in (None, "O", "N"):
            notes.append(f"X-MSS-INS vaut {headers.ins!r} (attendu O ou N)")
        elif headers.ins == "N":
            notes.append("X-MSS-INS: N alors que le paquet contient un INS qualifié (le paquet fait foi)")
        elif headers.ins is None:
            notes.append("X-MSS-INS absent (le paquet contient un INS)")
        cda_codes = sorted(
            {d.cda_code or d.type_code for p in packages for d in p.documents if d.format == "CDA_R2"}
        )
        declared = sorted({c.strip() for c in (headers.codecda or "").split(",") if c.strip()})
        if headers.codecda is not None and declared != cda_codes:
            notes.append(
                f"X-MSS-CODECDA ({', '.join(declared) or 'vide'}) ne correspond pas aux codes des CDA "
                f"du paquet ({', '.join(cda_codes) or 'aucun'}) (le paquet fait foi)"
            )
        elif headers.codecda is None and cda_codes:
            notes.append(f"X-MSS-CODECDA absent (codes des CDA du paquet : {', '.join(cda_codes)})")
        return notes

    def _check_patient_bal(self, packages: list[XdmPackage], targets: list[str]) -> None:
        suffix = "@" + self.settings.server.patient_domain.lower()
        for target in targets:
            if target.lower().endswith(suffix):
                ins = target.split("@", 1)[0].upper()
                for package in packages:
                    if package.patient.ins != ins:
                        raise _Failure(
                            E_INS_MISMATCH,
                            f"the package is for INS {package.patient.ins}, the message for {ins}",
                        )

    def _patient(self, package: XdmPackage) -> PatientInfo:
        try:
            stored = self.service.patient(package.patient.ins)
        except DMPError as exc:
            raise _Failure(exc.code if exc.code else E_UNKNOWN_PATIENT, str(exc)) from None
        for given in package.identities or (package.patient,):
            differs = identity_differences(given, stored)
            if differs:
                raise _Failure(
                    E_INS_MISMATCH,
                    f"the INS identity of the package differs from the stored one ({', '.join(differs)})",
                )
        return stored

    def _acting(
        self, sender: Identity, sender_bal: str, package: XdmPackage, ins: str, source: str
    ) -> tuple[Identity, frozenset[str]]:
        """The professional the documents are deposited as (their author), and the structures
        of the sending BAL; a sender not allowed for this author is refused and traced."""
        authors = {doc.author.idnat for doc in package.documents}
        if len(authors) != 1:
            raise _Failure(E_OTHER, "the documents of one package must have one author")
        author = authors.pop()
        bal = self.service.annuaire.bal(sender_bal)
        sending = (
            rules.SendingBal(
                bal.address, bal.type, bal.professional_idnat, bal.structure_identifier, bal.responsible_idnat
            )
            if bal is not None and bal.active
            else None
        )
        structures = frozenset(
            {structure_number(sending.structure)} if sending is not None and sending.structure else set()
        )
        decision = rules.may_deposit_for(sending, author, self.service.structures_of(author))
        if sender.kind is IdentityKind.PATIENT:
            decision = rules.Decision(False, "a patient identity may not feed the DMP for a professional")
        if not decision:
            try:
                self.service.refuse_deposit(
                    sender, decision.reason, ins=ins, source=source,
                    detail={"sender_bal": sender_bal, "author": author},
                )  # fmt: skip
            except DMPError as exc:
                raise _Failure(E_OTHER, str(exc)) from None
        if sender.kind is IdentityKind.PROFESSIONAL and sender.id == author:
            return sender, structures
        try:
            return Identity.professional(author), structures
        except InvalidIdentity as exc:
            raise _Failure(E_OTHER, f"author: {exc}") from None

    def _feed(
        self,
        package: XdmPackage,
        patient: PatientInfo,
        acting: Identity,
        headers: MssHeaders,
        structures: frozenset[str],
        source: str,
        detail: dict[str, Any],
    ) -> list[DocumentInfo]:
        """All documents of the package, or none (those only naming a deletion are not fed)."""
        doomed = set(package.deletions)
        items = [
            FeedItem(
                doc.content,
                DocumentMeta(
                    type_code=doc.type_code,
                    title=doc.title,
                    format=doc.format,
                    mime_type=doc.mime_type,
                    created_at=doc.created_at,
                    unique_id=doc.unique_id or None,
                    author_structure=doc.author.structure,
                    flags=doc.flags,
                    entry_uuid=doc.entry_uuid or None,
                    mss_ins=headers.ins,
                    mss_codecda=headers.codecda,
                    mss_nil=headers.nil,
                ),
                doc.replaces,
            )
            for doc in package.documents
            if not ({doc.unique_id, doc.entry_uuid} & doomed)
        ]
        if not items:
            return []
        try:
            return self.service.feed_many(
                acting, patient.ins, items, source=source, structures=structures, detail=detail
            )
        except DMPError as exc:
            raise _Failure(exc.code, str(exc)) from None

    def _delete(
        self,
        package: XdmPackage,
        patient: PatientInfo,
        acting: Identity,
        structures: frozenset[str],
        source: str,
        detail: dict[str, Any],
    ) -> list[DocumentInfo]:
        done = []
        for ref in package.deletions:
            unique_id = self.service.document_ref(patient.ins, ref)
            if unique_id is None:
                raise _Failure(E_VERSION, f"no document {ref} of this patient to delete")
            try:
                done.append(
                    self.service.delete(
                        acting,
                        unique_id,
                        reason="deletion requested by message",
                        source=source,
                        structures=structures,
                        detail=detail,
                    )
                )
            except DMPError as exc:
                raise _Failure(exc.code, str(exc)) from None
        return done

    # -- the human part of the answer -------------------------------------------------------------
    @staticmethod
    def _human(message: Message, result: DepositResult) -> str:
        subject = answers.subject_of(message)
        notes = "".join(f"\nRemarque : {n}" for n in result.notes)
        if result.ok:
            listed = "".join(f"\n - {d.title} ({d.type_code}, {d.unique_id})" for d in result.documents)
            gone = "".join(f"\n - supprimé : {d.title} ({d.unique_id})" for d in result.deleted)
            return f"Le message « {subject} » a été intégré au DMP : {result.message}.{listed}{gone}{notes}\n"
        code = result.code or E_OTHER
        return (
            f"Le message « {subject} » n'a pas pu être intégré automatiquement au DMP "
            f"pour la raison suivante :\n{code} {answers.label(code)}\nDétail : {result.message}{notes}\n"
            "Le message a bien été remis à ses destinataires.\n"
        )


def deposit_message(
    service: DMPService,
    raw: Raw,
    *,
    sender: Identity,
    sender_bal: str,
    recipients: list[str],
    return_path: str | None = None,
) -> DepositResult | None:
    """Entry point for the SMTP layer (after commit); never raises for a bad package. A
    message spooled to a file (a big one) is read into memory here, to be parsed."""
    return Depositor(service).deposit(
        raw if isinstance(raw, bytes | bytearray) else bytes(raw),
        sender=sender,
        sender_bal=sender_bal,
        recipients=recipients,
        return_path=return_path,
    )


def build_message(
    package_zip: bytes,
    *,
    sender: str,
    to: str,
    subject: str,
    ins_qualified: bool = True,
    cda_codes: list[str] | None = None,
    notification_to: str | None = None,
    nil: str | None = None,
    body: str = "Document transmis par messagerie sécurisée de santé.",
) -> EmailMessage:
    """A message carrying an XDM package as the ANS guide describes (for send-xdm and tests).

    Serialise it with ``as_bytes(policy=email.policy.SMTP)``: SMTP wants CRLF line ends.
    """
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.split("@", 1)[-1])
    msg["X-MSS-INS"] = "O" if ins_qualified else "N"
    if cda_codes:
        msg["X-MSS-CODECDA"] = ",".join(cda_codes)
    if nil:
        msg["X-MSS-NIL"] = nil
    if notification_to:
        msg["Disposition-Notification-To"] = notification_to
    msg.set_content(body)
    msg.add_attachment(package_zip, maintype="application", subtype="zip", filename=ZIP_NAME)
    return msg
