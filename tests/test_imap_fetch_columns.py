"""Issue 20: ``FETCH`` of column items (``UID FETCH 1:* (FLAGS)``) is rendered a block at a time
from the columns, and whole blocks of a folder snapshot are kept and shared by its sessions.
What a client reads must be what it read before: checked over a real IMAP socket against a
reference the test keeps itself (the flags it set, each session's numbering and \\Recent) and,
byte for byte, against the message-by-message path (``CHANGEDSINCE 0`` takes it)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from mssante.imap import fetch
from mssante.imap.snapshots import KEEP_SHAPES
from mssante.runtime import Runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import Client, Running, running_server

BAL = "alice@demo.mssante.fr"
SENDER = "dr.martin@demo.mssante.fr"
# Flags and keywords the test gives message UID i (i from 1), cycling: every system flag, a
# few keywords, combinations, and none.
VARIETY = [
    (),
    ("\\Seen",),
    ("\\Seen", "\\Flagged"),
    ("\\Answered", "$Label1"),
    ("\\Draft",),
    ("\\Seen", "$MDNSent", "Projet-X"),
    ("\\Deleted", "\\Seen"),
    ("$Label1", "$Label2", "\\Flagged"),
]
_LINE = re.compile(r"\* (\d+) FETCH \((.*)\)$")


class Session:
    """A logged-in raw connection: each command's untagged lines, exactly as sent."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.count = 0

    @classmethod
    async def open(cls, running: Running) -> Session:
        session = cls(await Client.connect(running))
        await session.client.line()
        await session.run("LOGIN alice wonderland")
        return session

    async def run(self, command: str) -> list[str]:
        self.count += 1
        tag = f"t{self.count}"
        await self.client.send(f"{tag} {command}\r\n".encode())
        untagged = []
        while not (line := await self.client.line()).startswith(tag + " "):
            untagged.append(line)
        assert line.startswith(f"{tag} OK"), (command, line)
        return untagged


def _parse(lines: list[str]) -> list[tuple[int, int, frozenset[str], str]]:
    """(number, UID or 0 when not sent, flags, rest) of each FETCH line; nothing else expected."""
    out = []
    for line in lines:
        found = _LINE.match(line)
        assert found, line
        number, body = int(found[1]), found[2]
        uid = re.search(r"UID (\d+)", body)
        flags = re.search(r"FLAGS \(([^)]*)\)", body)
        assert flags, line
        rest = re.sub(r"(UID \d+|FLAGS \([^)]*\)) ?", "", body).strip()
        out.append((number, int(uid[1]) if uid else 0, frozenset(flags[1].split()), rest))
    return out


def _expected(
    numbering: list[int], flags: dict[int, set[str]], recent: set[int], wanted: list[int]
) -> list[tuple[int, int, frozenset[str], str]]:
    """The reference: messages ``wanted`` (by number) of a session numbering UIDs ``numbering``."""
    out = []
    for n in wanted:
        uid = numbering[n - 1]
        out.append((n, uid, frozenset(flags[uid] | ({"\\Recent"} if uid in recent else set())), ""))
    return out


@pytest.mark.parametrize("block_rows", [4096, 8])
async def test_column_fetch_answers_as_the_reference(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_rows: int
) -> None:
    """40 messages with varied flags and keywords, sessions with and without \\Recent, a
    session's own flag change, a change heard from another session, an expunge not yet
    reported, messages arrived after SELECT; with blocks of 8 rows, requests that start and
    end inside blocks and cross them."""
    monkeypatch.setattr(fetch, "BLOCK_ROWS", block_rows)
    await runtime.store.ensure_account(BAL)
    for i in range(30):
        await runtime.store.deliver(make_message(to=BAL, subject=f"m{i}"), SENDER, [BAL])
    flags: dict[int, set[str]] = {}
    async with running_server(runtime.store, tmp_path / "tls") as running:
        setup = await Session.open(running)
        await setup.run("SELECT INBOX")  # takes \Recent of UIDs 1-30
        for uid in range(1, 31):
            chosen = VARIETY[uid % len(VARIETY)]
            flags[uid] = set(chosen)
            if chosen:
                await setup.run(f"UID STORE {uid} FLAGS.SILENT ({' '.join(chosen)})")
        await setup.run("LOGOUT")
        for i in range(30, 40):
            await runtime.store.deliver(make_message(to=BAL, subject=f"m{i}"), SENDER, [BAL])
            flags[i + 1] = set()
        b = await Session.open(running)
        await b.run("SELECT INBOX")  # \Recent: UIDs 31-40
        c = await Session.open(running)
        await c.run("SELECT INBOX")  # no \Recent
        numbering = list(range(1, 41))
        everything = list(range(1, 41))
        for session, recent in ((b, set(range(31, 41))), (c, set())):
            for command, wanted in (
                ("UID FETCH 1:* (FLAGS)", everything),
                ("FETCH 1:* (FLAGS)", everything),
                ("FETCH 1:* (UID FLAGS)", everything),
                ("FETCH 2:5,9,7,30:* (FLAGS UID)", [2, 3, 4, 5, 7, 9, *range(30, 41)]),
                ("UID FETCH 3:20,35:38 (FLAGS)", [*range(3, 21), *range(35, 39)]),
                ("FETCH 40 (FLAGS UID)", [40]),
            ):
                got = _parse(await session.run(command))
                expected = _expected(numbering, flags, recent, wanted)
                if "UID" not in command:
                    expected = [(n, 0, shown, rest) for n, _, shown, rest in expected]
                assert got == expected, (command, session is b)
            sizes = _parse(await session.run("UID FETCH 1:* (FLAGS RFC822.SIZE INTERNALDATE)"))
            reference = _expected(numbering, flags, recent, everything)
            assert [row[:3] for row in sizes] == [row[:3] for row in reference]
            assert all(re.fullmatch(r'RFC822\.SIZE \d+ INTERNALDATE "[^"]+"', row[3]) for row in sizes)

        # Item lists kept per snapshot: the first KEEP_SHAPES only (a client asked for five).
        snapshots = {
            conn.session.box.entries._snapshot for conn in running.server._connections if conn.session.box
        }
        assert snapshots and all(0 < len(kept.lines) <= KEEP_SHAPES for kept in snapshots)
        assert len(await c.run("FETCH 1:3 (FLAGS FLAGS)")) == 3  # a repeated item: message by message

        # C changes a flag (its columns diverge from the snapshot), B hears of it.
        await c.run("UID STORE 3 +FLAGS.SILENT ($New)")
        flags[3].add("$New")
        await asyncio.sleep(0.05)  # the change feed reaches B just after C hears its OK
        assert _parse(await c.run("UID FETCH 1:* (FLAGS)")) == _expected(numbering, flags, set(), everything)
        await b.run("NOOP")
        assert _parse(await b.run("UID FETCH 1:* (FLAGS)")) == _expected(
            numbering, flags, set(range(31, 41)), everything
        )

        # C expunges UID 7 (message 7): B keeps its numbering until told (a FETCH may not tell).
        await c.run("UID STORE 7 FLAGS.SILENT (\\Deleted)")
        flags[7] = {"\\Deleted"}
        await c.run("UID EXPUNGE 7")
        await asyncio.sleep(0.05)
        await b.run("FETCH 1 (FLAGS)")  # B hears of it
        assert _parse(await b.run("FETCH 1:* (FLAGS UID)")) == _expected(
            numbering, flags, set(range(31, 41)), everything
        )
        told = await b.run("UID FETCH 1:* (FLAGS)")  # a UID FETCH may: EXPUNGE first
        assert told[0] == "* 7 EXPUNGE"
        numbering.remove(7)
        assert _parse(told[1:]) == _expected(numbering, flags, set(range(31, 41)), list(range(1, 40)))

        # Byte for byte against the message-by-message path, MODSEQ included (CONDSTORE).
        for session in (b, c):
            await _fast_equals_slow(session)
            await session.run("LOGOUT")
            await session.client.close()

        # A new session on the changed folder (a new snapshot), then new messages (\Recent to it).
        d = await Session.open(running)
        await d.run("SELECT INBOX")
        first = await d.run("UID FETCH 1:* (FLAGS)")
        assert _parse(first) == _expected(numbering, flags, set(), list(range(1, 40)))
        assert await d.run("UID FETCH 1:* (FLAGS)") == first  # from the kept blocks
        for i in range(40, 45):
            await runtime.store.deliver(make_message(to=BAL, subject=f"m{i}"), SENDER, [BAL])
            flags[i + 1] = set()
        await asyncio.sleep(0.05)
        assert "* 44 EXISTS" in await d.run("NOOP")
        numbering += list(range(41, 46))
        assert _parse(await d.run("FETCH 1:* (FLAGS UID)")) == _expected(
            numbering, flags, set(range(41, 46)), list(range(1, 45))
        )
        await _fast_equals_slow(d)
        await d.run("LOGOUT")
        await d.client.close()


async def _fast_equals_slow(session: Session) -> None:
    fast = await session.run("UID FETCH 1:* (FLAGS MODSEQ)")
    if fast[-1].startswith("* OK [HIGHESTMODSEQ "):  # CONDSTORE turned on by this command
        fast = fast[:-1]
    slow = await session.run("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
    assert fast == slow and len(fast) >= 39 and all(" MODSEQ (" in line for line in fast)
    assert await session.run("FETCH 1:* (UID FLAGS MODSEQ)") == slow
