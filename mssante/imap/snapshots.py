"""Folder snapshots: a folder's message columns at one HIGHESTMODSEQ, shared by every session
that selected it in that state.

Issue 20: a thousand idle sessions on one 20,000-message INBOX each held their own copy of the
same columns (1.3 MiB a session, Dovecot 0.73). A snapshot is read once and never written to;
a session's :class:`~mssante.imap.mailbox.MessageTable` starts on it and copies a column only
when it has to change it (copy-on-write), so sessions that just watch a folder share all of it.
The ENVELOPE/BODY/BODYSTRUCTURE renderings are shared too, per folder incarnation (a UID names
one content for the life of a UIDVALIDITY, whatever the MODSEQ).

A snapshot is found by ``(folder id, BAL, UIDVALIDITY, HIGHESTMODSEQ)``: every change to a
folder's messages raises its HIGHESTMODSEQ, and a UIDVALIDITY is never given twice in a BAL,
so an equal key means equal content. Snapshots live while a session uses them, plus the few
most recently used (a client that logs out and in again does not reread its INBOX), bounded
in messages so that memory is given back once the sessions are gone.

The registry also remembers the id of each folder it holds a snapshot of, by BAL and name: a
session selecting it again subscribes to that id's changes *before* reading the folder row,
so that the one read both validates a kept snapshot and starts the session's view (on
PostgreSQL one round trip, not two: issue 20's repeated SELECT).
"""

from __future__ import annotations

import sys
import weakref
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

from mssante.imap.perstore import PerStore
from mssante.store.columns import MessageColumns

if TYPE_CHECKING:
    from mssante.store.types import FolderInfo

SnapshotKey = tuple[int, str, int, int]  # folder id, BAL, UIDVALIDITY, HIGHESTMODSEQ
KEEP_SNAPSHOTS = 4  # released snapshots kept for a quick re-SELECT...
KEEP_MESSAGES = 100_000  # ...holding at most this many messages together
BLOCK_ROWS = 4096  # rows per kept block of FETCH lines (about 170 KB for UID and FLAGS)...
KEEP_SHAPES = 2  # ...for at most this many item lists a snapshot (others: rendered each time)
KEEP_IDS = 10_000  # folder ids remembered by BAL and name (a few dozen bytes each)


class Columns:
    """The integer columns of messages in UID order (arrays: a few bytes per message)."""

    __slots__ = ("blob", "date", "flags", "modseq", "size", "uid")

    def __init__(
        self,
        uid: array[int] | None = None,
        flags: array[int] | None = None,
        size: array[int] | None = None,
        date: array[int] | None = None,
        modseq: array[int] | None = None,
        blob: array[int] | None = None,
    ) -> None:
        self.uid = array("I") if uid is None else uid
        self.flags = array("I") if flags is None else flags  # index into a table of flag sets
        self.size = array("Q") if size is None else size
        self.date = array("q") if date is None else date  # seconds since the epoch, UTC
        self.modseq = array("Q") if modseq is None else modseq
        self.blob = array("Q") if blob is None else blob

    def copy(self) -> Columns:
        return Columns(*(array(c.typecode, c) for c in self.all()))

    def all(self) -> tuple[array[int], ...]:
        return (self.uid, self.flags, self.size, self.date, self.modseq, self.blob)

    def insert(self, at: int, values: tuple[int, int, int, int, int, int]) -> None:
        for column, value in zip(self.all(), values, strict=True):
            column.insert(at, value)

    def delete(self, at: int) -> None:
        for column in self.all():
            del column[at]

    def __len__(self) -> int:
        return len(self.uid)


class Rendered:
    """Renderings of one folder incarnation's messages, by item name then UID."""

    __slots__ = ("__weakref__", "items")

    def __init__(self) -> None:
        self.items: dict[str, dict[int, bytes]] = {}

    def get(self, name: str, uid: int) -> bytes | None:
        found = self.items.get(name)
        return None if found is None else found.get(uid)

    def put(self, name: str, uid: int, value: bytes) -> None:
        self.items.setdefault(name, {})[uid] = value


def split_flags(text: str) -> tuple[str, ...]:
    """The stored space-separated flags as a tuple of interned strings."""
    return tuple(sys.intern(f) for f in text.split())


class Snapshot:
    """Read-only columns of a folder and the flag sets they index; never modified once built
    (sessions copy what they change).

    ``lines`` keeps FETCH responses rendered from these rows alone (``* n FETCH (UID u FLAGS
    (...))`` for ``UID FETCH 1:* (FLAGS)``), by item names (the first :data:`KEEP_SHAPES`
    lists asked for, so a client cannot make it grow) then block of :data:`BLOCK_ROWS` rows:
    they hold for every session whose rows and numbering are still the snapshot's, and die
    with it (a change to the folder makes a new snapshot, with a new HIGHESTMODSEQ).
    """

    __slots__ = ("__weakref__", "columns", "key", "lines", "rendered", "sets")

    def __init__(
        self, key: SnapshotKey | None, columns: Columns, sets: list[tuple[str, ...]], rendered: Rendered
    ) -> None:
        self.key = key
        self.columns = columns
        self.sets = sets
        self.rendered = rendered
        self.lines: dict[tuple[str, ...], dict[int, bytes]] = {}

    @classmethod
    def from_store(cls, key: SnapshotKey | None, read: MessageColumns, rendered: Rendered) -> Snapshot:
        columns = Columns(read.uid, read.flags, read.size, read.date, read.modseq, read.blob)
        return cls(key, columns, [split_flags(t) for t in read.flag_texts], rendered)

    def __len__(self) -> int:
        return len(self.columns)


class Snapshots:
    """The snapshots of one store's folders in this process."""

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[SnapshotKey, Snapshot] = weakref.WeakValueDictionary()
        self._renders: weakref.WeakValueDictionary[tuple[int, str, int], Rendered] = (
            weakref.WeakValueDictionary()
        )
        self._kept: OrderedDict[SnapshotKey, Snapshot] = OrderedDict()
        self._ids: OrderedDict[tuple[str, str], int] = OrderedDict()

    @staticmethod
    def key(folder: FolderInfo) -> SnapshotKey:
        return (folder.id, folder.bal, folder.uidvalidity, folder.highestmodseq)

    def get(self, folder: FolderInfo) -> Snapshot | None:
        found = self._live.get(self.key(folder))
        if found is not None:
            self._keep(found)
            self._remember(folder)
        return found

    def folder_id(self, bal: str, name: str) -> int | None:
        """The id the folder had when this registry last held a snapshot of it (it may have
        been renamed, deleted or replaced since: the caller checks against the row it reads)."""
        return self._ids.get((bal, name))

    def _remember(self, folder: FolderInfo) -> None:
        self._ids[(folder.bal, folder.name)] = folder.id
        self._ids.move_to_end((folder.bal, folder.name))
        if len(self._ids) > KEEP_IDS:
            self._ids.popitem(last=False)

    def rendered(self, folder: FolderInfo) -> Rendered:
        """The renderings of the folder's incarnation, shared with any snapshot of it."""
        incarnation = (folder.id, folder.bal, folder.uidvalidity)
        found = self._renders.get(incarnation)
        if found is None:
            found = self._renders[incarnation] = Rendered()
        return found

    def add(self, folder: FolderInfo, read: MessageColumns) -> Snapshot:
        """A snapshot of ``read``, the folder's rows read after ``folder`` (so at its
        HIGHESTMODSEQ or later: a session absorbs the changes it then hears of either way)."""
        snapshot = Snapshot.from_store(self.key(folder), read, self.rendered(folder))
        self._live[self.key(folder)] = snapshot
        self._keep(snapshot)
        self._remember(folder)
        return snapshot

    def _keep(self, snapshot: Snapshot) -> None:
        assert snapshot.key is not None
        self._kept[snapshot.key] = snapshot
        self._kept.move_to_end(snapshot.key)
        total = sum(len(s) for s in self._kept.values())
        while len(self._kept) > 1 and (len(self._kept) > KEEP_SNAPSHOTS or total > KEEP_MESSAGES):
            _, dropped = self._kept.popitem(last=False)
            total -= len(dropped)
        if total > KEEP_MESSAGES:
            self._kept.clear()  # one folder larger than the bound: kept only by its sessions


snapshots = PerStore(Snapshots)  # the snapshot registry of each store
