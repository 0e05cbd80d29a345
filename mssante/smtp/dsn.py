"""Delivery status notifications (RFC 3464): telling a sender what became of its message.

A DSN is a ``multipart/report; report-type=delivery-status`` message: a human part (French
and English, since readers are clinicians), the machine-readable ``message/delivery-status``
part, and the original header (never the body: it may hold health data the sender already
has).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, make_msgid


@dataclass(frozen=True)
class RecipientStatus:
    address: str
    action: str  # failed | delayed
    status: str  # RFC 3463, e.g. 5.7.1
    diagnostic: str  # the remote reply or our reason
    remote_mta: str | None = None


_TEXT = {
    "failed": (
        "Votre message n'a pas pu être remis aux destinataires suivants. / "
        "Your message could not be delivered to the following recipients.",
        "Non remis / Undelivered Mail Returned to Sender",
    ),
    "delayed": (
        "Votre message n'a pas encore pu être remis ; de nouvelles tentatives auront lieu. / "
        "Your message has not been delivered yet; delivery will be retried.",
        "Remise retardée / Delayed Mail (still being retried)",
    ),
}


# What is read of a stored message to quote its header: a header is rarely above a few KiB.
HEADER_READ = 256 * 1024


def header_block(raw: bytes) -> bytes:
    """The header of ``raw`` (which may be only the start of a message: whole lines only)."""
    end = raw.find(b"\r\n\r\n")
    return raw[: raw.rfind(b"\r\n") + 2] if end == -1 else raw[: end + 2]


def build(
    *,
    reporting_mta: str,
    sender: str,
    original: bytes,
    arrival: datetime,
    statuses: Sequence[RecipientStatus],
    now: datetime,
) -> bytes:
    """The DSN for one original message and the recipients it concerns (all failed or delayed)."""
    action = "failed" if any(s.action == "failed" for s in statuses) else "delayed"
    intro, subject = _TEXT[action]
    boundary = f"mssante-dsn-{uuid.uuid4().hex}"
    human = [intro, ""]
    for s in statuses:
        human.append(f"  <{s.address}> : {s.status} {s.diagnostic}")
    per_recipient = []
    for s in statuses:
        fields = [f"Final-Recipient: rfc822; {s.address}", f"Action: {s.action}", f"Status: {s.status}"]
        if s.remote_mta:
            fields.append(f"Remote-MTA: dns; {s.remote_mta}")
        fields.append(f"Diagnostic-Code: smtp; {s.diagnostic}")
        fields.append(f"Last-Attempt-Date: {format_datetime(now)}")
        per_recipient.append("\r\n".join(fields))
    status_part = "\r\n\r\n".join(
        [f"Reporting-MTA: dns; {reporting_mta}\r\nArrival-Date: {format_datetime(arrival)}", *per_recipient]
    )
    text = (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {format_datetime(now)}\r\n"
        f"Message-ID: {make_msgid(domain=reporting_mta)}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n" + "\r\n".join(human) + "\r\n"
        f"\r\n--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n" + status_part + "\r\n"
        f"\r\n--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
    )
    return text.encode("utf-8") + header_block(original) + f"\r\n--{boundary}--\r\n".encode()
