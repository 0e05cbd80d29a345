"""SORT and THREAD (RFC 5256; REFERENCES and ORDEREDSUBJECT), and their UID forms: the search
program selects, :mod:`mssante.imap.threading` orders from the cached structures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mssante.imap import threading
from mssante.imap.commands.base import META_BATCH
from mssante.imap.commands.search import matching
from mssante.imap.commands.values import Command, SortThread

if TYPE_CHECKING:
    from mssante.imap.session import Session


# SORT keys known without the message's structure (INTERNALDATE and size are in the columns).
_WITHOUT_STRUCTURE = frozenset({"ARRIVAL", "SIZE", "REVERSE"})


async def _items(
    session: Session, command: Command, structure: Literal["none", "envelope", "all"]
) -> list[threading.Item]:
    """The matching messages with what ordering them needs: ``structure`` is ``"envelope"``
    (SORT, ORDEREDSUBJECT: parsing the envelope alone is cheaper), ``"all"`` (REFERENCES
    reads the References header too) or ``"none"`` (SORT by arrival and size)."""
    assert isinstance(command.args, SortThread)
    found = await matching(session, command.args.key)
    entries = session.selected().entries
    items: list[threading.Item] = []
    only = None if structure == "all" else structure
    for start in range(0, len(found), META_BATCH):
        batch = [(n, entries[uid]) for n, uid in found[start : start + META_BATCH]]
        metas: dict[int, Any] = (
            {} if structure == "none" else await session.store.meta([e.blob_id for _, e in batch], only)
        )
        items += [
            threading.Item(n, e.uid if command.uid else n, e.size, e.internaldate, metas.get(e.blob_id))
            for n, e in batch
        ]
    return items


async def cmd_sort(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    criteria = command.args.criteria
    structure: Literal["none", "envelope"] = "none" if _WITHOUT_STRUCTURE.issuperset(criteria) else "envelope"
    ordered = threading.sort(await _items(session, command, structure), criteria)
    await session.untagged("SORT" + "".join(f" {n}" for n in ordered))
    return f"{'UID ' if command.uid else ''}SORT completed"


async def cmd_thread(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    ordered_subject = command.args.algorithm == "ORDEREDSUBJECT"
    items = await _items(session, command, "envelope" if ordered_subject else "all")
    roots = threading.ordered_subject(items) if ordered_subject else threading.references(items)
    await session.untagged("THREAD " + threading.render(roots) if roots else "THREAD")
    return f"{'UID ' if command.uid else ''}THREAD completed"
