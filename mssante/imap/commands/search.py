"""SEARCH and UID SEARCH, evaluated batch by batch by :mod:`mssante.imap.search`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mssante.imap import search
from mssante.imap.commands.base import META_BATCH, Bad
from mssante.imap.commands.values import Command, Search

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_search(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, Search)
    if args.returns is not None:
        raise Bad("SEARCH RETURN (ESEARCH) is not supported")
    largest_uid = box.uids[-1] if box.uids else 0
    found: list[int] = []
    candidates = [(i + 1, box.entries[uid]) for i, uid in enumerate(box.uids)]
    for start in range(0, len(candidates), META_BATCH):
        batch = [(n, e) for n, e in candidates[start : start + META_BATCH] if not e.expunged]
        for n, entry in await search.select(session.store, args.key, batch, box.exists, largest_uid):
            found.append(entry.uid if command.uid else n)
    await session.untagged("SEARCH" + "".join(f" {n}" for n in found))
    return f"{'UID ' if command.uid else ''}SEARCH completed"
