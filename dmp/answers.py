"""The answer to a deposit, written exactly as the ANS guide "transmission au LPS de documents CDA
provenant d'un courriel MSSanté" shows it (page "structure du MDN", and the plain mail used when
no MDN was asked for).

The bytes are composed here rather than by ``email.mime`` so that what goes out is what the
guide shows, part for part:

* an RFC 8098 MDN, only when the message carried ``Disposition-Notification-To`` and that
  address is the ``Return-Path`` (RFC 8098 §2.1: otherwise no automatic MDN, to avoid loops):
  ``multipart/report; report-type=disposition-notification`` with (1) ``text/plain``, the code
  and libellé on error, (2) ``message/disposition-notification`` with ``Original-Recipient``,
  ``Final-Recipient``, ``Original-Message-ID`` and ``Disposition``, (3) ``message/rfc822``, the
  original message, then the original ``IHE_XDM.zip`` and PDF re-attached;
* otherwise, on error only, a plain ``multipart/mixed`` mail: the text, the original message
  (``message_original.eml``) and the same attachments;
* subject: the original ``XDM/1.0/DDM+…`` subject exactly on success,
  ``[KO Intégration système !][<code>] XDM/1.0/DDM+…`` on error;
* ``From``: the receiving BAL (gateway or patient BAL); ``To``: the requester.

``Disposition`` carries the libellé exactly as the guide lists it, in UTF-8 (``8bit``): the
libellé of 904 is not ASCII and the guide gives no ASCII form.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header, decode_header, make_header
from email.message import Message
from email.utils import encode_rfc2231, formatdate, make_msgid, parseaddr

# applicationErrorCondition (guide v1.1.3, error-codes), exact libellés.
LABELS = {
    900: "Version du document incorrecte lors d'une demande de remplacement/suppression",
    901: "Auteur non autorisé à remplacer ou supprimer un document",
    902: "Identifiant patient inconnu",
    903: "INS non présent dans le document",
    904: "L'INS transmis ne correspond pas exactement à celui stocké dans la base du consommateur",
    905: "L'INS transmis n'est pas complet",
    906: "Erreur 'Autre'",
}
KO_PREFIX = "[KO Intégration système !]"
PROCESSED = "automatic-action/MDN-sent-automatically; processed"
CRLF = b"\r\n"


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Answer:
    """A message to send back: envelope sender and recipient, and the raw RFC 5322 bytes."""

    mail_from: str
    rcpt_to: str
    raw: bytes


@dataclass(frozen=True)
class Outcome:
    """What the answer reports: ``code`` None on success."""

    code: int | None
    text: str  # the human part


def label(code: int) -> str:
    return LABELS.get(code, LABELS[906])


def subject_of(original: Message) -> str:
    """The original subject, decoded (RFC 2047), as the sender wrote it."""
    raw = original.get("Subject")
    if raw is None:
        return "XDM/1.0/DDM"
    return " ".join(str(make_header(decode_header(str(raw)))).split())


def answer_subject(original: Message, code: int | None) -> str:
    subject = subject_of(original)
    return subject if code is None else f"{KO_PREFIX}[{code}] {subject}"


def disposition(code: int | None) -> str:
    return PROCESSED if code is None else f"{PROCESSED}/Error: {code}^{label(code)}"


def _header(name: str, value: str) -> bytes:
    if value.isascii():
        return f"{name}: {value}".encode() + CRLF
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode()}".encode() + CRLF


def _filename(name: str) -> str:
    return f'filename="{name}"' if name.isascii() else f"filename*={encode_rfc2231(name, 'utf-8')}"


def _part(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    return b"".join(f"{k}: {v}".encode() + CRLF for k, v in headers) + CRLF + body


def _base64(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + CRLF


def _crlf(raw: bytes | bytearray) -> bytes:
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    return CRLF.join(lines).rstrip(b"\r\n") + CRLF


def _attachment_parts(attached: Sequence[Attachment]) -> list[bytes]:
    parts = []
    for item in attached:
        ctype = f'{item.content_type}; name="{item.name}"' if item.name.isascii() else item.content_type
        parts.append(
            _part(
                [
                    ("Content-Type", ctype),
                    ("Content-Transfer-Encoding", "base64"),
                    ("Content-Disposition", f"attachment; {_filename(item.name)}"),
                ],
                _base64(item.data),
            )
        )
    return parts


def compose(
    original_raw: bytes | bytearray,
    original: Message,
    outcome: Outcome,
    *,
    receiving: str,
    return_path: str | None,
    attached: Sequence[Attachment],
) -> Answer | None:
    """The MDN or the plain error mail for ``original`` (or None: nothing to send)."""
    if (original.get("Auto-Submitted") or "no").strip().lower() != "no":
        return None  # never answer an automatic message (loops)
    dnt = parseaddr(str(original.get("Disposition-Notification-To") or ""))[1]
    requester = return_path or parseaddr(str(original.get("From") or ""))[1]
    mdn = bool(dnt) and (not return_path or dnt.lower() == return_path.lower())
    if not mdn and outcome.code is None:
        return None
    to = dnt if mdn else requester
    if not to:
        return None
    boundary = f"=_mssante_{secrets.token_hex(12)}"
    text = outcome.text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    original_body = _crlf(original_raw)
    rfc822_cte = "7bit" if original_body.isascii() else "8bit"
    parts = [
        _part([("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "8bit")], text)
    ]
    if mdn:
        target = receiving
        original_recipient = str(original.get("Original-Recipient") or f"rfc822;{target}").strip()
        fields = [f"Original-Recipient: {original_recipient}", f"Final-Recipient: rfc822;{target}"]
        if original.get("Message-ID"):
            fields.append(f"Original-Message-ID: {str(original['Message-ID']).strip()}")
        fields.append(f"Disposition: {disposition(outcome.code)}")
        report = "\r\n".join(fields).encode() + CRLF
        parts.append(
            _part(
                [("Content-Type", "message/disposition-notification"), ("Content-Transfer-Encoding", "8bit")],
                report,
            )
        )
        parts.append(
            _part(
                [("Content-Type", "message/rfc822"), ("Content-Transfer-Encoding", rfc822_cte)], original_body
            )
        )
        content_type = f'multipart/report; report-type=disposition-notification; boundary="{boundary}"'
    else:
        parts.append(
            _part(
                [
                    ("Content-Type", "message/rfc822"),
                    ("Content-Transfer-Encoding", rfc822_cte),
                    ("Content-Disposition", 'attachment; filename="message_original.eml"'),
                ],
                original_body,
            )
        )
        content_type = f'multipart/mixed; boundary="{boundary}"'
    parts += _attachment_parts(attached)
    head = b"".join(
        [
            _header("From", receiving),
            _header("To", to),
            _header("Subject", answer_subject(original, outcome.code)),
            _header("Date", formatdate(localtime=False)),
            _header("Message-ID", make_msgid(domain=receiving.rsplit("@", 1)[-1])),
        ]
    )
    original_id = str(original.get("Message-ID") or "").strip()
    if original_id:
        head += _header("In-Reply-To", original_id) + _header("References", original_id)
    head += _header("Auto-Submitted", "auto-replied") + _header("MIME-Version", "1.0")
    head += _header("Content-Type", content_type) + _header("Content-Transfer-Encoding", "8bit")
    delimiter = f"--{boundary}".encode()
    body = b"".join(delimiter + CRLF + part + CRLF for part in parts) + delimiter + b"--" + CRLF
    return Answer(receiving, to, head + CRLF + body)
