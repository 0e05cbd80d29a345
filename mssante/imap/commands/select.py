"""SELECT, EXAMINE, CLOSE, UNSELECT: opening and leaving a mailbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.audit import AuditEvent
from mssante.imap.commands.base import Bad, No, flag_right
from mssante.imap.commands.values import Command, MailboxArg
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.render import flag_list
from mssante.imap.states import SELECTED
from mssante.store.store import FolderNotFound

if TYPE_CHECKING:
    from mssante.imap.session import Session

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
    box = SelectedMailbox.from_rows(folder, rows, readonly=readonly)
    session.box, session.subscription, session.state = box, subscription, SELECTED
    session.box_bal, session.box_rights = bal, rights
    flags = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *box.keywords()]
    await session.untagged(b"FLAGS " + flag_list(flags))
    settable = [f for f in flags[:5] if flag_right(f) in rights]
    if Right.WRITE_FLAGS in rights:
        settable.append("\\*")
    permanent = "()" if readonly else "(" + " ".join(settable) + ")"
    await session.untagged(f"OK [PERMANENTFLAGS {permanent}] Flags permitted")
    await session.untagged(f"{box.exists} EXISTS")
    await session.untagged("0 RECENT")
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


async def cmd_close(session: Session, command: Command) -> str:
    box = session.selected()
    if command.name == "CLOSE" and not box.readonly and Right.EXPUNGE in session.box_rights:
        await session.store.expunge(
            box.folder.id, actor=session.actor, bal=session.box_bal, source=session.source
        )
    session.deselect()
    return f"{command.name} completed"
