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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mssante.imap.commands.values import SequenceSet
from mssante.imap.render import compress, flag_list
from mssante.store.feed import FolderChange
from mssante.store.types import FolderInfo, MessageRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class MessageTable:
    """The messages a session knows, as columns of machine integers in UID order.

    A session keeps its selected mailbox in memory for as long as it stays selected, and a
    mailbox can hold tens of thousands of messages; one Python object per message (and per
    flag, date and number in it) cost ~300 bytes each (issue 20: 5.6 MiB per idle session on
    a 19,100-message INBOX). Here a message costs ~40 bytes: UID, size, date, MODSEQ and
    blob in arrays, its flags as the index of an interned flag set (a mailbox has few
    distinct ones). What is sparse stays in small containers: ``\\Recent``, expunged-elsewhere,
    and the renderings FETCH cached. An :class:`Entry` is a short-lived view on one row.
    """

    __slots__ = ("_blob", "_date", "_flags", "_modseq", "_set_index", "_sets", "_size", "_uid", "expunged",
                 "recent", "rendered")  # fmt: skip

    def __init__(self) -> None:
        self._uid = array("I")
        self._flags = array("I")  # index into _sets
        self._size = array("Q")
        self._date = array("q")  # microseconds since the epoch, UTC
        self._modseq = array("Q")
        self._blob = array("Q")
        self._sets: list[tuple[str, ...]] = []
        self._set_index: dict[tuple[str, ...], int] = {}
        self.expunged: set[int] = set()  # expunged elsewhere, not yet reported to this session
        self.recent: set[int] = set()  # \Recent for this session (IMAP4rev1 only)
        self.rendered: dict[int, dict[str, bytes]] = {}  # ENVELOPE/BODYSTRUCTURE rendered once

    def flag_set(self, flags: Iterable[str]) -> int:
        key = tuple(flags)
        index = self._set_index.get(key)
        if index is None:
            key = tuple(sys.intern(f) for f in key)
            index = self._set_index[key] = len(self._sets)
            self._sets.append(key)
        return index

    def add(self, row: MessageRow, *, recent: bool = False) -> None:
        """A message, at its place in UID order (new messages come last: an append)."""
        uid, flags, size, when, modseq, blob_id = row
        at = len(self._uid)
        if at and self._uid[-1] >= uid:
            at = bisect.bisect_left(self._uid, uid)
            if at < len(self._uid) and self._uid[at] == uid:
                return
        micros = (when - _EPOCH) // _MICROSECOND
        self._uid.insert(at, uid)
        self._flags.insert(at, self.flag_set(flags))
        self._size.insert(at, size)
        self._date.insert(at, micros)
        self._modseq.insert(at, modseq)
        self._blob.insert(at, blob_id)
        if recent:
            self.recent.add(uid)

    def index(self, uid: int) -> int:
        at = bisect.bisect_left(self._uid, uid)
        if at < len(self._uid) and self._uid[at] == uid:
            return at
        raise KeyError(uid)

    def __getitem__(self, uid: int) -> Entry:
        self.index(uid)
        return Entry(self, uid)

    def get(self, uid: int) -> Entry | None:
        return Entry(self, uid) if uid in self else None

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        at = bisect.bisect_left(self._uid, uid)
        return at < len(self._uid) and self._uid[at] == uid

    def __len__(self) -> int:
        return len(self._uid)

    def __iter__(self) -> Iterator[int]:
        return iter(self._uid)

    def values(self) -> Iterator[Entry]:
        return (Entry(self, uid) for uid in self._uid)

    def pop(self, uid: int, default: None = None) -> None:
        """Forget a message (expunged and reported)."""
        if uid not in self:
            return
        at = self.index(uid)
        for column in (self._uid, self._flags, self._size, self._date, self._modseq, self._blob):
            del column[at]
        self.expunged.discard(uid)
        self.recent.discard(uid)
        self.rendered.pop(uid, None)


class Entry:
    """What the session knows of one message without reading its content: a view on its row
    of the :class:`MessageTable` (reads and writes go to the table)."""

    __slots__ = ("_table", "uid")

    def __init__(self, table: MessageTable, uid: int) -> None:
        self._table, self.uid = table, uid

    @property
    def flags(self) -> tuple[str, ...]:
        t = self._table
        return t._sets[t._flags[t.index(self.uid)]]

    @flags.setter
    def flags(self, value: tuple[str, ...]) -> None:
        t = self._table
        t._flags[t.index(self.uid)] = t.flag_set(value)

    @property
    def size(self) -> int:
        return self._table._size[self._table.index(self.uid)]

    @size.setter
    def size(self, value: int) -> None:
        self._table._size[self._table.index(self.uid)] = value

    @property
    def internaldate(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self._table._date[self._table.index(self.uid)])

    @internaldate.setter
    def internaldate(self, value: datetime) -> None:
        self._table._date[self._table.index(self.uid)] = (value - _EPOCH) // _MICROSECOND

    @property
    def modseq(self) -> int:
        return self._table._modseq[self._table.index(self.uid)]

    @modseq.setter
    def modseq(self, value: int) -> None:
        self._table._modseq[self._table.index(self.uid)] = value

    @property
    def blob_id(self) -> int:
        return self._table._blob[self._table.index(self.uid)]

    @blob_id.setter
    def blob_id(self, value: int) -> None:
        self._table._blob[self._table.index(self.uid)] = value

    @property
    def expunged(self) -> bool:
        return self.uid in self._table.expunged

    @expunged.setter
    def expunged(self, value: bool) -> None:
        (self._table.expunged.add if value else self._table.expunged.discard)(self.uid)

    @property
    def recent(self) -> bool:
        return self.uid in self._table.recent

    @recent.setter
    def recent(self, value: bool) -> None:
        (self._table.recent.add if value else self._table.recent.discard)(self.uid)

    @property
    def rendered(self) -> dict[str, bytes] | None:
        return self._table.rendered.get(self.uid)

    @rendered.setter
    def rendered(self, value: dict[str, bytes] | None) -> None:
        if value is None:
            self._table.rendered.pop(self.uid, None)
        else:
            self._table.rendered[self.uid] = value

    def shown_flags(self) -> tuple[str, ...]:
        """The flags as FETCH shows them: the stored ones, and ``\\Recent`` (a session flag,
        never set in an IMAP4rev2 session)."""
        return (*self.flags, "\\Recent") if self.recent else self.flags


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
    _keywords: set[str] = field(default_factory=set)  # keywords announced in FLAGS
    saved: list[int] = field(default_factory=list)  # UIDs kept by SEARCH RETURN (SAVE), RFC 5182
    _new: list[int] = field(default_factory=list)  # appended elsewhere, not yet announced
    _flag_news: set[int] = field(default_factory=set)  # flags changed elsewhere, not yet sent

    @classmethod
    def from_rows(
        cls, folder: FolderInfo, rows: Iterable[MessageRow], *, readonly: bool, recent_from: int | None = None
    ) -> SelectedMailbox:
        """The mailbox as SELECT sees it; messages from UID ``recent_from`` up to the folder's
        UIDNEXT are \\Recent. The rows are read after the folder, so they may hold messages
        appended meanwhile: those were not taken by this session's claim (which stops at
        UIDNEXT) and go to the next session told of them, never to two."""
        box = cls(folder, readonly, modseq=folder.highestmodseq)
        entries = box.entries
        for row in rows:
            entries.add(row, recent=recent_from is not None and recent_from <= row.uid < folder.uidnext)
        box.uids = array("I", entries)
        return box

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
        if sequence.saved:
            # SEARCHRES: the same messages for UID and numbered commands, gone ones dropped.
            found = ((self.msn(u), u) for u in self.saved)
            return sorted((n, u) for n, u in found if n is not None)
        if not self.uids:
            if not uid and any(start is not None or end is not None for start, end in sequence.ranges):
                raise ValueError("Invalid message sequence number: the mailbox is empty")
            return []
        if uid:
            largest = self.uids[-1]
            out: list[tuple[int, int]] = []
            for low, high in sorted(sequence.bounds(largest)):
                start = bisect.bisect_left(self.uids, low)
                stop = bisect.bisect_right(self.uids, high)
                out.extend((i + 1, self.uids[i]) for i in range(start, stop))
            return sorted(set(out))
        count = len(self.uids)
        for _low, high in sequence.bounds(count):
            if high > count:
                raise ValueError(f"Invalid message sequence number: {high} (mailbox has {count})")
        return [(n, self.uids[n - 1]) for n in sequence.numbers(count)]

    def first_unseen(self) -> int | None:
        for index, uid in enumerate(self.uids):
            if "\\Seen" not in self.entries[uid].flags:
                return index + 1
        return None

    def keywords(self) -> list[str]:
        found: dict[str, None] = {}
        for entry in self.entries.values():
            for flag in entry.flags:
                if not flag.startswith("\\"):
                    found.setdefault(flag)
        self._keywords = set(found)
        return sorted(found)

    @property
    def recent(self) -> int:
        return sum(1 for uid in self.uids if self.entries[uid].recent)

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
        return flag_list(entry.shown_flags())

    # -- changes -------------------------------------------------------------------------------
    def set_flags(self, uid: int, flags: tuple[str, ...], modseq: int) -> None:
        """This session's own STORE: applied at once, nothing pending."""
        entry = self.entries.get(uid)
        if entry is not None and modseq >= entry.modseq:
            entry.flags, entry.modseq = flags, modseq
            self._flag_news.discard(uid)

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
            del self.uids[n - 1]
            self.entries.pop(uid, None)
            self._flag_news.discard(uid)
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
                    self._flag_news.add(change.uid)
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
            out.extend(self.expunge_lines([uid for uid in self.uids if self.entries[uid].expunged]))
        # Announce new messages whose rows we have, in UID order.
        arrived = [uid for uid in self._new if uid in self.entries]
        if arrived:
            for uid in sorted(arrived):
                if not self.uids or uid > self.uids[-1]:
                    self.uids.append(uid)
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
        self._flag_news.clear()
        return out
