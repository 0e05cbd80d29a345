"""SELECT, EXAMINE, CLOSE, UNSELECT: opening and leaving a mailbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.audit import AuditEvent
from mssante.imap.commands.base import Bad, No, flag_right
from mssante.imap.commands.values import Command, MailboxArg
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.states import SELECTED
from mssante.store.store import FolderInfo, FolderNotFound

if TYPE_CHECKING:
    from mssante.imap.session import Session

_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_WRITE_RIGHTS = frozenset(
    {Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES, Right.EXPUNGE, Right.INSERT}
)


async def cmd_select(session: Session, command: Command) -> str:
    assert isinstance(command.args, MailboxArg)
    if command.args.params:
        raise Bad("SELECT parameters are not supported")
    session.deselect()
    bal, name, rights = await session.open(command.args.mailbox, Right.READ)
    # RFC 4314 §4: without any right to change the mailbox it opens read-only.
    readonly = command.name == "EXAMINE" or not (rights.rights & _WRITE_RIGHTS)
    try:
        folder = await session.store.folder(bal, name)
    except FolderNotFound:
        raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
    subscription = session.store.hub.subscribe(folder.id)
    rows = await session.store.messages(folder.id)
    box = SelectedMailbox.from_rows(
        folder, rows, readonly=readonly, recent_from=await _recent_from(session, folder, readonly)
    )
    box.with_recent = session.recent_flag
    session.box, session.subscription, session.state = box, subscription, SELECTED
    session.box_bal, session.box_rights = bal, rights
    box.keywords()
    settable = [f for f in _SYSTEM_FLAGS if flag_right(f) in rights]
    if Right.WRITE_FLAGS in rights:
        settable.append("\\*")
    box.permanent = tuple(settable)
    for line in box.flags_lines():
        await session.channel.write(line + b"\r\n")
    await session.untagged(f"{box.exists} EXISTS")
    if session.recent_flag:
        await session.untagged(f"{box.recent} RECENT")
    unseen = box.first_unseen()
    if unseen is not None:
        await session.untagged(f"OK [UNSEEN {unseen}] First unseen")
    await session.untagged(f"OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
    await session.untagged(f"OK [UIDNEXT {folder.uidnext}] Predicted next UID")
    session.trace(
        AuditEvent(
            actor=session.actor,
            action="folder.examine" if readonly else "folder.select",
            bal=bal,
            object=folder.name,
            source=session.source,
            detail={"messages": box.exists, **({} if rights.owner else {"delegated": True})},
        )
    )
    return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {command.name} completed"


async def _recent_from(session: Session, folder: FolderInfo, readonly: bool) -> int | None:
    """The first UID that is \\Recent to this session (RFC 3501 §2.3.2), None for none.

    SELECT takes the messages no session was told of yet; EXAMINE shows them without taking
    them (it changes nothing); an IMAP4rev2 session has no \\Recent at all (RFC 9051)."""
    if not session.recent_flag:
        return None
    if readonly:
        return folder.first_recent_uid
    if folder.first_recent_uid >= folder.uidnext:
        return None
    return await session.store.claim_recent(folder.id, folder.uidnext)


async def cmd_close(session: Session, command: Command) -> str:
    box = session.selected()
    if command.name == "CLOSE" and not box.readonly and Right.EXPUNGE in session.box_rights:
        await session.store.expunge(
            box.folder.id, actor=session.actor, bal=session.box_bal, source=session.source
        )
    session.deselect()
    return f"{command.name} completed"
