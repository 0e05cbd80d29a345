"""FETCH and UID FETCH: streams what :mod:`mssante.imap.fetch` renders, sets ``\\Seen`` and
notes content reads for the audit trail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from delegation.rights import Right
from mssante.imap.commands.base import META_BATCH, Bad, No
from mssante.imap.commands.values import Command, Fetch, FetchItem, SequenceSet
from mssante.imap.fetch import (
    UnknownEncoding,
    column_blocks,
    column_lines,
    column_only,
    has_content,
    message_response,
    meta_part,
    metadata_response,
    missing_structures,
    needs_meta,
    wanted_structures,
)
from mssante.imap.render import compress
from mssante.store.types import MessageGone

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_fetch(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, Fetch)
    changed_since, vanished = _modifiers(session, command, args.modifiers)
    # Changes already heard of first (new messages, flags, and which messages are gone), so
    # that a message expunged elsewhere is known as such before its content is looked for.
    await session.sync(allow_expunge=command.uid, with_uid=command.uid)
    items = args.items
    if changed_since is not None or any(i.name == "MODSEQ" for i in items):
        session.enable("CONDSTORE")
    if changed_since is None and column_only(items):
        # ``UID FETCH 1:* (FLAGS)``: nothing to read, nothing to mark \Seen; rendered a block
        # at a time from the columns, without a (number, UID) pair per message.
        if command.uid and not any(i.name == "UID" for i in items):
            items = (FetchItem("UID"), *items)
        for lines in column_blocks(box, session.spans(command, args.sequence), items):
            await session.channel.write(lines)
        return f"{'UID ' if command.uid else ''}FETCH completed"
    targets = session.resolve(command, args.sequence)
    if changed_since is not None:
        if vanished:
            await _vanished_earlier(session, args.sequence, changed_since)
        targets = [(n, uid) for n, uid in targets if box.entries[uid].modseq > changed_since]
        if not any(i.name == "MODSEQ" for i in items):
            items = (*items, FetchItem("MODSEQ"))
    if (command.uid or changed_since is not None) and not any(i.name == "UID" for i in items):
        items = (FetchItem("UID"), *items)
    sets_seen = not box.readonly and Right.KEEP_SEEN in session.box_rights and any(i.sets_seen for i in items)
    if sets_seen and not any(i.name == "FLAGS" for i in items):
        items = (*items, FetchItem("FLAGS"))
    if sets_seen and box.condstore and not any(i.name == "MODSEQ" for i in items):
        items = (*items, FetchItem("MODSEQ"))  # RFC 7162 §3.1: an implicit flag change says its MODSEQ
    # RFC 2180 §4.1: a message expunged by another session keeps its number until this
    # session is told; what is still known of it (flags, size, dates, a structure already
    # rendered, a content still stored for another mailbox) is returned, and only what can no
    # longer be read is left out, the command then ending NO [EXPUNGEISSUED].
    live = targets
    if sets_seen:
        unseen = [uid for _, uid in live if "\\Seen" not in box.entries[uid].flags]
        if unseen:
            changed = await session.store.store_flags(
                box.folder.id,
                unseen,
                "add",
                ["\\Seen"],
                actor=session.actor,
                bal=session.box_bal,
                source=session.source,
            )
            for uid, flags, modseq in changed:
                box.set_flags(uid, flags, modseq)
    with_meta = needs_meta(items)
    content = has_content(items)
    gone = 0
    for i in range(0, len(live), META_BATCH):
        batch = live[i : i + META_BATCH]
        metas: dict[int, Any] = {}
        if with_meta:
            if content:
                uids = [uid for _, uid in batch]
                wanted = wanted_structures(session.store, box.entries, uids, items, utf8=session.utf8)
            else:
                wanted = missing_structures(box.entries, [uid for _, uid in batch], items, utf8=session.utf8)
            metas = await session.store.meta(wanted, meta_part(items)) if wanted else {}
            # Expunged by another session meanwhile and its content collected: left out, and
            # the command ends NO [EXPUNGEISSUED] (RFC 2180 §4.1.2); the session goes on.
            missing = {b for b in wanted if b not in metas}
            if missing:
                kept = [(n, uid) for n, uid in batch if box.entries[uid].blob_id not in missing]
                gone += len(batch) - len(kept)
                batch = kept
        if not content:
            block = None if metas else column_lines(box.entries, batch, items, utf8=session.utf8)
            if block is None:
                block = b"".join(
                    metadata_response(n, entry, items, metas.get(entry.blob_id), utf8=session.utf8)
                    for n, entry in ((n, box.entries[uid]) for n, uid in batch)
                )
            await session.channel.write(block)
            continue
        for n, uid in batch:
            entry = box.entries[uid]
            try:
                pieces = await message_response(
                    session.store, n, entry, items, metas.get(entry.blob_id), utf8=session.utf8
                )
            except MessageGone:
                gone += 1
                continue
            except UnknownEncoding as exc:
                raise No(str(exc), "UNKNOWN-CTE") from None
            await session.channel.write_pieces(pieces)
    if content and live:
        session.note_read((session.box_bal, box.folder.name), [uid for _, uid in live])
    if gone:
        raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
    return f"{'UID ' if command.uid else ''}FETCH completed"


def _modifiers(session: Session, command: Command, modifiers: tuple[object, ...]) -> tuple[int | None, bool]:
    """``(CHANGEDSINCE n)`` (RFC 7162 §3.1.4) and ``VANISHED`` (§3.2.6, UID FETCH only,
    QRESYNC enabled, with CHANGEDSINCE)."""
    changed_since = None
    vanished = False
    items = [str(m).upper() if not isinstance(m, tuple) else m for m in modifiers]
    while items:
        name = items.pop(0)
        if name == "CHANGEDSINCE" and items:
            try:
                changed_since = int(str(items.pop(0)))
            except ValueError:
                raise Bad("CHANGEDSINCE needs a mod-sequence") from None
        elif name == "VANISHED":
            vanished = True
        else:
            raise Bad(f"Unknown FETCH modifier {name}")
    if vanished and not (command.uid and changed_since is not None and "QRESYNC" in session.enabled):
        raise Bad("VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC")
    return changed_since, vanished


async def _vanished_earlier(session: Session, uids: SequenceSet, since: int) -> None:
    box = session.selected()
    changes = await session.store.changes_since(box.folder.id, since)
    largest = box.folder.uidnext
    gone = sorted({c.uid for c in changes if c.kind == "expunge" and uids.contains(c.uid, largest)})
    if gone:
        await session.untagged(b"VANISHED (EARLIER) " + compress(gone).encode())
