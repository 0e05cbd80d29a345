"""The patient's BAL as the patient space shows it: received messages (INBOX) and sent ones
(Sent), parsed for reading. Opening a message sets ``\\Seen`` through the store, which traces it
in the BAL's audit trail like an IMAP client's read."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime

from mssante.audit import AuditEvent
from mssante.store.store import MessageStore
from mssante.store.types import FolderNotFound

FOLDERS = {"recus": "INBOX", "envoyes": "Sent"}
MAX_TEXT = 100_000


@dataclass
class Mail:
    folder: str  # recus | envoyes
    uid: int
    subject: str
    sender: str
    sender_address: str
    recipients: list[str]
    date: datetime
    seen: bool
    message_id: str | None = None
    references: str = ""
    text: str = ""
    attachments: list[str] = field(default_factory=list)


def _parse(folder: str, uid: int, raw: bytes, seen: bool, internaldate: datetime, full: bool) -> Mail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    froms = getaddresses([str(msg.get("from", ""))])
    name, address = froms[0] if froms else ("", "")
    try:
        date = parsedate_to_datetime(str(msg["date"])) if msg["date"] else internaldate
    except (TypeError, ValueError):
        date = internaldate
    mail = Mail(
        folder=folder,
        uid=uid,
        subject=str(msg.get("subject", "")) or "(sans objet)",
        sender=name or address,
        sender_address=address.lower(),
        recipients=[a for _, a in getaddresses([str(v) for v in msg.get_all("to", [])])],
        date=date,
        seen=seen,
        message_id=str(msg.get("message-id", "")).strip() or None,
        references=" ".join(str(msg.get(h, "")) for h in ("references",)).strip(),
    )
    if full:
        body = msg.get_body(preferencelist=("plain", "html"))
        if body is not None:
            try:
                content = body.get_content()
            except (LookupError, ValueError):
                content = ""
            mail.text = (
                content[:MAX_TEXT]
                if body.get_content_type() == "text/plain"
                else ("(Ce message n'a qu'une version HTML, non affichée ici par sécurité.)")
            )
        mail.attachments = [part.get_filename() or "pièce jointe" for part in msg.iter_attachments()]
    return mail


class PatientMailbox:
    def __init__(self, store: MessageStore, bal: str) -> None:
        self.store, self.bal = store, bal

    async def list(self, folder: str) -> list[Mail]:
        try:
            info = await self.store.folder(self.bal, FOLDERS[folder])
        except FolderNotFound:
            return []
        rows = await self.store.messages(info.id)
        out = []
        for row in reversed(rows[-200:]):
            head = await self.store.body(row.blob_id, 0, 16 * 1024)
            out.append(
                _parse(
                    folder,
                    row.uid,
                    head.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n",
                    "\\Seen" in row.flags,
                    row.internaldate,
                    False,
                )
            )
        return out

    async def open(self, folder: str, uid: int, actor: str, source: str) -> Mail | None:
        try:
            info = await self.store.folder(self.bal, FOLDERS[folder])
        except FolderNotFound:
            return None
        rows = [r for r in await self.store.messages(info.id, uid - 1) if r.uid == uid]
        if not rows:
            return None
        row = rows[0]
        raw = await self.store.body(row.blob_id)
        if "\\Seen" not in row.flags:
            await self.store.store_flags(
                info.id, [uid], "add", ["\\Seen"], actor=actor, bal=self.bal, source=source
            )
        await self.store.record(
            AuditEvent(
                actor=actor,
                action="message.read",
                bal=self.bal,
                object=f"{FOLDERS[folder]}/{uid}",
                source=source,
                detail={"listener": "web"},
            )
        )
        return _parse(folder, uid, raw, True, row.internaldate, True)

    async def keep_sent(self, raw: bytes, actor: str, source: str) -> None:
        """A copy of what the patient sent from the web, in their Sent folder (as a client would)."""
        await self.store.append(self.bal, "Sent", raw, flags=("\\Seen",), actor=actor, source=source)
