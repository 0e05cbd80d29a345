"""Session-side logic without sockets: message numbering and pending changes (RFC 3501 §5.2,
§7.4.1), SEARCH evaluation over cached structures, LIST patterns."""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, date, datetime

import pytest

from mssante.imap import listing
from mssante.imap.commands.values import SearchKey, SequenceSet
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.parser import parse_command
from mssante.imap.render import compress
from mssante.imap.search import Candidate, body_text, matches, needs
from mssante.store.feed import FolderChange
from mssante.store.headerindex import EMPTY, fields_of
from mssante.store.mime import analyse
from mssante.store.types import FolderInfo, MessageRow

FOLDER = FolderInfo(7, "a@b", "INBOX", 1700000000, 10, 5, None, True)
WHEN = datetime(2024, 3, 5, 9, 0, tzinfo=UTC)


def box(*uids: int) -> SelectedMailbox:
    rows = [MessageRow(uid, (), 100 * uid, WHEN, 1, uid) for uid in uids]
    return SelectedMailbox.from_rows(FOLDER, rows, readonly=False)


def test_resolve_message_numbers_and_uids() -> None:
    b = box(3, 5, 9)
    assert b.resolve(SequenceSet(((1, None),)), uid=False) == [(1, 3), (2, 5), (3, 9)]
    assert b.resolve(SequenceSet(((4, 8),)), uid=True) == [(2, 5)]
    assert b.resolve(SequenceSet(((20, None),)), uid=True) == [(3, 9)]  # "20:*" still matches the last
    assert b.resolve(SequenceSet(((100, 200),)), uid=True) == []
    with pytest.raises(ValueError):
        b.resolve(SequenceSet(((4, 4),)), uid=False)
    assert b.msn(5) == 2 and b.msn(4) is None


def test_expunge_waits_until_allowed_and_numbers_stay_valid() -> None:
    b = box(1, 2, 3)
    b.absorb([FolderChange(7, 6, "expunge", 2), FolderChange(7, 7, "append", 4)])
    b.add_rows([MessageRow(4, ("\\Seen",), 10, WHEN, 7, 40)])
    # During FETCH/STORE/SEARCH: the new message is announced, the expunge is not.
    assert b.updates(allow_expunge=False) == [b"* 4 EXISTS", b"* 0 RECENT"]
    assert b.msn(3) == 3 and b.exists == 4
    assert b.updates(allow_expunge=True) == [b"* 2 EXPUNGE"]
    assert list(b.uids) == [1, 3, 4]


def test_expunges_are_reported_highest_number_first() -> None:
    b = box(1, 2, 3, 4)
    b.absorb([FolderChange(7, 6, "expunge", 2), FolderChange(7, 6, "expunge", 4)])
    assert b.updates(allow_expunge=True) == [b"* 4 EXPUNGE", b"* 2 EXPUNGE"]


def test_flag_changes_are_reported_once_and_stale_ones_ignored() -> None:
    b = box(1, 2)
    b.absorb([FolderChange(7, 6, "flags", 2, "\\Seen")])
    assert b.updates(allow_expunge=False, with_uid=True) == [b"* 2 FETCH (UID 2 FLAGS (\\Seen))"]
    assert b.updates(allow_expunge=False) == []
    b.absorb([FolderChange(7, 5, "flags", 2, "")])  # older than what we know
    assert b.updates(allow_expunge=True) == []
    # Our own STORE is applied at once and not echoed again when the feed repeats it.
    b.set_flags(1, ("\\Flagged",), 8)
    b.absorb([FolderChange(7, 8, "flags", 1, "\\Flagged")])
    assert b.updates(allow_expunge=True) == []


def test_changes_of_other_folders_and_repeats_are_ignored() -> None:
    b = box(1)
    b.absorb([FolderChange(8, 9, "expunge", 1), FolderChange(7, 2, "append", 1)])
    assert b.updates(allow_expunge=True) == []
    assert b.remove([1]) == [1] and b.remove([1]) == []


MESSAGE = (
    b"From: Labo <labo@demo.mssante.fr>\r\n"
    b"To: alice@demo.mssante.fr\r\n"
    b"Subject: =?utf-8?q?R=C3=A9sultats?=\r\n"
    b"Date: Tue, 5 Mar 2024 14:03:09 +0100\r\n"
    b"X-MSS-INS: O\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"SMOpbW9nbG9iaW5lIG5vcm1hbGU=\r\n"
    b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Cr=E9atinine =E9lev=E9e\r\n"
    b"--b--\r\n"
)


def _search(program: str, *, flags: tuple[str, ...] = ("\\Seen",), size: int = 500) -> bool:
    cmd = parse_command(f"a SEARCH CHARSET UTF-8 {program}".encode())
    key = cmd.args.key  # type: ignore[union-attr]
    b = SelectedMailbox.from_rows(FOLDER, [MessageRow(42, flags, size, WHEN, 1, 1)], readonly=False)
    want_fields, want_body = needs(key)
    meta = analyse(MESSAGE)
    candidate = Candidate(
        1,
        b.entries[42],
        1,
        42,
        meta if want_body else None,
        MESSAGE if want_body else None,
        fields_of(meta) if want_fields else EMPTY,
    )
    return matches(key, candidate)


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("ALL", True),
        ("SEEN", True),
        ("UNSEEN", False),
        ("NOT SEEN", False),
        ("OR UNSEEN DELETED", False),
        ("OR UNSEEN SEEN", True),
        ("KEYWORD $x", False),
        ("UNKEYWORD $x", True),
        ("LARGER 499", True),
        ("SMALLER 500", False),
        ("UID 42", True),
        ("UID 1:41", False),
        ("1", True),
        ("2:*", True),  # "*" is the last message: 1
        ('SUBJECT "résultats"', True),  # RFC 2047 decoded, case-insensitive
        ("FROM labo", True),
        ("TO bob", False),
        ("HEADER X-MSS-INS O", True),
        ('HEADER X-MSS-INS ""', True),
        ('HEADER X-Absent ""', False),
        ('BODY "hémoglobine"', True),  # base64, UTF-8
        ('BODY "créatinine"', True),  # quoted-printable, Latin-1
        ("BODY labo", False),
        ("TEXT labo", True),  # headers count for TEXT
        ("SENTON 5-Mar-2024", True),
        ("SENTBEFORE 5-Mar-2024", False),
        ("SENTSINCE 5-Mar-2024", True),
        ("ON 5-Mar-2024", True),
        ("BEFORE 5-Mar-2024", False),
        ("SINCE 6-Mar-2024", False),
        ("NEW", False),
        ("OLD", True),
        ("(SEEN FROM labo)", True),
    ],
)
def test_search_keys(program: str, expected: bool) -> None:
    assert _search(program) is expected


def test_search_needs() -> None:
    assert needs(SearchKey("SEEN")) == (False, False)
    assert needs(SearchKey("NOT", (SearchKey("FROM", ("x",)),))) == (True, False)
    assert needs(SearchKey("OR", (SearchKey("SEEN"), SearchKey("BODY", ("x",))))) == (False, True)
    assert needs(SearchKey("OR", (SearchKey("SUBJECT", ("x",)), SearchKey("TEXT", ("x",))))) == (True, True)
    assert "Hémoglobine normale" in body_text(MESSAGE, analyse(MESSAGE))
    assert date(2024, 3, 5) == WHEN.date()


@pytest.mark.parametrize(
    ("name", "reference", "pattern", "expected"),
    [
        ("INBOX", "", "*", True),
        ("INBOX", "", "inbox", True),
        ("INBOX/Sub", "", "Inbox/%", True),
        ("Patients/Dupont", "", "%", False),
        ("Patients/Dupont", "", "Patients/%", True),
        ("Patients/Dupont/2024", "", "Patients/%", False),
        ("Patients/Dupont/2024", "Patients/", "*", True),
        ("Sent", "", "S%t", True),
        ("a.b", "", "a?b", False),
        ("Patients/Dupont", "", "%%*%", True),
        ("Patients/Dupont", "", "%%%", False),
        ("Patients/Dupont", "", "P%/%t", True),
        ("Patients/Dupont", "", "P*t", True),
        ("Patients/Dupont", "", "*" * 200 + "!", False),
        ("", "", "*", True),
        ("", "", "", True),
    ],
)
def test_list_patterns(name: str, reference: str, pattern: str, expected: bool) -> None:
    assert listing.matches(name, reference, pattern) is expected


def test_list_patterns_agree_with_the_definition() -> None:
    """Seeded comparison with RFC 3501's definition written as a (backtracking) regex."""
    rnd = random.Random(3501)
    for _ in range(3000):
        name = "".join(rnd.choice("ab/") for _ in range(rnd.randint(0, 8)))
        pattern = "".join(rnd.choice("ab/*%") for _ in range(rnd.randint(0, 7)))
        regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
        expected = re.fullmatch(regex, name, re.DOTALL) is not None
        assert listing.matches(name, "", pattern) is expected, (name, pattern)


def test_list_pattern_cost_is_linear_and_bounded() -> None:
    assert listing.collapse("a%*%b%%c**") == "a*b%c*"
    started = time.perf_counter()
    assert not listing.matches("a" * 1000, "", "*a" * 500 + "!")
    assert time.perf_counter() - started < 0.1
    with pytest.raises(listing.PatternTooLong):
        listing.compile_pattern("", "*" * (listing.MAX_PATTERN_LENGTH + 1))


def test_compress_uid_sets() -> None:
    assert compress([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert compress([4]) == "4"
    assert compress([]) == ""


def test_search_reads_bodies_in_bounded_groups() -> None:
    from mssante.imap.search import BODY_READ_AHEAD, read_ahead_groups

    b = box(*range(1, 2 * BODY_READ_AHEAD + 9))
    entries = [(n, b.entries[uid]) for n, uid in enumerate(b.uids, 1)]
    assert [len(g) for g in read_ahead_groups(entries)] == [BODY_READ_AHEAD, BODY_READ_AHEAD, 8]
    large = SelectedMailbox.from_rows(
        FOLDER, [MessageRow(uid, (), 5 * 1024 * 1024, WHEN, 1, uid) for uid in (1, 2, 3)], readonly=False
    )
    entries = [(n, large.entries[uid]) for n, uid in enumerate(large.uids, 1)]
    assert [len(g) for g in read_ahead_groups(entries)] == [1, 1, 1]
