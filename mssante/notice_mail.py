"""The e-mail channel of notifications: a short notice to the patient's personal address.

A notice says that something happened, who did it and when — worded like the patient's trace —
and links to the patient space; it never carries a title, a document type or any content (the
patient reads those after logging in). It leaves through the outbound relay reserved for
notices (``[notify] smtp_host``…), never through the trust-space relay, which only sends inside
the MSSanté space. Blocking (SMTP): called from the notifier's worker thread.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from zoneinfo import ZoneInfo

from mssante.config import NotifySection

PARIS = ZoneInfo("Europe/Paris")
MONTHS = (
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
)  # fmt: skip
Namer = Callable[[str], str | None]


def _when(at: datetime) -> str:
    local = at.astimezone(PARIS)
    return f"le {local.day} {MONTHS[local.month - 1]} {local.year} à {local:%H:%M}"


def _who(actor: str | None, namer: Namer | None) -> str:
    if not actor:
        return "un professionnel de santé"
    if len(actor) == 15:  # an INS: the patient or their legal representative deposited it
        return "vous ou votre représentant légal"
    named = namer(actor) if namer is not None else None
    return named or f"le professionnel n° {actor}"


def wording(kind: str, data: dict[str, str], at: datetime, namer: Namer | None) -> tuple[str, str]:
    """The subject and the first sentence of a notice of ``kind`` (no medical content)."""
    who, when = _who(data.get("actor"), namer), _when(at)
    if kind == "dmp.document.added":
        return (
            "Un nouveau document est disponible dans votre dossier",
            f"Un nouveau document est disponible dans votre dossier médical, ajouté par {who} {when}.",
        )
    if kind == "dmp.break_glass":
        return (
            "Accès d'urgence à votre dossier",
            f"{who[:1].upper()}{who[1:]} a utilisé l'accès d'urgence (bris de glace) à votre dossier "
            f"médical {when}. La raison donnée est dans « Qui a accédé à mon dossier ».",
        )
    if kind == "dmp.record.consulted":
        return (
            "Votre dossier a été consulté",
            f"{who[:1].upper()}{who[1:]} a consulté votre dossier médical {when}.",
        )
    if kind == "patient.message.received":
        sender = data.get("sender") or "un professionnel de santé"
        return "Vous avez reçu un nouveau message", f"Vous avez reçu un nouveau message de {sender} {when}."
    return "Du nouveau dans votre espace santé", f"Il y a du nouveau dans votre espace santé ({when})."


def build(
    kind: str, data: dict[str, str], at: datetime, *, sender: str, to: str, link: str, namer: Namer | None
) -> EmailMessage:
    subject, sentence = wording(kind, data, at, namer)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(at)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(
        f"Bonjour,\n\n{sentence}\n\n"
        f"Pour en savoir plus, connectez-vous à votre espace santé : {link}\n\n"
        "Ce message ne contient aucune information médicale. Ne répondez pas : cette adresse "
        "n'est pas lue. Vous pouvez choisir comment être prévenu dans « Profil et notifications ».\n"
    )
    return msg


def send(config: NotifySection, msg: EmailMessage, to: str) -> None:
    """Hand one notice to the configured relay; raises ``OSError``/``smtplib.SMTPException``."""
    assert config.smtp_host is not None and config.smtp_from is not None
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.timeout_seconds) as smtp:
        if config.smtp_starttls:
            context = ssl.create_default_context(
                cafile=str(config.smtp_ca_file) if config.smtp_ca_file else None
            )
            smtp.starttls(context=context)
        if config.smtp_username and config.smtp_password:
            smtp.login(config.smtp_username, config.smtp_password)
        smtp.send_message(msg, from_addr=config.smtp_from, to_addrs=[to])
