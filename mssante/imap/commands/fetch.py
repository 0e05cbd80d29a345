"""FETCH and UID FETCH: streams what :mod:`mssante.imap.fetch` renders, sets ``\\Seen`` and
notes content reads for the audit trail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from delegation.rights import Right
from mssante.imap.commands.base import META_BATCH, Bad, No
from mssante.imap.commands.values import Command, Fetch, FetchItem
from mssante.imap.fetch import (
    has_content,
    message_response,
    meta_part,
    metadata_response,
    missing_structures,
    needs_meta,
)

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_fetch(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, Fetch)
    if args.modifiers:
        raise Bad("FETCH modifiers are not supported")
    targets = session.resolve(command, args.sequence)
    items = args.items
    if command.uid and not any(i.name == "UID" for i in items):
        items = (FetchItem("UID"), *items)
    sets_seen = not box.readonly and Right.KEEP_SEEN in session.box_rights and any(i.sets_seen for i in items)
    if sets_seen and not any(i.name == "FLAGS" for i in items):
        items = (*items, FetchItem("FLAGS"))
    live = [(n, uid) for n, uid in targets if not box.entries[uid].expunged]
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
    for i in range(0, len(live), META_BATCH):
        batch = live[i : i + META_BATCH]
        metas: dict[int, Any] = {}
        if with_meta:
            entries = [box.entries[uid] for _, uid in batch]
            wanted = [e.blob_id for e in entries] if content else missing_structures(entries, items)
            metas = await session.store.meta(wanted, meta_part(items)) if wanted else {}
        if not content:
            await session.channel.write(
                b"".join(
                    metadata_response(
                        n, box.entries[uid], items, metas.get(box.entries[uid].blob_id), utf8=session.utf8
                    )
                    for n, uid in batch
                )
            )
            continue
        for n, uid in batch:
            entry = box.entries[uid]
            pieces = await message_response(
                session.store, n, entry, items, metas.get(entry.blob_id), utf8=session.utf8
            )
            await session.channel.write_pieces(pieces)
    if content and live:
        session.note_read((session.box_bal, box.folder.name), [uid for _, uid in live])
    if len(live) < len(targets):
        raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
    return f"{'UID ' if command.uid else ''}FETCH completed"
