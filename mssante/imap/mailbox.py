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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from mssante.imap.commands.values import SequenceSet
from mssante.imap.render import compress, flag_list
from mssante.store.feed import FolderChange
from mssante.store.store import FolderInfo, MessageRow


@dataclass(slots=True)
class Entry:
    """What the session knows of one message without reading its content."""

    uid: int
    flags: tuple[str, ...]
    size: int
    internaldate: datetime
    modseq: int
    blob_id: int
    expunged: bool = False  # expunged elsewhere, not yet reported to this session
    rendered: dict[str, bytes] | None = None  # ENVELOPE/BODYSTRUCTURE already rendered once
    recent: bool = False  # \Recent for this session (IMAP4rev1 only)

    def shown_flags(self) -> tuple[str, ...]:
        """The flags as FETCH shows them: the stored ones, and ``\\Recent`` (a session flag,
        never set in an IMAP4rev2 session)."""
        return (*self.flags, "\\Recent") if self.recent else self.flags


@dataclass
class SelectedMailbox:
    folder: FolderInfo
    readonly: bool
    uids: list[int] = field(default_factory=list)  # index + 1 is the message number
    entries: dict[int, Entry] = field(default_factory=dict)
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
        """The mailbox as SELECT sees it; messages from UID ``recent_from`` on are \\Recent."""
        box = cls(folder, readonly, modseq=folder.highestmodseq)
        entries = box.entries
        for uid, flags, size, when, modseq, blob_id in rows:
            recent = recent_from is not None and uid >= recent_from
            entries[uid] = Entry(uid, tuple(flags), size, when, modseq, blob_id, recent=recent)
        box.uids = list(entries)
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
                self.entries[row.uid] = Entry(
                    row.uid,
                    tuple(row.flags),
                    row.size,
                    row.internaldate,
                    row.modseq,
                    row.blob_id,
                    recent=recent_from is not None and row.uid >= recent_from,
                )

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
