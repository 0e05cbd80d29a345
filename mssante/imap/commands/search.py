"""SEARCH and UID SEARCH, evaluated batch by batch by :mod:`mssante.imap.search`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mssante.imap import search
from mssante.imap.commands.base import META_BATCH, Bad
from mssante.imap.commands.values import Command, Search, SearchKey

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
    modseq = ""
    if _uses_modseq(args.key):
        # RFC 7162 §3.1.5: the highest MODSEQ of the messages found.
        session.enable("CONDSTORE")
        uids = set(found) if command.uid else {box.uids[n - 1] for n in found}
        if uids:
            modseq = f" (MODSEQ {max(box.entries[u].modseq for u in uids)})"
    await session.untagged("SEARCH" + "".join(f" {n}" for n in found) + modseq)
    return f"{'UID ' if command.uid else ''}SEARCH completed"


def _uses_modseq(key: SearchKey) -> bool:
    return key.name == "MODSEQ" or any(isinstance(k, SearchKey) and _uses_modseq(k) for k in key.args)
