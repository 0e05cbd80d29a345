"""SORT and THREAD (RFC 5256; REFERENCES and ORDEREDSUBJECT), and their UID forms: the search
program selects, :mod:`mssante.imap.threading` orders from the cached structures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mssante.imap import threading
from mssante.imap.commands.base import META_BATCH
from mssante.imap.commands.search import matching
from mssante.imap.commands.values import Command, SortThread

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def _items(session: Session, command: Command) -> list[threading.Item]:
    assert isinstance(command.args, SortThread)
    found = await matching(session, command.args.key)
    items: list[threading.Item] = []
    for start in range(0, len(found), META_BATCH):
        batch = found[start : start + META_BATCH]
        metas: dict[int, Any] = await session.store.meta([e.blob_id for _, e in batch])
        items += [
            threading.Item(n, e.uid if command.uid else n, e.size, e.internaldate, metas.get(e.blob_id))
            for n, e in batch
        ]
    return items


async def cmd_sort(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    ordered = threading.sort(await _items(session, command), command.args.criteria)
    await session.untagged("SORT" + "".join(f" {n}" for n in ordered))
    return f"{'UID ' if command.uid else ''}SORT completed"


async def cmd_thread(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    items = await _items(session, command)
    if command.args.algorithm == "ORDEREDSUBJECT":
        roots = threading.ordered_subject(items)
    else:
        roots = threading.references(items)
    await session.untagged("THREAD " + threading.render(roots) if roots else "THREAD")
    return f"{'UID ' if command.uid else ''}THREAD completed"
