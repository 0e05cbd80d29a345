"""Concurrency found by Dovecot's imaptest in stress mode (issue 16), kept as tests of ours since
CI cannot fetch imaptest: several real imaplib clients on one INBOX appending, selecting,
fetching, flagging and expunging at once must never get ``NO [SERVERBUG]`` or ``BAD``, the
server must log no error, and a message is ``\\Recent`` in one session at most (RFC 3501
§2.3.2; imaptest: "has \\Recent flag in multiple sessions")."""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import logging
import random
import re
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mssante.imap.mailbox import SelectedMailbox
from mssante.runtime import Runtime
from mssante.store.types import FolderInfo, MessageRow
from tests.helpers import make_message
from tests.imap_dialogues.harness import Running, running_server

BAL = "alice@demo.mssante.fr"
WORKERS = 4
SECONDS = 4.0
_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def test_select_shows_as_recent_only_what_its_claim_took() -> None:
    """SELECT claims \\Recent up to the UIDNEXT it read; a message appended between reading the
    folder and reading its rows is in the rows but was not claimed, so it is not recent here
    (another session will be told of it as recent)."""
    when = datetime(2026, 12, 6, tzinfo=UTC)
    folder = dataclasses.replace(FolderInfo(7, BAL, "INBOX", 1700000000, 10, 5, None, True), uidnext=5)
    rows = [MessageRow(uid, (), 100, when, 1, uid) for uid in range(1, 7)]
    box = SelectedMailbox.from_rows(folder, rows, readonly=False, recent_from=3)
    assert [uid for uid in box.uids if box.entries[uid].recent] == [3, 4]
    assert box.exists == 6


class _Worker:
    """One client doing what imaptest's stress mode does, in a seeded random order."""

    def __init__(self, running: Running, seed: int, deadline: float) -> None:
        self.running, self.rng, self.deadline = running, random.Random(seed), deadline
        self.recent: set[int] = set()
        self.problems: list[str] = []
        self.commands = 0

    def check(self, name: str, typ: str, data: list[object]) -> None:
        self.commands += 1
        text = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data if d is not None)
        if typ == "OK" or (typ == "NO" and b"[EXPUNGEISSUED]" in text):
            return
        self.problems.append(f"{name}: {typ} {text[:200]!r}")

    def note_recent(self, data: list[object]) -> None:
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid, flags = _UID.search(line), _FLAGS.search(line)
            if uid and flags and b"\\Recent" in flags.group(1):
                self.recent.add(int(uid.group(1)))

    def run(self) -> None:
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.running.tls_port, ssl_context=self.running.tls.client)
        try:
            imap.login("alice", "wonderland")
            self.check("SELECT", *imap.select("INBOX"))
            while time.monotonic() < self.deadline:
                choice = self.rng.random()
                if choice < 0.2:
                    self.check("APPEND", *imap.append("INBOX", None, None, make_message(to=BAL, size=3000)))
                elif choice < 0.3:
                    self.check("SELECT", *imap.select("INBOX"))
                elif choice < 0.5:
                    typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
                    self.check("UID FETCH FLAGS", typ, data)
                    self.note_recent(data)
                elif choice < 0.7:
                    self.check("FETCH BODY", *imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT])"))
                elif choice < 0.8:
                    flag = self.rng.choice(["\\Seen", "\\Flagged", "\\Deleted", "$Label1"])
                    self.check("STORE", *imap.uid("STORE", "1:*", "+FLAGS", f"({flag})"))
                elif choice < 0.9:
                    self.check("EXPUNGE", *imap.expunge())
                else:
                    self.check("NOOP", *imap.noop())
            imap.logout()
        except (imaplib.IMAP4.error, OSError) as exc:
            self.problems.append(repr(exc))


async def test_concurrent_sessions_on_one_inbox(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await runtime.store.ensure_account(BAL)
    for _ in range(5):
        await runtime.store.deliver(make_message(to=BAL), "dr.martin@demo.mssante.fr", [BAL])
    caplog.set_level(logging.ERROR, logger="mssante")
    async with running_server(runtime.store, tmp_path / "tls") as running:
        deadline = time.monotonic() + SECONDS
        workers = [_Worker(running, seed, deadline) for seed in range(WORKERS)]
        threads = [threading.Thread(target=w.run) for w in workers]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            await asyncio.sleep(0.05)
    assert [p for w in workers for p in w.problems] == []
    assert sum(w.commands for w in workers) > 40  # the sessions really interleaved
    for i, a in enumerate(workers):
        for b in workers[i + 1 :]:
            assert not a.recent & b.recent, "a message was \\Recent in two sessions"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_selected_mailbox_memory_is_compact() -> None:
    """Issue 20: a session's selected 20,000-message mailbox costs tens of bytes per message
    (columns of integers, interned flag sets), not an object per message (~300 bytes)."""
    when = datetime(2026, 12, 6, tzinfo=UTC)
    flag_sets = [(), ("\\Seen",), ("\\Seen", "\\Answered"), ("$Label1", "\\Flagged")]
    # The rows as the store reads them: new flag strings and dates for each message.
    rows = [
        MessageRow(
            uid,
            tuple(f"{f}" for f in flag_sets[uid % 4]),
            4000 + uid,
            when + timedelta(seconds=uid),
            uid,
            10_000 + uid,
        )
        for uid in range(1, 20_001)
    ]
    folder = FolderInfo(7, BAL, "INBOX", 1700000000, 20_001, 20_000, None, True)
    tracemalloc.start()
    try:
        box = SelectedMailbox.from_rows(folder, rows, readonly=False)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del rows
    assert box.exists == 20_000 and box.entries[777].flags == ("\\Seen",)
    assert box.entries[777].internaldate == when + timedelta(seconds=777)
    assert kept < 20_000 * 48, f"{kept / 20_000:.0f} bytes per message"


def _expunged_then_replaced(running: Running) -> list[bytes]:
    """Session A holds message 2; session B expunges it (its content is collected) and stores
    another message; A, not yet told, fetches message 2's Subject."""
    context = running.tls.client
    a = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=context)
    b = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=context)
    for imap in (a, b):
        imap.login("alice", "wonderland")
    b.create("Reuse")
    b.append("Reuse", None, None, make_message(to=BAL, subject="premier"))
    b.append("Reuse", None, None, make_message(to=BAL, subject="expunged"))
    a.select("Reuse")
    b.select("Reuse")
    b.store("2", "+FLAGS", "(\\Deleted)")
    b.expunge()
    b.append("Reuse", None, None, make_message(to=BAL, subject="newcomer"))
    typ, data = a.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    answers = [typ.encode(), *(d[1] if isinstance(d, tuple) else d for d in data if d is not None)]
    for imap in (a, b):
        imap.logout()
    return answers


async def test_expunged_message_never_shows_another_ones_content(runtime: Runtime, tmp_path: Path) -> None:
    """RFC 2180 §4.1: a message expunged by another session keeps its number in this one until
    it is told; what it fetches under that number is that message or nothing (NO
    [EXPUNGEISSUED]), never a message stored since (SQLite gave a collected blob's id again)."""
    await runtime.store.ensure_account(BAL)
    async with running_server(runtime.store, tmp_path / "tls") as running:
        answers = await asyncio.to_thread(_expunged_then_replaced, running)
    assert not any(b"newcomer" in a for a in answers), answers
    assert answers[0] == b"NO" or any(b"expunged" in a for a in answers), answers
