"""Issue 20: sessions of one folder share its message columns (a snapshot, copied only where a
session diverges), each still seeing exactly its own view; idle sessions cost no memory per
message and what they held is given back when they log out."""

from __future__ import annotations

import asyncio
import gc
import imaplib
import subprocess
import sys
import textwrap
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from mssante import memory
from mssante.config import Settings
from mssante.imap import sparse
from mssante.imap.mailbox import MessageTable, SelectedMailbox
from mssante.imap.session import Session
from mssante.imap.snapshots import Columns, Rendered, Snapshot
from mssante.runtime import Runtime, open_runtime
from mssante.store.feed import FolderChange
from mssante.store.types import FolderInfo, MessageRow
from tests.helpers import make_message
from tests.imap_dialogues.harness import Running, running_server

BAL = "alice@demo.mssante.fr"
WHEN = datetime(2026, 12, 6, tzinfo=UTC)
FOLDER = FolderInfo(7, BAL, "INBOX", 1700000000, 101, 100, None, True)


def _snapshot(count: int) -> Snapshot:
    table = MessageTable()
    for uid in range(1, count + 1):
        table.add(MessageRow(uid, ("\\Seen",) if uid % 2 else (), 1000 + uid, WHEN, uid, 500 + uid))
    return Snapshot(None, table._tail, table._sets, Rendered())


def test_tables_share_a_snapshot_until_they_change_it() -> None:
    shared = _snapshot(100)
    a = SelectedMailbox.from_snapshot(FOLDER, shared, readonly=False)
    b = SelectedMailbox.from_snapshot(FOLDER, shared, readonly=False)
    assert a.uids is b.uids is shared.columns.uid
    # A flag change copies the flag and MODSEQ columns of that session only.
    a.set_flags(3, ("\\Flagged",), 200)
    assert a.entries[3].flags == ("\\Flagged",) and a.entries[3].modseq == 200
    assert b.entries[3].flags == ("\\Seen",) and b.entries[3].modseq == 3
    assert shared.sets[shared.columns.flags[2]] == ("\\Seen",)
    # An expunge reported to A: its numbering is its own, the shared rows stay.
    assert a.remove([10, 20]) == [20, 10]
    assert a.exists == 98 and b.exists == 100 and len(shared) == 100
    assert a.msn(21) == 19 and b.msn(21) == 21 and 10 not in a.entries and 10 in b.entries
    assert a.uids is not shared.columns.uid and b.uids is shared.columns.uid
    # A new message goes to the session's tail; the snapshot never grows.
    b.absorb([])
    b.entries.add(MessageRow(101, ("$Label",), 5, WHEN, 300, 999))
    assert b.entries[101].flags == ("$Label",) and len(shared) == 100
    assert list(b.entries)[-2:] == [100, 101]
    assert shared.sets == [("\\Seen",), ()]  # a new flag set is the session's own


def test_many_expunges_make_the_table_private() -> None:
    shared = _snapshot(200)
    box = SelectedMailbox.from_snapshot(FOLDER, shared, readonly=False)
    box.remove(range(1, 60, 2))
    assert box.entries._base is shared.columns and len(box.entries._gone) == 30
    box.remove(range(61, 200, 2))
    assert box.exists == 100 and len(box.entries) == 100
    assert box.entries._base is not shared.columns and not box.entries._gone
    assert box.first_unseen() == 1 and box.entries[2].size == 1002
    assert box.resolve(_seq("1:3"), uid=False) == [(1, 2), (2, 4), (3, 6)]


def test_an_idle_table_makes_no_containers_yet_each_fills_its_own() -> None:
    """What a session never uses it does not make (one shared empty tail and empty sets:
    every small object an idle session holds is memory a burst of logins may keep), and the
    first message, expunge or \\Recent of one session makes its own, not the others'."""
    shared = _snapshot(10)
    a, b = (SelectedMailbox.from_snapshot(FOLDER, shared, readonly=False) for _ in range(2))
    for box in (a, b):
        table = box.entries
        assert table._tail is b.entries._tail and len(table._tail) == 0
        assert table.expunged is table.recent is table._gone is sparse.EMPTY
        assert box._flag_news is box._keywords is sparse.EMPTY
    assert a.absorb([FolderChange(7, 20, "append", 11)]) == [11]
    a.add_rows([MessageRow(11, (), 5, WHEN, 20, 511)], recent_from=11)
    a.absorb([FolderChange(7, 21, "expunge", 2), FolderChange(7, 22, "flags", 3, "\\Flagged")])
    assert list(a.entries)[-1] == 11 and 11 not in b.entries and len(b.entries._tail) == 0
    assert a.entries.expunged == {2} and a.entries.recent == {11} and a._flag_news == {3}
    assert not b.entries.expunged and not b.entries.recent and not b._flag_news
    assert frozenset() == sparse.EMPTY
    assert a.updates(allow_expunge=True) == [
        b"* 2 EXPUNGE",
        b"* 10 EXISTS",
        b"* 1 RECENT",
        b"* 2 FETCH (FLAGS (\\Flagged))",
    ]
    assert not a.entries.expunged and not a._flag_news
    a.remove([11])
    assert not a.entries.recent and 11 not in a.entries and len(b.entries._tail) == 0


def test_sparse_sets_add_to_their_own_and_leave_the_shared_empty_one() -> None:
    mine = sparse.added(sparse.EMPTY, 4)
    assert mine == {4} and isinstance(mine, set) and frozenset() == sparse.EMPTY
    assert sparse.added(mine, 5) is mine and mine == {4, 5}
    assert sparse.removed(mine, 4) is mine and mine == {5}
    assert sparse.removed(sparse.EMPTY, 4) is sparse.EMPTY


def _seq(text: str):  # type: ignore[no-untyped-def]
    from mssante.imap.reader import parse_sequence_set

    return parse_sequence_set(text)


def test_recent_is_a_range_not_a_set_per_message() -> None:
    folder = FolderInfo(7, BAL, "INBOX", 1700000000, 101, 100, None, True)
    box = SelectedMailbox.from_snapshot(folder, _snapshot(100), readonly=False, recent_from=41)
    assert box.recent == 60 and not box.entries.recent
    box.remove([50])
    assert box.recent == 59 and box.entries[41].recent and not box.entries[40].recent


def _sessions(running: Running) -> list[Session]:
    return [c.session for c in running.server._connections if c.session.box is not None]


def _shared_dialogue(running: Running) -> dict[str, object]:
    """Three sessions on one INBOX: A flags, C expunges, B only watches; then D selects."""
    ctx = running.tls.client
    a, b, c = (imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=ctx) for _ in range(3))
    for imap in (a, b, c):
        imap.login("alice", "wonderland")
        imap.select("INBOX")
    sessions = _sessions(running)
    out: dict[str, object] = {
        "shared_before": len({id(s.box.entries._base.uid) for s in sessions if s.box}) == 1,
    }
    a.store("3", "+FLAGS", "(\\Flagged)")
    c.store("5", "+FLAGS", "(\\Deleted)")
    c.expunge()
    b.untagged_responses.clear()
    b.noop()
    out["b_noop"] = {k: list(v) for k, v in b.untagged_responses.items() if k in ("EXPUNGE", "FETCH")}
    b.untagged_responses.clear()
    out["b_flags"] = b.fetch("3", "(FLAGS)")[1]
    out["b_uid_5"] = b.fetch("5", "(UID)")[1]
    out["a_fetch_unreported"] = a.fetch("5", "(UID)")[1]  # FETCH may not report the expunge
    a.untagged_responses.clear()
    a.noop()
    out["a_noop"] = list(a.untagged_responses.get("EXPUNGE", []))
    d = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=ctx)
    d.login("alice", "wonderland")
    out["d_select"] = d.select("INBOX")[1]
    out["d_flags"] = d.fetch("1:*", "(UID FLAGS)")[1]
    for imap in (a, b, c, d):
        imap.logout()
    return out


async def test_sessions_share_columns_yet_each_sees_its_changes(runtime: Runtime, tmp_path: Path) -> None:
    await runtime.store.ensure_account(BAL)
    for i in range(8):
        await runtime.store.deliver(make_message(to=BAL, subject=f"m{i}"), "dr.martin@demo.mssante.fr", [BAL])
    async with running_server(runtime.store, tmp_path / "tls") as running:
        out = await asyncio.to_thread(_shared_dialogue, running)
    assert out["shared_before"]
    assert out["b_noop"] == {"EXPUNGE": [b"5"], "FETCH": [b"3 (FLAGS (\\Flagged))"]}
    assert out["b_flags"] == [b"3 (FLAGS (\\Flagged))"]
    assert out["b_uid_5"] == [b"5 (UID 6)"]
    assert out["a_fetch_unreported"] == [b"5 (UID 5)"]
    assert out["a_noop"] == [b"5"]
    assert out["d_select"] == [b"7"]
    assert out["d_flags"] == [
        b"1 (UID 1 FLAGS ())",
        b"2 (UID 2 FLAGS ())",
        b"3 (UID 3 FLAGS (\\Flagged))",
        b"4 (UID 4 FLAGS ())",
        b"5 (UID 6 FLAGS ())",
        b"6 (UID 7 FLAGS ())",
        b"7 (UID 8 FLAGS ())",
    ]


_CLIENTS = textwrap.dedent(
    """
    import asyncio, ssl, sys
    port, count, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    async def command(r, w, tag, line):
        w.write(f"{tag} {line}\\r\\n".encode())
        while not (line := await r.readline()).startswith(tag.encode() + b" "):
            if not line:
                raise ConnectionError("closed by the server")
    async def main():
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        conns = []
        for _ in range(count):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            await r.readline()
            await command(r, w, "a", "LOGIN alice wonderland")
            await command(r, w, "b", "SELECT INBOX")
            conns.append((r, w))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for r, w in conns:
            await command(r, w, "z", "LOGOUT")
            w.close()
        print("done", flush=True)
    asyncio.run(main())
    """
)


async def test_idle_sessions_cost_no_memory_per_message_and_give_it_back(
    runtime: Runtime, tmp_path: Path
) -> None:
    """40 sessions idle on a 5,000-message INBOX: the Python memory they add does not grow with
    the mailbox (their columns are one shared snapshot: ~44 bytes a message each before), and
    after they log out the server is back near where it started. Clients run in another
    process, so only the server's allocations are traced."""
    messages, sessions = 5000, 40  # 40: under the per-address cap of 50
    await runtime.store.ensure_account(BAL)
    body = make_message(to=BAL, size=500)
    for start in range(0, messages, 500):
        await asyncio.gather(
            *(
                runtime.store.deliver(body + b"X-Seq: %d\r\n" % i, "dr.martin@demo.mssante.fr", [BAL])
                for i in range(start, start + 500)
            )
        )
    async with running_server(runtime.store, tmp_path / "tls") as running:
        context = running.tls.client
        warm = await asyncio.to_thread(imaplib.IMAP4_SSL, "127.0.0.1", running.tls_port, ssl_context=context)
        await asyncio.to_thread(warm.login, "alice", "wonderland")
        await asyncio.to_thread(warm.select, "INBOX")  # the snapshot exists before measuring
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CLIENTS,
                str(running.tls_port), str(sessions), str(running.tls.ca_file),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert clients.stdin is not None and clients.stdout is not None
            ready = await asyncio.wait_for(clients.stdout.readline(), 300)
            assert ready == b"ready\n", await clients.stderr.read()  # type: ignore[union-attr]
            gc.collect()
            idle = tracemalloc.get_traced_memory()[0]
            assert len(_sessions(running)) == sessions + 1
            clients.stdin.write(b"go\n")
            await clients.stdin.drain()
            assert await asyncio.wait_for(clients.stdout.readline(), 120) == b"done\n"
            await clients.wait()
            for _ in range(100):
                if len(running.server._connections) == 1:
                    break
                await asyncio.sleep(0.05)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        await asyncio.to_thread(warm.logout)
    per_session = (idle - before) / sessions
    # A session's connection (TLS read buffer, streams, parser) is ~60 KB of Python memory;
    # its own columns would add 5,000 × 44 bytes = 220 KB.
    assert per_session < 110_000, f"{per_session:.0f} bytes per idle session"
    assert after - before < 0.1 * (idle - before) + 200_000, (before, idle, after)
    assert memory.trim_now() in (0, 1)


def _login(running: Running) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client)
    imap.login("alice", "wonderland")
    return imap


async def test_a_kept_snapshot_is_checked_against_another_workers_changes(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    """SELECT of a folder this process holds a snapshot of reads only the folder row: a change
    another worker (another store: nothing reaches this one's change hub) made since is seen
    all the same, and so is a folder renamed away and replaced by a new one of the same name."""
    await runtime.store.ensure_account(BAL)
    for i in range(3):
        await runtime.store.deliver(make_message(to=BAL, subject=f"m{i}"), "dr.martin@demo.mssante.fr", [BAL])
    await runtime.store.create_folder(BAL, "Work")
    await runtime.store.append(BAL, "Work", make_message(to=BAL, subject="w"), actor=BAL)
    other = open_runtime(settings)
    try:
        async with running_server(runtime.store, tmp_path / "tls") as running:
            a = await asyncio.to_thread(_login, running)
            assert (await asyncio.to_thread(a.select, "INBOX"))[1] == [b"3"]
            assert (await asyncio.to_thread(a.select, "Work"))[1] == [b"1"]
            assert (await asyncio.to_thread(a.select, "INBOX"))[1] == [b"3"]  # the kept snapshot
            inbox = await other.store.folder(BAL, "INBOX")
            await other.store.store_flags(inbox.id, [2], "add", ["\\Flagged"], actor=BAL)
            await other.store.deliver(make_message(to=BAL, subject="m3"), "dr.martin@demo.mssante.fr", [BAL])
            b = await asyncio.to_thread(_login, running)
            for imap in (b, a):
                assert (await asyncio.to_thread(imap.select, "INBOX"))[1] == [b"4"]
                flags = (await asyncio.to_thread(imap.fetch, "1:*", "(UID FLAGS)"))[1]
                assert flags[1] == b"2 (UID 2 FLAGS (\\Flagged))"
                assert isinstance(flags[3], bytes) and flags[3].startswith(b"4 (UID 4 ")
            await other.store.rename_folder(BAL, "Work", "Old", actor=BAL)
            await other.store.create_folder(BAL, "Work")
            assert (await asyncio.to_thread(b.select, "Work"))[1] == [b"0"]
            await other.store.append(BAL, "Work", make_message(to=BAL, subject="w2"), actor=BAL)
            b.untagged_responses.clear()
            await asyncio.to_thread(b.noop)  # the session follows the new folder's changes
            assert b.untagged_responses.get("EXISTS") == [b"1"]
            assert (await asyncio.to_thread(a.select, "Old"))[1] == [b"1"]
            for imap in (a, b):
                await asyncio.to_thread(imap.logout)
    finally:
        other.close()


def test_columns_copy_is_independent() -> None:
    columns = Columns()
    columns.insert(0, (1, 0, 10, 0, 1, 1))
    copy = columns.copy()
    copy.flags[0] = 5
    assert columns.flags[0] == 0 and len(copy) == 1


def test_bulk_fetch_lines_equal_message_by_message() -> None:
    """The bulk rendering of column items is byte for byte the per-message one, on a shared
    table, with \\Recent, after an expunge (rows no longer consecutive) and a new message."""
    from mssante.imap.commands.values import FetchItem
    from mssante.imap.fetch import column_lines, metadata_response

    box = SelectedMailbox.from_snapshot(FOLDER, _snapshot(100), readonly=False, recent_from=90)
    items = tuple(FetchItem(n) for n in ("UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"))

    def both() -> tuple[bytes | None, bytes]:
        pairs = box.resolve(_seq("1:*"), uid=False)
        one_by_one = b"".join(metadata_response(n, box.entries[u], items, None) for n, u in pairs)
        return column_lines(box.entries, pairs, items), one_by_one

    bulk, single = both()
    assert bulk == single and b"(\\Seen \\Recent)" in bulk
    box.remove([40])
    box.entries.add(MessageRow(101, ("$Label",), 5, WHEN, 300, 999))
    box._own_uids().append(101)
    bulk, single = both()
    assert bulk == single and b"UID 101 FLAGS ($Label)" in bulk and b"UID 40 " not in bulk
