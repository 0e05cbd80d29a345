"""EXPUNGE and UID EXPUNGE (UIDPLUS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.commands.base import No
from mssante.imap.commands.values import Command, Expunge

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_expunge(session: Session, command: Command) -> str:
    box = session.selected()
    assert isinstance(command.args, Expunge)
    if box.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    if Right.EXPUNGE not in session.box_rights:
        raise No("Permission denied: expunge (e) is not granted", "NOPERM")
    uids = None
    if command.args.uids is not None:
        uids = [uid for _, uid in box.resolve(command.args.uids, uid=True)]
    removed = await session.store.expunge(
        box.folder.id, uids, actor=session.actor, bal=session.box_bal, source=session.source
    )
    for line in box.expunge_lines(removed):
        await session.channel.write(line + b"\r\n")
    return "EXPUNGE completed"
