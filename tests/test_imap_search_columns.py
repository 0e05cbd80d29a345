"""Issue 20: SEARCH programs on numbers and flags are answered from the mailbox's columns
(:mod:`mssante.imap.searchcolumns`); each must find exactly what the message-by-message
evaluation (:func:`mssante.imap.search.matches`, which still answers every other program)
finds, on a mailbox in the states a session reaches: a shared snapshot, flags changed,
messages expunged by this session or by another one, new ones in the tail."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from mssante.imap import searchcolumns
from mssante.imap.commands.values import SearchKey, SequenceSet
from mssante.imap.mailbox import MessageTable, SelectedMailbox
from mssante.imap.search import FLAG_KEYS, Candidate, matches
from mssante.imap.snapshots import Rendered, Snapshot
from mssante.store.types import FolderInfo, MessageRow

WHEN = datetime(2026, 12, 6, tzinfo=UTC)
FLAG_SETS = [(), ("\\Seen",), ("\\Seen", "\\Deleted"), ("\\Flagged",), ("$Label1", "\\Seen"), ("Deleted",)]


def _row(rng: random.Random, uid: int) -> MessageRow:
    when = WHEN + timedelta(hours=rng.randint(-72, 72), seconds=rng.choice((0, 1, 59)))
    return MessageRow(
        uid, rng.choice(FLAG_SETS), rng.choice((99, 100, 101, 5000)), when, rng.randint(1, 50), uid
    )


def _mailbox(rng: random.Random, count: int) -> SelectedMailbox:
    table = MessageTable()
    uid = 0
    for _ in range(count):
        uid += rng.choice((1, 1, 2, 5))  # UIDs with holes
        table.add(_row(rng, uid))
    shared = Snapshot(None, table._tail, table._sets, Rendered())
    folder = FolderInfo(7, "alice@demo.mssante.fr", "INBOX", 1700000000, uid + 1, uid, None, True)
    box = SelectedMailbox.from_snapshot(folder, shared, readonly=False, recent_from=rng.randint(1, uid + 2))
    if count:
        for victim in rng.sample(list(box.uids), min(3, count)):
            box.set_flags(victim, rng.choice(FLAG_SETS), 999)  # this session's changes
        box.remove(rng.sample(list(box.uids), min(2, len(box.uids))))  # its own EXPUNGE
        for gone in rng.sample(list(box.uids), min(2, len(box.uids))):
            box.entries[gone].expunged = True  # expunged elsewhere, not yet reported
    for _ in range(rng.randint(0, 3)):  # arrived while selected
        uid += 1
        box.entries.add(_row(rng, uid), recent=rng.random() < 0.5)
        box._own_uids().append(uid)
    return box


def _sequence(rng: random.Random, largest: int) -> SequenceSet:
    ranges: list[tuple[int | None, int | None]] = []
    for _ in range(rng.randint(1, 3)):
        low = rng.choice((None, rng.randint(1, largest + 3)))
        high = rng.choice((low, None, rng.randint(1, largest + 3)))
        ranges.append((low, high))
    return SequenceSet(tuple(ranges))


def _column_key(rng: random.Random) -> SearchKey:
    name = rng.choice(("LARGER", "SMALLER", "BEFORE", "ON", "SINCE", "OLDER", "YOUNGER", "MODSEQ"))
    if name in ("LARGER", "SMALLER"):
        return SearchKey(name, (rng.choice((0, 99, 100, 101, 4999, 5000)),))
    if name in ("BEFORE", "ON", "SINCE"):
        return SearchKey(name, ((WHEN + timedelta(days=rng.randint(-4, 4))).date(),))
    if name == "MODSEQ":
        return SearchKey(name, (rng.randint(0, 60),))
    # WITHIN: ages far from any message's (they are days apart from now, not seconds)
    return SearchKey(name, (rng.choice((60, 86_400 * 300, 86_400 * 5000)),))


def _leaf(rng: random.Random, box: SelectedMailbox) -> SearchKey:
    choice = rng.randrange(7)
    if choice == 0:
        return SearchKey("ALL", ())
    if choice == 1:
        return SearchKey(rng.choice(sorted(FLAG_KEYS)), ())
    if choice == 2:
        return SearchKey("UID", (_sequence(rng, box.uids[-1] if box.uids else 5),))
    if choice == 3:
        return SearchKey("SEQSET", (_sequence(rng, len(box.uids) or 5),))
    if choice == 4:
        word = rng.choice(("$label1", "$Label1", "Deleted", "nothing"))
        return SearchKey(rng.choice(("KEYWORD", "UNKEYWORD")), (word,))
    if choice == 5:
        return SearchKey(rng.choice(("RECENT", "NEW", "OLD")), ())
    return _column_key(rng)


def _program(rng: random.Random, box: SelectedMailbox, depth: int = 0) -> SearchKey:
    choice = rng.randrange(5) if depth < 3 else 0
    if choice == 1:
        return SearchKey("NOT", (_program(rng, box, depth + 1),))
    if choice == 2:
        return SearchKey("OR", (_program(rng, box, depth + 1), _program(rng, box, depth + 1)))
    if choice == 3:
        return SearchKey("AND", tuple(_program(rng, box, depth + 1) for _ in range(rng.randint(1, 3))))
    return _leaf(rng, box)


def _reference(box: SelectedMailbox, key: SearchKey) -> list[int]:
    largest_uid = box.uids[-1] if box.uids else 0
    found = []
    for at, uid in enumerate(box.uids):
        entry = box.entries[uid]
        if not entry.expunged and matches(key, Candidate(at + 1, entry, len(box.uids), largest_uid)):
            found.append(at)
    return found


def test_column_programs_find_what_the_message_by_message_test_finds() -> None:
    rng = random.Random(20)
    for case in range(300):
        box = _mailbox(rng, rng.choice((0, 1, 7, 40, 300)))
        for _ in range(10):
            key = _program(rng, box)
            assert searchcolumns.answerable(key)
            assert searchcolumns.positions(box, key) == _reference(box, key), (case, key)


def test_header_and_body_keys_are_left_to_the_message_by_message_test() -> None:
    subject = SearchKey("SUBJECT", ("lot",))
    assert not searchcolumns.answerable(subject)
    assert not searchcolumns.answerable(SearchKey("AND", (SearchKey("UNSEEN", ()), subject)))
    assert not searchcolumns.answerable(SearchKey("TEXT", ("ordonnance",)))
    assert not searchcolumns.answerable(SearchKey("SENTSINCE", (WHEN.date(),)))
    assert searchcolumns.answerable(SearchKey("NOT", (SearchKey("SINCE", (WHEN.date(),)),)))
