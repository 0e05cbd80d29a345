"""SEARCH programs answered from the selected mailbox's columns, no object per message.

The searches clients send most are about numbers, flags and dates: ``UID SEARCH UID 4120:*``
(what arrived since the last look), ``SEARCH UNSEEN``, ``UID SEARCH SINCE 1-Dec-2026`` (a
phone's window of recent mail). Tested message by message (:mod:`mssante.imap.search`), each
of 20,000 messages cost a view on its row and a candidate object, 80 ms in all (issue 20).
Here such a program is a set of positions in the session's numbering, held as the bits of one
integer: a UID or sequence set marks its ranges (found by bisection), a flag key the positions
whose flag set has the flag (a mailbox has few distinct flag sets), a date, size or MODSEQ key
those whose column value passes (one pass over that column), ``\\Recent`` the session's
recent UIDs; AND, OR and NOT are the integer's ``&``, ``|`` and ``~``. Programs with a header
or body key are left to :mod:`mssante.imap.search`.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from mssante.imap.commands.values import SearchKey, SequenceSet
from mssante.imap.search import FLAG_KEYS

if TYPE_CHECKING:
    from mssante.imap.mailbox import SelectedMailbox

_LOGIC = ("AND", "OR", "NOT")
_ON_COLUMNS = frozenset(
    {
        "ALL", "UID", "SEQSET", "KEYWORD", "UNKEYWORD", *FLAG_KEYS,
        "LARGER", "SMALLER", "BEFORE", "ON", "SINCE", "OLDER", "YOUNGER", "MODSEQ",
        "RECENT", "NEW", "OLD",
    }
)  # fmt: skip


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
        self._columns: dict[str, list[int]] = {}  # columns read so far, in the session's numbering

    def positions(self, key: SearchKey) -> list[int]:
        mask = self.mask(key) & ~self._uids(self.box.entries.expunged)
        if mask == self.everything:
            return list(range(self.count))  # ALL, SORT's usual program
        bits = bin(mask)[:1:-1].encode().translate(_AS_TRUTH)  # position 0 first, 0 or 1 each
        return list(itertools.compress(range(len(bits)), bits))  # (in C: no step per match)

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
        if name in ("KEYWORD", "UNKEYWORD"):
            wanted = str(args[0]).lower()
            present = name == "KEYWORD"
            return self._having(lambda flags: any(f.lower() == wanted for f in flags) is present)
        if name == "RECENT":
            return self._recent()
        if name == "OLD":
            return self.everything & ~self._recent()
        if name == "NEW":
            return self._recent() & self._having(lambda flags: "\\Seen" not in flags)
        return self._where(name, args[0])

    def _where(self, name: str, value: object) -> int:
        """A key on the size, date or MODSEQ column, as :func:`~mssante.imap.search.matches`
        tests it (dates are INTERNALDATE's day in UTC, ages in seconds from now)."""
        if name in ("LARGER", "SMALLER"):
            limit = int(str(value))
            if name == "LARGER":
                return self._passing("size", lambda size: size > limit)
            return self._passing("size", lambda size: size < limit)
        if name == "MODSEQ":
            least = int(str(value))
            return self._passing("modseq", lambda modseq: modseq >= least)
        if name in ("OLDER", "YOUNGER"):
            latest = time.time() - int(str(value))
            if name == "OLDER":
                return self._passing("date", lambda at: at <= latest)
            return self._passing("date", lambda at: at >= latest)
        assert isinstance(value, date)
        day = int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
        if name == "BEFORE":
            return self._passing("date", lambda at: at < day)
        if name == "ON":
            following = day + int(timedelta(days=1).total_seconds())
            return self._passing("date", lambda at: day <= at < following)
        return self._passing("date", lambda at: at >= day)  # SINCE

    def _recent(self) -> int:
        """The positions of the messages \\Recent to this session (a UID range and a few)."""
        table = self.box.entries
        taken = table.recent_range
        mask = self._ranges_of_uids([(taken.start, taken.stop - 1)]) if taken else 0
        return mask | self._uids(table.recent)

    def _uids(self, uids: Iterable[int]) -> int:
        """The positions of a few UIDs (those the session numbers)."""
        mask = 0
        for uid in uids:
            number = self.box.msn(uid)
            if number is not None:
                mask |= 1 << (number - 1)
        return mask

    def _ranges(self, sequence: SequenceSet, *, uid: bool) -> int:
        """A UID set (``*`` the largest UID) or message-number set (``*`` the last message;
        numbers beyond it match nothing) as the bits of its positions."""
        uids = self.box.uids
        if uid:
            return self._ranges_of_uids(sequence.bounds(uids[-1] if uids else 0))
        return _spans((max(low, 1) - 1, min(high, self.count)) for low, high in sequence.bounds(self.count))

    def _ranges_of_uids(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Inclusive UID ranges as the bits of the positions of their messages."""
        uids = self.box.uids
        left, right = bisect.bisect_left, bisect.bisect_right
        return _spans((left(uids, low), right(uids, high)) for low, high in ranges)

    def _having(self, test: Callable[[tuple[str, ...]], bool]) -> int:
        """The positions whose flag set passes ``test`` (tested once per distinct set)."""
        table = self.box.entries
        flags = self._column("flags")
        distinct = set(flags)
        passing = {index for index in distinct if test(table.flags_of(index))}
        if not passing:
            return 0
        if len(passing) == len(distinct):
            return self.everything
        if max(distinct) < 256:  # each set's verdict by a table, in C
            verdicts = bytes(49 if index in passing else 48 for index in range(256))
            return int(bytes(reversed(flags)).translate(verdicts), 2)
        return _bits(index in passing for index in reversed(flags))

    def _passing(self, name: str, test: Callable[[int], bool]) -> int:
        """The positions whose value in column ``name`` passes ``test``."""
        return _bits(test(value) for value in reversed(self._column(name)))

    def _column(self, name: str) -> list[int]:
        values = self._columns.get(name)
        if values is None:
            values = self._columns[name] = self.box.entries.column(self.box.uids, name)
        return values


_AS_TRUTH = bytes.maketrans(b"01", b"\x00\x01")


def _bits(last_first: Iterable[bool]) -> int:
    """An integer whose bit i is the truth of position i, from the last position to the first."""
    digits = bytes(49 if passes else 48 for passes in last_first)
    return int(digits, 2) if digits else 0


def _spans(spans: Iterable[tuple[int, int]]) -> int:
    """Half-open position ranges as bits."""
    mask = 0
    for start, stop in spans:
        if start < stop:
            mask |= ((1 << (stop - start)) - 1) << start
    return mask
