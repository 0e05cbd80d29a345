"""A session's view of its selected mailbox: message numbers, UIDs, flags, pending changes.

Message sequence numbers belong to a session (RFC 3501 §2.3.1.2): they change only when this
session is told so. Changes made by others (the store's change feed) are therefore absorbed
into a pending list and reported only at the moments §5.2 and §7.4.1 allow: new messages
(``EXISTS``) and flag changes (``FETCH``) after any command, expunges (``EXPUNGE``) only
after commands other than FETCH, STORE and SEARCH. Until an expunge is reported the message
keeps its number, so the numbers a client holds stay valid.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mssante.imap import sparse
from mssante.imap.commands.values import SequenceSet
from mssante.imap.render import compress, flag_list
from mssante.imap.snapshots import Columns, Rendered, Snapshot
from mssante.store.feed import FolderChange
from mssante.store.types import FolderInfo, MessageRow

# The tail of every table that has none of its own: read, never written (MessageTable.add
# gives a table its own tail before the first message goes there).
_NO_TAIL = Columns()


class MessageTable:
    """The messages a session knows, as columns of machine integers in UID order.

    A session keeps its selected mailbox in memory for as long as it stays selected, and a
    mailbox can hold tens of thousands of messages: one Python object per message cost ~300
    bytes (issue 20: 5.6 MiB per idle session on a 19,100-message INBOX), columns ~40. And
    most sessions of a folder know the same messages: the table starts on a shared, read-only
    :class:`~mssante.imap.snapshots.Snapshot` and copies only what it changes — the flag and
    MODSEQ columns on a flag change, everything when a message must be inserted amid it or
    many were expunged; messages arriving later go to a small private tail, and expunged ones
    of the shared part to a set, so an idle session costs nothing per message. Flags are the
    index of an interned flag set (a mailbox has few distinct ones). What is sparse stays in
    small containers: ``\\Recent`` (a UID range taken at SELECT, and a set), expunged-elsewhere.
    An :class:`Entry` is a short-lived view on one row.
    """

    __slots__ = ("_base", "_base_owned", "_flags_owned", "_gone", "_rendered_sets", "_set_index",
                 "_sets", "_sets_owned", "_snapshot", "_tail", "expunged", "recent", "recent_range",
                 "rendered", "version")  # fmt: skip

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        snapshot = snapshot or Snapshot(None, Columns(), [], Rendered())
        self._snapshot = snapshot
        self._base = snapshot.columns  # the snapshot's (shared) until _base_owned
        self._base_owned = self._flags_owned = self._sets_owned = False
        # Messages with a UID above the base's: private, made on the first (most sessions
        # see none arrive while selected; until then every table reads the one empty tail).
        self._tail = _NO_TAIL
        self._gone: AbstractSet[int] = sparse.EMPTY  # base UIDs forgotten while the base is shared
        self._sets = snapshot.sets
        self._set_index: dict[tuple[str, ...], int] | None = None  # built on first new flag set
        self._rendered_sets: dict[tuple[int, bool], bytes] = {}
        self.rendered = snapshot.rendered  # shared by the sessions of this folder
        # (sets: see mssante.imap.sparse)
        self.expunged: AbstractSet[int] = sparse.EMPTY  # expunged elsewhere, not yet reported
        self.recent: AbstractSet[int] = sparse.EMPTY  # \Recent for this session (IMAP4rev1 only)...
        self.recent_range = range(0)  # ...and the UIDs it took at SELECT
        self.version = 0  # bumped when rows move or columns are replaced (entries re-locate)

    # -- flag sets -------------------------------------------------------------------------------
    def flag_set(self, flags: Iterable[str]) -> int:
        key = tuple(flags)
        if self._set_index is None:
            self._set_index = {}
            for i, known in enumerate(self._sets):
                self._set_index.setdefault(known, i)
        index = self._set_index.get(key)
        if index is None:
            if not self._sets_owned:
                self._sets, self._sets_owned = list(self._sets), True
            key = tuple(sys.intern(f) for f in key)
            index = self._set_index[key] = len(self._sets)
            self._sets.append(key)
        return index

    def flags_of(self, index: int) -> tuple[str, ...]:
        return self._sets[index]

    def flag_bytes(self, index: int, recent: bool = False) -> bytes:
        """A flag set as FETCH writes it, ``\\Recent`` added when asked (rendered once)."""
        key = (index, recent)
        found = self._rendered_sets.get(key)
        if found is None:
            flags = self._sets[index]
            found = self._rendered_sets[key] = flag_list((*flags, "\\Recent") if recent else flags)
        return found

    # -- rows ------------------------------------------------------------------------------------
    def locate(self, uid: int) -> tuple[Columns, int]:
        """The columns holding ``uid`` and its position there; KeyError when unknown."""
        base = self._base
        at = bisect.bisect_left(base.uid, uid)
        if at < len(base.uid) and base.uid[at] == uid:
            if uid in self._gone:
                raise KeyError(uid)
            return base, at
        tail = self._tail
        if tail.uid and uid >= tail.uid[0]:
            at = bisect.bisect_left(tail.uid, uid)
            if at < len(tail.uid) and tail.uid[at] == uid:
                return tail, at
        raise KeyError(uid)

    def add(self, row: MessageRow, *, recent: bool = False) -> None:
        """A message, at its place in UID order (new messages come last: to the tail)."""
        uid, flags, size, when, modseq, blob_id = row
        if uid in self:
            return
        values = (uid, self.flag_set(flags), size, int(when.timestamp()), modseq, blob_id)
        base = self._base
        if not base.uid or uid > base.uid[-1]:
            if self._tail is _NO_TAIL:
                self._tail = Columns()
            target = self._tail
        else:
            self._own_base()
            target = self._base
        target.insert(bisect.bisect_left(target.uid, uid), values)
        self.version += 1
        if recent:
            self.recent = sparse.added(self.recent, uid)

    def set_flags(self, uid: int, flags: Iterable[str] | None = None, modseq: int | None = None) -> None:
        columns, at = self.locate(uid)
        if columns is self._base and not self._flags_owned:
            # Copy-on-write: this session's flags diverge from the snapshot's.
            base = self._base
            self._base = Columns(
                base.uid, array("I", base.flags), base.size, base.date, array("Q", base.modseq), base.blob
            )
            self._flags_owned = True
            self.version += 1
            columns = self._base
        if flags is not None:
            columns.flags[at] = self.flag_set(flags)
        if modseq is not None:
            columns.modseq[at] = modseq

    def _own_base(self) -> None:
        """A private copy of the base, without the forgotten rows."""
        if self._base_owned:
            return
        base = self._base
        if self._gone:
            keep = [i for i, uid in enumerate(base.uid) if uid not in self._gone]
            self._base = Columns(*(array(c.typecode, [c[i] for i in keep]) for c in base.all()))
        else:
            self._base = base.copy()
        self._base_owned = self._flags_owned = True
        self._gone = sparse.EMPTY
        self.version += 1

    def __getitem__(self, uid: int) -> Entry:
        return Entry(self, uid, *self.locate(uid))

    def get(self, uid: int) -> Entry | None:
        try:
            return self[uid]
        except KeyError:
            return None

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        try:
            self.locate(uid)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._base) - len(self._gone) + len(self._tail)

    def __iter__(self) -> Iterator[int]:
        gone = self._gone
        if gone:
            yield from (uid for uid in self._base.uid if uid not in gone)
        else:
            yield from self._base.uid
        yield from self._tail.uid

    def used_sets(self) -> set[int]:
        """The flag sets some message has (the forgotten ones of a shared base included)."""
        return set(self._base.flags) | set(self._tail.flags)

    def first_without(self, flag: str, uids: array[int]) -> int | None:
        """The message number (in ``uids``, the session's numbering) of the first message
        without ``flag``: a scan of the flag column, no object per message."""
        lacking = {i for i, flags in enumerate(self._sets) if flag not in flags}
        gone = self._gone
        for columns in (self._base, self._tail):
            for at, index in enumerate(columns.flags):
                if index in lacking:
                    uid = columns.uid[at]
                    if uid not in gone:
                        found = bisect.bisect_left(uids, uid)
                        if found < len(uids) and uids[found] == uid:
                            return found + 1
        return None

    def column(self, uids: array[int], name: str) -> list[int]:
        """Column ``name`` (``flags``, ``size``, ``date``, ``modseq``) of each message of ``uids``
        (ascending UIDs the table holds: the session's numbering), in that order; one pass over
        the columns, no object per message. For the whole table (SORT or THREAD of ``ALL``, at
        every page a webmail shows) the columns are copied as they are."""
        base, tail = self._base, self._tail
        whole = len(uids) == len(base.uid) + len(tail.uid) and not self._gone
        if whole and uids == (base.uid + tail.uid if tail.uid else base.uid):  # compared in C
            head: array[int] = getattr(base, name)
            rest: array[int] = getattr(tail, name)
            return head.tolist() + rest.tolist()
        out: list[int] = []
        wanted = iter(uids)
        want = next(wanted, None)
        gone = self._gone
        for columns in (self._base, self._tail):
            for uid, value in zip(columns.uid, getattr(columns, name), strict=True):
                if want is None:
                    return out
                if uid == want and uid not in gone:
                    out.append(value)
                    want = next(wanted, None)
        if want is not None:
            raise KeyError(want)  # the session numbers a message the table does not hold
        return out

    def pop(self, uid: int, default: None = None) -> None:
        """Forget a message (expunged and reported)."""
        try:
            columns, at = self.locate(uid)
        except KeyError:
            return
        if columns is self._tail or self._base_owned:
            columns.delete(at)
        else:
            self._gone = sparse.added(self._gone, uid)
            if len(self._gone) > 64 + len(self._base) // 8:
                self._own_base()  # many gone: a private copy costs less than the set
        self.version += 1
        self.expunged = sparse.removed(self.expunged, uid)
        self.recent = sparse.removed(self.recent, uid)

    def is_recent(self, uid: int) -> bool:
        return uid in self.recent_range or uid in self.recent

    def any_recent(self, low: int, high: int) -> bool:
        """Whether a UID from ``low`` to ``high`` (inclusive) is \\Recent to this session."""
        taken = self.recent_range
        if taken and taken.start <= high and low < taken.stop:
            return True
        return any(low <= uid <= high for uid in self.recent)

    def unchanged_snapshot(self) -> Snapshot | None:
        """The snapshot this table started on, while the rows it shares with it are still the
        snapshot's (same flags and MODSEQs, none copied away): then what is rendered from the
        snapshot's rows holds for this session too (its numbering is the caller's to check)."""
        return self._snapshot if self._base is self._snapshot.columns else None


class Entry:
    """What the session knows of one message without reading its content: a view on its row
    of the :class:`MessageTable` (located once; again only if rows moved since)."""

    __slots__ = ("_at", "_columns", "_table", "_version", "uid")

    def __init__(self, table: MessageTable, uid: int, columns: Columns, at: int) -> None:
        self._table, self.uid, self._columns, self._at, self._version = table, uid, columns, at, table.version

    def _row(self) -> tuple[Columns, int]:
        if self._version != self._table.version:
            self._columns, self._at = self._table.locate(self.uid)
            self._version = self._table.version
        return self._columns, self._at

    @property
    def flag_index(self) -> int:
        columns, at = self._row()
        return columns.flags[at]

    @property
    def flags(self) -> tuple[str, ...]:
        columns, at = self._row()
        return self._table._sets[columns.flags[at]]

    @flags.setter
    def flags(self, value: tuple[str, ...]) -> None:
        self._table.set_flags(self.uid, flags=value)

    @property
    def size(self) -> int:
        columns, at = self._row()
        return columns.size[at]

    @property
    def internaldate(self) -> datetime:
        columns, at = self._row()
        return datetime.fromtimestamp(columns.date[at], UTC)

    @property
    def modseq(self) -> int:
        columns, at = self._row()
        return columns.modseq[at]

    @modseq.setter
    def modseq(self, value: int) -> None:
        self._table.set_flags(self.uid, modseq=value)

    @property
    def blob_id(self) -> int:
        columns, at = self._row()
        return columns.blob[at]

    @property
    def expunged(self) -> bool:
        return self.uid in self._table.expunged

    @expunged.setter
    def expunged(self, value: bool) -> None:
        table = self._table
        table.expunged = (sparse.added if value else sparse.removed)(table.expunged, self.uid)

    @property
    def recent(self) -> bool:
        return self._table.is_recent(self.uid)

    def rendered(self, name: str) -> bytes | None:
        """ENVELOPE, BODY or BODYSTRUCTURE as rendered before (by any session of the folder)."""
        return self._table.rendered.get(name, self.uid)

    def keep_rendered(self, name: str, value: bytes) -> None:
        self._table.rendered.put(name, self.uid, value)

    def flag_bytes(self) -> bytes:
        """The shown flags as FETCH writes them."""
        return self._table.flag_bytes(self.flag_index, self.recent)

    def shown_flags(self) -> tuple[str, ...]:
        """The flags as FETCH shows them: the stored ones, and ``\\Recent`` (a session flag,
        never set in an IMAP4rev2 session)."""
        return (*self.flags, "\\Recent") if self.recent else self.flags


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open index ranges sorted and merged: each message once, in order."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if start >= stop:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


@dataclass
class SelectedMailbox:
    folder: FolderInfo
    readonly: bool
    uids: array[int] = field(default_factory=lambda: array("I"))  # index + 1 is the message number
    entries: MessageTable = field(default_factory=MessageTable)
    modseq: int = 0  # the highest change applied
    # Flags the client may set for good (PERMANENTFLAGS, decided from the rights at SELECT);
    # ``\*`` among them when new keywords may be created.
    permanent: tuple[str, ...] = ()
    with_recent: bool = True  # IMAP4rev1 shows \Recent; IMAP4rev2 dropped it
    condstore: bool = False  # unsolicited FETCH carry UID and MODSEQ (RFC 7162 §3.1)
    qresync: bool = False  # expunges are reported as VANISHED (RFC 7162 §3.2.10)
    _keywords: AbstractSet[str] = sparse.EMPTY  # keywords announced in FLAGS
    saved: list[int] = field(default_factory=list)  # UIDs kept by SEARCH RETURN (SAVE), RFC 5182
    _new: list[int] = field(default_factory=list)  # appended elsewhere, not yet announced
    _flag_news: AbstractSet[int] = sparse.EMPTY  # flags changed elsewhere, not yet sent

    _uids_owned: bool = False  # ``uids`` is this session's (else the snapshot's UID column)

    @classmethod
    def from_snapshot(
        cls, folder: FolderInfo, snapshot: Snapshot, *, readonly: bool, recent_from: int | None = None
    ) -> SelectedMailbox:
        """The mailbox as SELECT sees it, on a shared snapshot; messages from UID
        ``recent_from`` up to the folder's UIDNEXT are \\Recent. The snapshot may have been
        read after the folder, so it may hold messages appended meanwhile: those were not taken
        by this session's claim (which stops at UIDNEXT) and go to the next session told of
        them, never to two."""
        # (the UID column is shared until this session's numbering changes)
        box = cls(folder, readonly, snapshot.columns.uid, MessageTable(snapshot), folder.highestmodseq)
        if recent_from is not None and recent_from < folder.uidnext:
            box.entries.recent_range = range(recent_from, folder.uidnext)
        return box

    @classmethod
    def from_rows(
        cls, folder: FolderInfo, rows: Iterable[MessageRow], *, readonly: bool, recent_from: int | None = None
    ) -> SelectedMailbox:
        """As :meth:`from_snapshot`, from rows (tests, and callers without a snapshot)."""
        table = MessageTable()
        for row in rows:
            table.add(row)
        columns = table._tail if table._tail is not _NO_TAIL else Columns()
        snapshot = Snapshot(None, columns, table._sets, Rendered())
        return cls.from_snapshot(folder, snapshot, readonly=readonly, recent_from=recent_from)

    def _own_uids(self) -> array[int]:
        if not self._uids_owned:
            self.uids, self._uids_owned = array("I", self.uids), True
        return self.uids

    # -- numbering -----------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.uids)

    def msn(self, uid: int) -> int | None:
        index = bisect.bisect_left(self.uids, uid)
        if index < len(self.uids) and self.uids[index] == uid:
            return index + 1
        return None

    def resolve(self, sequence: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """(message number, UID) pairs a set designates, in message-number order.

        Message numbers beyond the mailbox raise ``ValueError`` (a client error, answered BAD);
        UIDs that do not exist are simply absent (RFC 3501 §6.4.8).
        """
        uids = self.uids
        return [(i + 1, uids[i]) for start, stop in self.spans(sequence, uid=uid) for i in range(start, stop)]

    def spans(self, sequence: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """What :meth:`resolve` designates as sorted, disjoint half-open ranges of positions in
        ``uids`` (message number - 1): ``1:*`` of 50,000 messages is one range, not 50,000
        pairs (a FETCH of column items renders straight from them)."""
        if sequence.saved:
            # SEARCHRES: the same messages for UID and numbered commands, gone ones dropped.
            found = sorted(n for n in map(self.msn, self.saved) if n is not None)
            return _merged([(n - 1, n) for n in found])
        if not self.uids:
            if not uid and any(start is not None or end is not None for start, end in sequence.ranges):
                raise ValueError("Invalid message sequence number: the mailbox is empty")
            return []
        uids = self.uids
        spans = []
        if uid:
            for low, high in sequence.bounds(uids[-1]):
                spans.append((bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)))
        else:
            count = len(uids)
            for low, high in sequence.bounds(count):
                if high > count:
                    raise ValueError(f"Invalid message sequence number: {high} (mailbox has {count})")
                spans.append((max(low, 1) - 1, high))
        return _merged(spans)

    def first_unseen(self) -> int | None:
        return self.entries.first_without("\\Seen", self.uids)

    def keywords(self) -> list[str]:
        entries = self.entries
        found = frozenset(
            f for i in entries.used_sets() for f in entries.flags_of(i) if not f.startswith("\\")
        )
        self._keywords = found
        return sorted(found)

    @property
    def recent(self) -> int:
        """How many messages are \\Recent to this session."""
        uids, taken = self.uids, self.entries.recent_range
        count = bisect.bisect_left(uids, taken.stop) - bisect.bisect_left(uids, taken.start) if taken else 0
        return count + sum(1 for uid in self.entries.recent if uid not in taken and self.msn(uid) is not None)

    def flags_lines(self) -> list[bytes]:
        """``FLAGS`` and ``OK [PERMANENTFLAGS]``: at SELECT, and again when a keyword appears."""
        flags = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *sorted(self._keywords)]
        permanent = "()" if self.readonly else "(" + " ".join(self.permanent) + ")"
        if not self.readonly and "\\*" in self.permanent:
            permanent = "(" + " ".join([*self.permanent[:-1], *sorted(self._keywords), "\\*"]) + ")"
        return [
            b"* FLAGS " + flag_list(flags),
            b"* OK [PERMANENTFLAGS " + permanent.encode("ascii", "replace") + b"] Flags permitted",
        ]

    def announce_keywords(self, flags: Iterable[str]) -> list[bytes]:
        """The FLAGS lines to send before a message shows a keyword the client was not told of
        (RFC 3501 §7.2.6: FLAGS lists every flag the mailbox uses)."""
        new = {f for f in flags if not f.startswith("\\") and f not in self._keywords}
        if not new:
            return []
        self._keywords |= new
        return self.flags_lines()

    def fetch_flags(self, entry: Entry) -> bytes:
        return self.entries.flag_bytes(entry.flag_index, entry.recent)

    # -- changes -------------------------------------------------------------------------------
    def set_flags(self, uid: int, flags: tuple[str, ...], modseq: int) -> None:
        """This session's own STORE: applied at once, nothing pending."""
        entry = self.entries.get(uid)
        if entry is not None and modseq >= entry.modseq:
            entry.flags, entry.modseq = flags, modseq
            self._flag_news = sparse.removed(self._flag_news, uid)

    def expunge_lines(self, uids: Iterable[int]) -> list[bytes]:
        """Remove messages and say so: ``* n EXPUNGE`` each, or one ``* VANISHED uid-set``
        once QRESYNC is enabled."""
        if not self.qresync:
            return [b"* %d EXPUNGE" % n for n in self.remove(uids)]
        present = [uid for uid in sorted(set(uids)) if self.msn(uid) is not None]
        self.remove(present)
        return [b"* VANISHED " + compress(present).encode()] if present else []

    def flags_update(self, n: int, entry: Entry, *, with_uid: bool) -> bytes:
        """An unsolicited ``* n FETCH (FLAGS ...)``; with CONDSTORE it names the UID and MODSEQ."""
        if self.condstore:
            return b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (
                n,
                entry.uid,
                self.fetch_flags(entry),
                entry.modseq,
            )
        uid_part = b"UID %d " % entry.uid if with_uid else b""
        return b"* %d FETCH (%sFLAGS %s)" % (n, uid_part, self.fetch_flags(entry))

    def remove(self, uids: Iterable[int]) -> list[int]:
        """This session's own EXPUNGE/MOVE: the message numbers to report, highest first."""
        numbers = []
        for uid in sorted(set(uids), reverse=True):
            n = self.msn(uid)
            if n is None:
                continue
            numbers.append(n)
            del self._own_uids()[n - 1]
            self.entries.pop(uid, None)
            self._flag_news = sparse.removed(self._flag_news, uid)
        return numbers

    def absorb(self, changes: Iterable[FolderChange]) -> list[int]:
        """Take in changes from the feed; return UIDs of appended messages whose rows are needed."""
        wanted: list[int] = []
        for change in changes:
            if change.folder_id != self.folder.id:
                continue
            self.modseq = max(self.modseq, change.modseq)
            entry = self.entries.get(change.uid)
            if change.kind == "append":
                if (
                    entry is None
                    and change.uid not in self._new
                    and (not self.uids or change.uid > self.uids[-1])
                ):
                    self._new.append(change.uid)
                    wanted.append(change.uid)
            elif change.kind == "expunge":
                if entry is not None:
                    entry.expunged = True
                elif change.uid in self._new:
                    self._new.remove(change.uid)
            elif (
                change.kind == "flags"
                and entry is not None
                and not entry.expunged
                and change.modseq > entry.modseq
            ):
                flags = tuple(change.flags.split()) if change.flags else ()
                entry.modseq = change.modseq
                if flags != entry.flags:
                    entry.flags = flags
                    self._flag_news = sparse.added(self._flag_news, change.uid)
        return wanted

    def add_rows(self, rows: Iterable[MessageRow], *, recent_from: int | None = None) -> None:
        """Rows of messages announced by :meth:`absorb`, read from the store; those from UID
        ``recent_from`` on are \\Recent to this session."""
        for row in rows:
            if row.uid in self._new and row.uid not in self.entries:
                self.entries.add(row, recent=recent_from is not None and row.uid >= recent_from)

    def updates(self, *, allow_expunge: bool, with_uid: bool = False) -> list[bytes]:
        """Untagged responses for what changed since the last report, in a safe order."""
        out: list[bytes] = []
        if allow_expunge:
            gone = [uid for uid in self.entries.expunged if self.msn(uid) is not None]
            if gone:
                out.extend(self.expunge_lines(gone))
        # Announce new messages whose rows we have, in UID order.
        arrived = [uid for uid in self._new if uid in self.entries]
        if arrived:
            for uid in sorted(arrived):
                if not self.uids or uid > self.uids[-1]:
                    self._own_uids().append(uid)
                self._new.remove(uid)
            out.extend(self.announce_keywords(f for uid in arrived for f in self.entries[uid].flags))
            out.append(b"* %d EXISTS" % len(self.uids))
            if self.with_recent:
                out.append(b"* %d RECENT" % self.recent)
        news = [self.entries[uid] for uid in sorted(self._flag_news) if uid in self.entries]
        out.extend(self.announce_keywords(f for e in news if not e.expunged for f in e.flags))
        for entry in news:
            n = self.msn(entry.uid)
            if n is None or entry.expunged:
                continue
            out.append(self.flags_update(n, entry, with_uid=with_uid))
        self._flag_news = sparse.EMPTY
        return out
