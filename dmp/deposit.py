"""Deposit from a message: an accepted message carrying ``IHE_XDM.ZIP`` for a patient becomes
documents in the DMP, and the sender gets the answer the ANS guide describes.

The SMTP side calls :func:`deposit_message` after the message is committed (so a failed
deposit never loses mail) with the raw bytes, the authenticated sender and the envelope
recipients; it delivers the returned answer, if any. The answer is:

* an RFC 8098 MDN when the message carried ``Disposition-Notification-To``:
  ``Disposition: automatic-action/MDN-sent-automatically; processed`` on success, or
  ``…; processed/Error: <code>^<libellé>`` on error, with ``Original-Message-ID``,
  ``Original-Recipient`` and ``Final-Recipient``, and the zip and PDF re-attached;
* otherwise, on error only, a plain human-readable mail;
* on error the subject is ``[KO Intégration système !][<code>] <original subject>`` (the
  original being ``XDM/1.0/DDM+<libellé> <NOM> <prénom> <date>``).

Who feeds: a professional sender must be the author named in METADATA.XML; an application
(DPI, client certificate) sends for the professionals it serves, so the author named in the
metadata is the acting professional — and must be registered in the annuaire, like anyone.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.utils import formatdate, make_msgid, parseaddr

from dmp.service import (
    E_INS_MISMATCH,
    E_NO_INS,
    E_OTHER,
    E_UNKNOWN_PATIENT,
    DMPError,
    DMPService,
    DocumentInfo,
    DocumentMeta,
    FeedItem,
    PatientInfo,
)
from dmp.xdm import ZIP_NAME, XdmPackage
from dmp.xdm_reader import Limits, XdmError, read
from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity

log = logging.getLogger("dmp.deposit")

LABELS = {
    900: "Version de document incorrecte",
    901: "Auteur non autorisé à remplacer ou supprimer le document",
    902: "Patient inconnu",
    903: "Absence d'INS qualifié",
    904: "INS différent de l'INS connu",
    905: "Traits d'identité INS incomplets",
    906: "Autre erreur",
}


@dataclass(frozen=True)
class Answer:
    """A message to send back: envelope sender and recipient, and the raw RFC 5322 bytes."""

    mail_from: str
    rcpt_to: str
    raw: bytes


@dataclass(frozen=True)
class DepositResult:
    code: int | None  # None: every document was deposited
    message: str
    documents: list[DocumentInfo] = field(default_factory=list)
    answer: Answer | None = None

    @property
    def ok(self) -> bool:
        return self.code is None


def _ascii(text: str) -> str:
    """MDN fields are US-ASCII (RFC 8098): the label without its accents."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _attachments(message: Message) -> tuple[bytes | None, list[tuple[str, str, bytes]]]:
    """The XDM zip, and every zip/PDF attachment (re-attached to the answer)."""
    zip_data: bytes | None = None
    kept: list[tuple[str, str, bytes]] = []
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
        kept.append((name or "document.pdf", "application/zip" if is_zip else "application/pdf", payload))
    return zip_data, kept


class Depositor:
    def __init__(self, service: DMPService) -> None:
        self.service = service
        self.settings = service.settings
        self.gateway = service.settings.dmp.gateway_address.lower()

    def _targets(self, recipients: list[str]) -> list[str]:
        suffix = "@" + self.settings.server.patient_domain.lower()
        return [r for r in recipients if r.lower() == self.gateway or r.lower().endswith(suffix)]

    def deposit(
        self, raw: bytes, *, sender: Identity, sender_bal: str, recipients: list[str]
    ) -> DepositResult | None:
        """Deposit the package of a message, or None when the message is not for the DMP."""
        targets = self._targets(recipients)
        if not targets:
            return None
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        zip_data, attached = _attachments(message)
        if zip_data is None and self.gateway not in (t.lower() for t in targets):
            return None  # an ordinary message to a patient
        source = f"mss:{message.get('Message-ID', '').strip()}"[:128]
        deposited: list[DocumentInfo] = []
        try:
            if zip_data is None:
                raise _Failure(E_OTHER, f"no {ZIP_NAME} attachment in a message to the DMP gateway")
            packages = self._read(zip_data)
            self._check_headers(message, packages, targets)
            for package in packages:
                patient = self._patient(package)
                deposited += self._feed(package, patient, sender, source)
            result = DepositResult(None, f"{len(deposited)} document(s) deposited", deposited)
        except _Failure as exc:
            log.info("DMP deposit of %s refused: %s %s", source, exc.code, exc)
            result = DepositResult(exc.code, str(exc), deposited)
        answer = self._answer(message, result, sender_bal, targets[0], attached)
        return DepositResult(result.code, result.message, result.documents, answer)

    # -- steps ----------------------------------------------------------------------------------
    def _read(self, data: bytes) -> list[XdmPackage]:
        try:
            return read(data, Limits.of(self.settings.dmp))
        except XdmError as exc:
            raise _Failure(exc.code, str(exc)) from None

    def _check_headers(self, message: Message, packages: list[XdmPackage], targets: list[str]) -> None:
        has_ins = (message.get("X-MSS-INS") or "").strip().upper()
        if has_ins == "N":
            raise _Failure(E_NO_INS, "the message declares no qualified INS (X-MSS-INS: N)")
        if has_ins not in ("", "O"):
            raise _Failure(E_OTHER, f"X-MSS-INS must be O or N, not {has_ins!r}")
        declared = message.get("X-MSS-CODECDA")
        cda_codes = {d.type_code for p in packages for d in p.documents if d.format == "CDA_R2"}
        if declared is not None:
            codes = {c.strip() for c in str(declared).split(",") if c.strip()}
            if codes != cda_codes:
                raise _Failure(
                    E_OTHER,
                    f"X-MSS-CODECDA ({', '.join(sorted(codes)) or 'empty'}) does not match the CDA "
                    f"type codes of the package ({', '.join(sorted(cda_codes)) or 'none'})",
                )
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
        given, stored_traits = package.patient, stored.traits
        differs = [
            name
            for name, a, b in (
                ("birth name", given.birth_name.upper(), stored_traits.birth_name.upper()),
                ("birth date", given.birth_date, stored_traits.birth_date),
                ("sex", given.sex, stored_traits.sex),
            )
            if a != b
        ]
        if differs or given.ins_oid != stored.ins_oid:
            what = ", ".join(differs) or "INS OID"
            raise _Failure(E_INS_MISMATCH, f"the package's INS identity differs from the stored one ({what})")
        return stored

    def _feed(
        self, package: XdmPackage, patient: PatientInfo, sender: Identity, source: str
    ) -> list[DocumentInfo]:
        """All documents of the package, or none: one author per package."""
        authors = {doc.author.idnat for doc in package.documents}
        if len(authors) != 1:
            raise _Failure(E_OTHER, "the documents of one package must have one author")
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
                ),
                doc.replaces,
            )
            for doc in package.documents
        ]
        try:
            return self.service.feed_many(
                self._acting(sender, authors.pop()), patient.ins, items, source=source
            )
        except DMPError as exc:
            raise _Failure(exc.code, str(exc)) from None

    @staticmethod
    def _acting(sender: Identity, author: str) -> Identity:
        if sender.kind is IdentityKind.PROFESSIONAL:
            if sender.id != author:
                raise _Failure(E_OTHER, f"the author {author} of the document is not the sender {sender.id}")
            return sender
        if sender.kind is IdentityKind.APPLICATION:
            try:
                return Identity.professional(author)
            except InvalidIdentity as exc:
                raise _Failure(E_OTHER, f"author: {exc}") from None
        raise _Failure(E_OTHER, f"a {sender.kind.value} identity may not feed the DMP")

    # -- answer ---------------------------------------------------------------------------------
    def _answer(
        self,
        original: Message,
        result: DepositResult,
        sender_bal: str,
        target: str,
        attached: list[tuple[str, str, bytes]],
    ) -> Answer | None:
        if (original.get("Auto-Submitted") or "no").strip().lower() != "no":
            return None  # never answer an automatic message (loops)
        dnt = parseaddr(str(original.get("Disposition-Notification-To") or ""))[1]
        if dnt == "" and result.ok:
            return None
        subject = str(original.get("Subject") or "XDM/1.0/DDM").strip()
        if not result.ok:
            subject = f"[KO Intégration système !][{result.code}] {subject}"
        if dnt:
            outer = self._mdn(original, result, target, subject, attached)
            to = dnt
        else:
            outer = self._error_mail(result, subject, attached)
            to = sender_bal
        outer["From"] = self.gateway
        outer["To"] = to
        outer["Subject"] = Header(
            subject if not result.ok else f"Accusé de traitement : {subject}", "utf-8"
        ).encode()
        outer["Date"] = formatdate(localtime=False)
        outer["Message-ID"] = make_msgid(domain=self.gateway.split("@", 1)[-1])
        original_id = str(original.get("Message-ID") or "").strip()
        if original_id:
            outer["In-Reply-To"] = original_id
            outer["References"] = original_id
        outer["Auto-Submitted"] = "auto-replied"
        return Answer(self.gateway, to, outer.as_bytes(policy=policy.compat32.clone(linesep="\r\n")))

    def _human(self, result: DepositResult) -> str:
        if result.ok:
            listed = "".join(f"\n - {d.title} ({d.type_code}, {d.unique_id})" for d in result.documents)
            return f"Le message a été intégré au DMP : {result.message}.{listed}\n"
        label = LABELS.get(result.code or E_OTHER, LABELS[E_OTHER])
        return (
            f"Le message n'a pas pu être intégré au DMP.\nCode : {result.code} ({label})\n"
            f"Motif : {result.message}\nLe message a bien été remis à ses destinataires.\n"
        )

    def _mdn(
        self,
        original: Message,
        result: DepositResult,
        target: str,
        subject: str,
        attached: list[tuple[str, str, bytes]],
    ) -> MIMEMultipart:
        outer = MIMEMultipart("report", report_type="disposition-notification")
        outer.attach(MIMEText(self._human(result), "plain", "utf-8"))
        disposition = "automatic-action/MDN-sent-automatically; processed"
        if not result.ok:
            label = LABELS.get(result.code or E_OTHER, LABELS[E_OTHER])
            disposition += f"/Error: {result.code}^{_ascii(label)}"
        original_recipient = str(original.get("Original-Recipient") or f"rfc822;{target}").strip()
        fields = [
            f"Reporting-UA: {self.settings.server.hostname}; mssante",
            f"Original-Recipient: {original_recipient}",
            f"Final-Recipient: rfc822;{target}",
        ]
        if original.get("Message-ID"):
            fields.append(f"Original-Message-ID: {str(original['Message-ID']).strip()}")
        fields.append(f"Disposition: {disposition}")
        report = MIMEBase("message", "disposition-notification")
        report.set_payload("\r\n".join(fields) + "\r\n")
        report["Content-Transfer-Encoding"] = "7bit"
        outer.attach(report)
        self._reattach(outer, attached)
        return outer

    def _error_mail(
        self, result: DepositResult, subject: str, attached: list[tuple[str, str, bytes]]
    ) -> MIMEMultipart:
        outer = MIMEMultipart("mixed")
        outer.attach(MIMEText(self._human(result), "plain", "utf-8"))
        self._reattach(outer, attached)
        return outer

    @staticmethod
    def _reattach(outer: MIMEMultipart, attached: list[tuple[str, str, bytes]]) -> None:
        for name, ctype, data in attached:
            part = MIMEApplication(data, ctype.split("/", 1)[1])
            part.add_header("Content-Disposition", "attachment", filename=name)
            outer.attach(part)


def deposit_message(
    service: DMPService, raw: bytes, *, sender: Identity, sender_bal: str, recipients: list[str]
) -> DepositResult | None:
    """Entry point for the SMTP layer (after commit); never raises for a bad package."""
    return Depositor(service).deposit(raw, sender=sender, sender_bal=sender_bal, recipients=recipients)


def build_message(
    package_zip: bytes,
    *,
    sender: str,
    to: str,
    subject: str,
    ins_qualified: bool = True,
    cda_codes: list[str] | None = None,
    notification_to: str | None = None,
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
    if notification_to:
        msg["Disposition-Notification-To"] = notification_to
    msg.set_content(body)
    msg.add_attachment(package_zip, maintype="application", subtype="zip", filename=ZIP_NAME)
    return msg
