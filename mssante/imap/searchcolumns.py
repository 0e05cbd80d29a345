"""SEARCH programs answered from the selected mailbox's columns, no object per message.

The searches clients send most are about numbers and flags: ``UID SEARCH UID 4120:*`` (what
arrived since the last look), ``SEARCH UNSEEN``, ``UID SEARCH DELETED``. Tested message by
message (:mod:`mssante.imap.search`), each of 20,000 messages cost a view on its row and a
candidate object, 80 ms in all (issue 20). Here such a program is a set of positions in the
session's numbering, held as the bits of one integer: a UID or sequence set marks its ranges
(found by bisection), a flag key the positions whose flag set has the flag (one pass over the
flag column; a mailbox has few distinct flag sets), and AND, OR and NOT are the integer's
``&``, ``|`` and ``~``. Programs with any other key (dates, sizes, headers, bodies, \\Recent)
are left to :mod:`mssante.imap.search`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from mssante.imap.commands.values import SearchKey, SequenceSet
from mssante.imap.search import FLAG_KEYS

if TYPE_CHECKING:
    from mssante.imap.mailbox import SelectedMailbox

_LOGIC = ("AND", "OR", "NOT")
_ON_COLUMNS = frozenset({"ALL", "UID", "SEQSET", "KEYWORD", "UNKEYWORD", *FLAG_KEYS})


def answerable(key: SearchKey) -> bool:
    """Whether every key of the program can be answered from the columns."""
    if key.name in _LOGIC:
        return all(isinstance(child, SearchKey) and answerable(child) for child in key.args)
    return key.name in _ON_COLUMNS


def positions(box: SelectedMailbox, key: SearchKey) -> list[int]:
    """The positions in ``box.uids`` (message number - 1) of the messages ``key`` matches,
    ascending; messages expunged by another session and not yet reported never match."""
    return _Program(box).positions(key)


class _Program:
    def __init__(self, box: SelectedMailbox) -> None:
        self.box = box
        self.count = len(box.uids)
        self.everything = (1 << self.count) - 1
        self._flags: list[int] | None = None  # the flag column in the session's numbering
        self._distinct: set[int] = set()

    def positions(self, key: SearchKey) -> list[int]:
        mask = self.mask(key)
        uids = self.box.uids
        for uid in self.box.entries.expunged:
            at = bisect.bisect_left(uids, uid)
            if at < self.count and uids[at] == uid:
                mask &= ~(1 << at)
        bits = bin(mask)[:1:-1]  # position 0 first
        found, at = [], bits.find("1")
        while at >= 0:
            found.append(at)
            at = bits.find("1", at + 1)
        return found

    def mask(self, key: SearchKey) -> int:
        name, args = key.name, key.args
        if name == "ALL":
            return self.everything
        if name == "AND":
            mask = self.everything
            for child in args:
                assert isinstance(child, SearchKey)
                mask &= self.mask(child)
            return mask
        if name == "OR":
            left, right = args
            assert isinstance(left, SearchKey) and isinstance(right, SearchKey)
            return self.mask(left) | self.mask(right)
        if name == "NOT":
            (child,) = args
            assert isinstance(child, SearchKey)
            return self.everything & ~self.mask(child)
        if name in ("UID", "SEQSET"):
            sequence = args[0]
            assert isinstance(sequence, SequenceSet)
            return self._ranges(sequence, uid=name == "UID")
        if name in FLAG_KEYS:
            flag, present = FLAG_KEYS[name]
            return self._having(lambda flags: (flag in flags) is present)
        wanted = str(args[0]).lower()  # KEYWORD, UNKEYWORD
        present = name == "KEYWORD"
        return self._having(lambda flags: any(f.lower() == wanted for f in flags) is present)

    def _ranges(self, sequence: SequenceSet, *, uid: bool) -> int:
        """A UID set (``*`` the largest UID) or message-number set (``*`` the last message;
        numbers beyond it match nothing) as the bits of its positions."""
        uids, mask = self.box.uids, 0
        if uid:
            spans = (
                (bisect.bisect_left(uids, low), bisect.bisect_right(uids, high))
                for low, high in sequence.bounds(uids[-1] if uids else 0)
            )
        else:
            spans = ((max(low, 1) - 1, min(high, self.count)) for low, high in sequence.bounds(self.count))
        for start, stop in spans:
            if start < stop:
                mask |= ((1 << (stop - start)) - 1) << start
        return mask

    def _having(self, test: Callable[[tuple[str, ...]], bool]) -> int:
        """The positions whose flag set passes ``test`` (tested once per distinct set)."""
        table = self.box.entries
        if self._flags is None:
            self._flags = table.flag_column(self.box.uids)
            self._distinct = set(self._flags)
        passing = {index for index in self._distinct if test(table.flags_of(index))}
        if not passing:
            return 0
        if len(passing) == len(self._distinct):
            return self.everything
        digits = bytes(49 if index in passing else 48 for index in reversed(self._flags))
        return int(digits, 2)
