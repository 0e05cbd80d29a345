"""SELECT, EXAMINE, CLOSE, UNSELECT: opening and leaving a mailbox."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.audit import AuditEvent
from mssante.imap.commands.base import Bad, No, flag_right
from mssante.imap.commands.values import Command, MailboxArg, SequenceSet
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.reader import parse_sequence_set
from mssante.imap.render import compress
from mssante.imap.snapshots import Snapshot, snapshots
from mssante.imap.states import SELECTED
from mssante.store.columns import read_columns
from mssante.store.feed import Subscription
from mssante.store.types import FolderInfo, FolderNotFound

if TYPE_CHECKING:
    from mssante.imap.session import Session

_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_WRITE_RIGHTS = frozenset(
    {Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES, Right.EXPUNGE, Right.INSERT}
)


async def cmd_select(session: Session, command: Command) -> str:
    assert isinstance(command.args, MailboxArg)
    qresync = _select_params(session, command.args.params)
    previous = session.box  # its snapshot stays alive for a re-SELECT of the same folder
    if session.box is not None:
        session.deselect()
        await session.untagged("OK [CLOSED] Previous mailbox closed")  # RFC 7162 §3.2.11
    session.deselect()
    bal, name, rights = await session.open(command.args.mailbox, Right.READ)
    # RFC 4314 §4: without any right to change the mailbox it opens read-only.
    readonly = command.name == "EXAMINE" or not (rights.rights & _WRITE_RIGHTS)
    try:
        folder, subscription, snapshot = await _open_folder(session, bal, name)
    except FolderNotFound:
        raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
    del previous
    box = SelectedMailbox.from_snapshot(
        folder, snapshot, readonly=readonly, recent_from=await _recent_from(session, folder, readonly)
    )
    box.with_recent = session.recent_flag
    box.condstore, box.qresync = session.condstore, "QRESYNC" in session.enabled
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
    if session.rev2:  # RFC 9051 §6.3.2: the mailbox's name as LIST gives it
        await session.untagged(b'LIST () "/" ' + session.wire_name(session.shown(bal, folder.name)))
    await session.untagged(f"OK [HIGHESTMODSEQ {folder.highestmodseq}] Highest")
    session.announce_modseq = False
    if qresync is not None and qresync.uidvalidity == folder.uidvalidity:
        await _resynchronise(session, box, qresync)
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


async def _open_folder(session: Session, bal: str, name: str) -> tuple[FolderInfo, Subscription, Snapshot]:
    """The folder, a subscription to its changes, and its messages as a shared snapshot.

    Whatever the session will see must be read once subscribed, so that every later change
    reaches it through the subscription. When this process held a snapshot of the folder, its
    id is known: the session subscribes to it first, then one read of the folder row tells
    whether that snapshot is still the folder's state (same HIGHESTMODSEQ: no change since it
    was read). Otherwise (a first SELECT, a changed, renamed or replaced folder) the rows are
    read after the subscription and kept for the next sessions."""
    registry = snapshots(session.store)
    hub = session.store.hub
    known = registry.folder_id(bal, name)
    subscription = hub.subscribe(known) if known is not None else None
    try:
        folder = await session.store.folder(bal, name)
        found = registry.get(folder) if known == folder.id else None
        if found is not None:
            assert subscription is not None
            return folder, subscription, found
        if subscription is None or subscription.folder_id != folder.id:
            if subscription is not None:
                subscription.close()
            subscription = hub.subscribe(folder.id)
        read = await session.store.read(lambda s: read_columns(s, folder.id), kept=True)
        return folder, subscription, registry.add(folder, read)
    except BaseException:
        if subscription is not None:
            subscription.close()
        raise


@dataclass(frozen=True)
class _Qresync:
    """``QRESYNC (uidvalidity modseq [known-uids])`` of SELECT/EXAMINE (RFC 7162 §3.2.5)."""

    uidvalidity: int
    modseq: int
    known: SequenceSet | None


def _select_params(session: Session, params: tuple[object, ...]) -> _Qresync | None:
    """CONDSTORE (turns CONDSTORE on) and QRESYNC (needs ENABLE QRESYNC first)."""
    qresync = None
    items = list(params)
    while items:
        name = str(items.pop(0)).upper()
        if name == "CONDSTORE":
            session.enable("CONDSTORE")
        elif name == "QRESYNC" and items and isinstance(items[0], tuple):
            if "QRESYNC" not in session.enabled:
                raise Bad("QRESYNC must be enabled first (ENABLE QRESYNC)")
            value = items.pop(0)
            assert isinstance(value, tuple)
            qresync = _qresync_param(value)
        else:
            raise Bad(f"Unknown SELECT parameter {name}")
    return qresync


def _qresync_param(value: tuple[object, ...]) -> _Qresync:
    try:
        uidvalidity, modseq = int(str(value[0])), int(str(value[1]))
        known = None
        if len(value) > 2 and not isinstance(value[2], tuple):
            known = parse_sequence_set(str(value[2]))
    except (IndexError, ValueError):
        raise Bad("Invalid QRESYNC parameter") from None
    if uidvalidity <= 0:
        raise Bad("Invalid QRESYNC parameter")
    return _Qresync(uidvalidity, modseq, known)


async def _resynchronise(session: Session, box: SelectedMailbox, qresync: _Qresync) -> None:
    """What changed since the client's MODSEQ: ``VANISHED (EARLIER)`` for the messages gone,
    ``FETCH (UID FLAGS MODSEQ)`` for those changed (RFC 7162 §3.2.5.1)."""
    changes = await session.store.changes_since(box.folder.id, qresync.modseq)
    largest = box.folder.uidnext
    gone = sorted(
        {
            c.uid
            for c in changes
            if c.kind == "expunge" and (qresync.known is None or qresync.known.contains(c.uid, largest))
        }
    )
    if gone:
        await session.untagged(b"VANISHED (EARLIER) " + compress(gone).encode())
    for n, uid in enumerate(box.uids, 1):
        entry = box.entries[uid]
        if entry.modseq > qresync.modseq:
            await session.channel.write(box.flags_update(n, entry, with_uid=True) + b"\r\n")


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
