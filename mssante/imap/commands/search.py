"""SEARCH and UID SEARCH, evaluated batch by batch by :mod:`mssante.imap.search`."""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

from mssante.imap import search, searchcolumns
from mssante.imap.commands.base import META_BATCH, Bad
from mssante.imap.commands.values import Command, Search, SearchKey, SequenceSet
from mssante.imap.mailbox import Entry
from mssante.imap.render import compress

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def matching(session: Session, key: SearchKey) -> list[tuple[int, int]]:
    """(message number, UID) of the messages a search program matches (SEARCH, SORT, THREAD).

    A program without header or body keys is answered from the mailbox's columns
    (:mod:`mssante.imap.searchcolumns`), with no view on the rows; any other is tested
    message by message, batch by batch (:mod:`mssante.imap.search`)."""
    box = session.selected()
    key = _with_saved(key, box.saved)
    if searchcolumns.answerable(key):
        at = searchcolumns.positions(box, key)
        return list(zip(map((1).__add__, at), map(box.uids.__getitem__, at), strict=True))
    largest_uid = box.uids[-1] if box.uids else 0
    found: list[tuple[int, Entry]] = []
    candidates = [(i + 1, box.entries[uid]) for i, uid in enumerate(box.uids)]
    for start in range(0, len(candidates), META_BATCH):
        batch = [(n, e) for n, e in candidates[start : start + META_BATCH] if not e.expunged]
        found += await search.select(session.store, key, batch, box.exists, largest_uid)
    return [(n, entry.uid) for n, entry in found]


async def cmd_search(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, Search)
    returns = _return_options(args.returns)
    if returns is None and session.rev2:
        returns = ("ALL",)  # RFC 9051 §7.3.4: an IMAP4rev2 session is answered with ESEARCH
    save = returns is not None and "SAVE" in returns
    if save:
        box.saved = []  # a SEARCH that fails leaves an empty result (RFC 5182 §2.1)
    matched = await matching(session, args.key)
    found = list(map(itemgetter(1 if command.uid else 0), matched))  # UIDs or message numbers
    if save:
        assert returns is not None
        kept = matched
        if matched and not {"ALL", "COUNT"} & set(returns) and {"MIN", "MAX"} & set(returns):
            kept = ([matched[0]] if "MIN" in returns else []) + ([matched[-1]] if "MAX" in returns else [])
        box.saved = sorted({uid for _, uid in kept})
        returns = tuple(r for r in returns if r != "SAVE")
        if not returns:
            return f"{'UID ' if command.uid else ''}SEARCH completed"  # SAVE alone answers nothing
    highest = None
    if _uses_modseq(args.key):
        # RFC 7162 §3.1.5: the highest MODSEQ of the messages returned (with ESEARCH, of
        # those MIN/MAX name, or of all found for ALL and COUNT).
        session.enable("CONDSTORE")
        returned = set(found)
        if returns is not None and found and not {"ALL", "COUNT"} & set(returns):
            returned = {min(found)} if "MIN" in returns else set()
            returned |= {max(found)} if "MAX" in returns else set()
        uids = returned if command.uid else {box.uids[n - 1] for n in returned}
        if uids:
            highest = max(box.entries[u].modseq for u in uids)
    if returns is not None:
        await session.untagged(esearch(command, found, returns, highest))
    else:
        modseq = f" (MODSEQ {highest})" if highest is not None else ""
        await session.untagged(" ".join(["SEARCH", *map(str, found)]) + modseq)
    return f"{'UID ' if command.uid else ''}SEARCH completed"


_RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")


def _return_options(returns: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """ESEARCH (RFC 4731): ``RETURN ()`` means ``RETURN (ALL)``; SAVE keeps the result for
    ``$`` (SEARCHRES, RFC 5182)."""
    if returns is None:
        return None
    unknown = [r for r in returns if r not in _RETURN_OPTIONS]
    if unknown:
        raise Bad(f"Unknown SEARCH return option {unknown[0]}")
    return returns or ("ALL",)


def esearch(
    command: Command,
    found: list[int],
    returns: tuple[str, ...],
    highest: int | None = None,
    *,
    ordered: bool = False,
) -> str:
    """``ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5:9`` — only the parts asked for, and
    no MIN/MAX/ALL for an empty result (RFC 4731 §3.1). ``ordered`` (ESORT, RFC 5267 §3.1):
    ``found`` is in sort order, MIN and MAX are its first and last, and ALL keeps that order
    (``5,3:4,1``: a range only where the numbers follow each other in it)."""
    parts = [f'ESEARCH (TAG "{command.tag}")']
    if command.uid:
        parts.append("UID")
    if found and "MIN" in returns:
        parts.append(f"MIN {found[0] if ordered else min(found)}")
    if found and "MAX" in returns:
        parts.append(f"MAX {found[-1] if ordered else max(found)}")
    if "COUNT" in returns:
        parts.append(f"COUNT {len(found)}")
    if found and "ALL" in returns:
        parts.append(f"ALL {compress(found if ordered else sorted(found))}")
    if highest is not None:
        parts.append(f"MODSEQ {highest}")
    return " ".join(parts)


def _uses_modseq(key: SearchKey) -> bool:
    return key.name == "MODSEQ" or any(isinstance(k, SearchKey) and _uses_modseq(k) for k in key.args)


def _with_saved(key: SearchKey, saved: list[int]) -> SearchKey:
    """The program with ``$`` (a SEQSET or UID key) replaced by the saved UIDs."""
    if key.name in ("SEQSET", "UID") and isinstance(key.args[0], SequenceSet) and key.args[0].saved:
        return SearchKey("UID", (SequenceSet(tuple((u, u) for u in saved)),))
    if key.name in ("AND", "OR", "NOT"):
        return SearchKey(
            key.name, tuple(_with_saved(k, saved) if isinstance(k, SearchKey) else k for k in key.args)
        )
    return key
