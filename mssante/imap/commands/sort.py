"""SORT and THREAD (RFC 5256; REFERENCES and ORDEREDSUBJECT), and their UID forms: the search
program selects, :mod:`mssante.imap.threading` orders by each message's keys
(:mod:`mssante.store.sortkeys`, kept by :mod:`mssante.imap.sortkeys`)."""

from __future__ import annotations

from array import array
from operator import itemgetter
from typing import TYPE_CHECKING

from mssante.imap import threading
from mssante.imap.commands.base import META_BATCH, Bad
from mssante.imap.commands.search import esearch, matching
from mssante.imap.commands.values import Command, SortThread
from mssante.imap.sortkeys import key_cache
from mssante.store import sortkeys
from mssante.store.core import INLINE_READ_META
from mssante.store.sortkeys import SortKeys

if TYPE_CHECKING:
    from mssante.imap.session import Session


# SORT keys known without the message's content (INTERNALDATE and size are in the columns).
_WITHOUT_CONTENT = frozenset({"ARRIVAL", "SIZE", "REVERSE"})
# ESORT's result options (RFC 5267 §3): those of ESEARCH but SAVE, which is SEARCH's.
_RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT"})


async def _keys(session: Session, blobs: list[int], *, threads: bool) -> list[SortKeys]:
    """Each content's keys, in the order of ``blobs`` (with the thread links for ``threads``).
    They come from the store's :class:`~mssante.imap.sortkeys.KeyCache`; the store is asked
    only for the contents it lacks (their sealed keys, :func:`mssante.store.sortkeys.read`);
    a content collected meanwhile has none."""
    cache = key_cache(session.store)
    keys = cache.lookup(blobs, threads=threads)
    lacking = sorted({b for b in blobs if b not in keys})
    reader = session.store.reader
    for start in range(0, len(lacking), META_BATCH):
        batch = lacking[start : start + META_BATCH]
        read = await session.store.read(
            lambda db, batch=batch: sortkeys.read(reader, db, batch, threads=threads),
            small=len(batch) <= INLINE_READ_META,
            kept=True,
        )
        for blob_id, stored in read.items():
            keys[blob_id] = stored
            cache.add(blob_id, stored)
    no_keys = threading.NO_KEYS
    return [keys.get(blob_id, no_keys) for blob_id in blobs]


async def cmd_sort(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    criteria, returns = command.args.criteria, command.args.returns
    if returns is not None and not _RETURN_OPTIONS.issuperset(returns):
        unknown = sorted(set(returns) - _RETURN_OPTIONS)[0]
        raise Bad(f"Unknown SORT return option {unknown}")
    found = await matching(session, command.args.key)
    table = session.selected().entries
    uids = array("I", (uid for _, uid in found))
    keys: list[SortKeys] = []
    if not _WITHOUT_CONTENT.issuperset(criteria):
        keys = await _keys(session, table.column(uids, "blob"), threads=False)
    order = threading.sort_order(criteria, len(found), keys, lambda name: table.column(uids, name))
    named = list(map(itemgetter(1 if command.uid else 0), found))  # UIDs or message numbers
    numbers = list(map(named.__getitem__, order))
    if returns is None:
        await session.untagged(" ".join(["SORT", *map(str, numbers)]))
    else:  # RETURN () means RETURN (ALL), as for SEARCH
        await session.untagged(esearch(command, numbers, returns or ("ALL",), ordered=True))
    return f"{'UID ' if command.uid else ''}SORT completed"


async def _items(session: Session, command: Command, *, threads: bool) -> list[threading.Item]:
    """The matching messages with what threading them needs: their keys (with the thread
    links for REFERENCES), sizes, dates and content ids from the mailbox's columns."""
    assert isinstance(command.args, SortThread)
    found = await matching(session, command.args.key)
    table = session.selected().entries
    uids = array("I", (uid for _, uid in found))
    sizes, dates = table.column(uids, "size"), table.column(uids, "date")
    keys = await _keys(session, table.column(uids, "blob"), threads=threads)
    return [
        threading.Item(n, uid if command.uid else n, sizes[at], float(dates[at]), keys[at])
        for at, (n, uid) in enumerate(found)
    ]


async def cmd_thread(session: Session, command: Command) -> str:
    assert isinstance(command.args, SortThread)
    ordered_subject = command.args.algorithm == "ORDEREDSUBJECT"
    items = await _items(session, command, threads=not ordered_subject)
    roots = threading.ordered_subject(items) if ordered_subject else threading.references(items)
    await session.untagged("THREAD " + threading.render(roots) if roots else "THREAD")
    return f"{'UID ' if command.uid else ''}THREAD completed"
