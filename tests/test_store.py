"""The message store: race-free UIDs, group commit, atomicity, encryption at rest, IMAP state."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from mssante import audit
from mssante.crypto import KeyRing, KeyRingError
from mssante.runtime import Runtime, open_runtime
from mssante.store.blobs import SEAL_AS_STORED, rewrap_all
from mssante.store.feed import ChangeHub, FolderChange
from mssante.store.models import Blob, BlobChunk, Change, MailAccount, Message
from mssante.store.types import FolderExists, FolderNotFound, Outbound, QuotaExceeded
from mssante.store.writer import GroupCommitWriter, Light
from tests.helpers import make_message

DOC = "dr.durand@demo.mssante.fr"
SECR = "secretariat@demo.mssante.fr"


def count(rt: Runtime, model: type) -> int:
    with Session(rt.engine) as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


async def test_fifty_concurrent_deliveries_get_uids_1_to_50(runtime: Runtime) -> None:
    results = await asyncio.gather(
        *(
            runtime.store.deliver(make_message(subject=f"n{i}"), "dr.martin@demo.mssante.fr", [DOC])
            for i in range(50)
        )
    )
    uids = sorted(r[DOC] for r in results)
    assert uids == list(range(1, 51))
    inbox = await runtime.store.folder(DOC, "INBOX")
    assert inbox.uidnext == 51
    rows = await runtime.store.messages(inbox.id)
    assert [m.uid for m in rows] == list(range(1, 51))
    # Group commit really grouped: fewer transactions than deliveries.
    assert runtime.store.writer.batches < 50


async def test_deliveries_of_one_group_commit_are_written_together_with_the_same_rows(
    runtime: Runtime,
) -> None:
    """Thirty concurrent deliveries (two mailboxes each, some with identical content) run as one
    group: a few statements for all of them, and the rows one-by-one delivery would write."""
    statements: list[str] = []
    listen = event.listens_for(runtime.writer_engine, "before_cursor_execute")
    listen(lambda conn, cursor, sql, params, context, many: statements.append(sql))
    await runtime.store.ensure_account(DOC)
    await runtime.store.ensure_account(SECR)
    statements.clear()
    runtime.store.writer.batches = 0
    raws = [make_message(subject=f"g{i % 20}", size=3000) for i in range(30)]
    results = await asyncio.gather(
        *(runtime.store.deliver(raw, "dr.martin@demo.mssante.fr", [DOC, SECR]) for raw in raws)
    )
    assert sorted(r[DOC] for r in results) == list(range(1, 31))
    assert sorted(r[SECR] for r in results) == list(range(1, 31))
    # One by one: a dozen statements per delivery; together: about fifteen per group commit.
    assert len(statements) <= 16 * runtime.store.writer.batches < 200, statements
    assert count(runtime, Blob) == len(set(raws))
    with Session(runtime.engine) as s:
        for bal in (DOC, SECR):
            inbox = await runtime.store.folder(bal, "INBOX")
            rows = await runtime.store.messages(inbox.id)
            modseqs = [m.modseq for m in sorted(rows, key=lambda m: m.uid)]
            assert modseqs == sorted(set(modseqs)) and inbox.highestmodseq == modseqs[-1]
            changes = s.execute(select(Change.uid, Change.modseq).where(Change.folder_id == inbox.id)).all()
            assert sorted(changes) == sorted((m.uid, m.modseq) for m in rows)
            account = s.get(MailAccount, bal)
            assert account is not None and account.message_count == 30
            assert account.used_bytes == sum(len(raw) for raw in raws)
        by_uid = {r[DOC]: raw for r, raw in zip(results, raws, strict=True)}
        for m in await runtime.store.messages((await runtime.store.folder(DOC, "INBOX")).id):
            assert await runtime.store.body(m.blob_id) == by_uid[m.uid]
        assert audit.verify(s).ok
        delivered = s.scalar(select(func.count()).where(audit.AuditRecord.action == "message.deliver"))
        assert delivered == 60


async def test_two_writers_on_one_database_never_share_a_uid(runtime: Runtime) -> None:
    """Two stores (as two server processes would) allocate from the same row, race-free."""
    second = open_runtime(runtime.settings)
    try:
        stores = [runtime.store, second.store]
        results = await asyncio.gather(
            *(
                stores[i % 2].deliver(make_message(subject=f"p{i}"), "a@demo.mssante.fr", [DOC])
                for i in range(40)
            )
        )
    finally:
        second.close()
    assert sorted(r[DOC] for r in results) == list(range(1, 41))


async def test_one_blob_for_many_recipients_and_usage_counted(runtime: Runtime) -> None:
    raw = make_message(size=10_000)
    uids = await runtime.store.deliver(raw, "dr.martin@demo.mssante.fr", [DOC, SECR, DOC.upper()])
    assert uids == {DOC: 1, SECR: 1}
    assert count(runtime, Blob) == 1
    with Session(runtime.engine) as s:
        acct = s.get(MailAccount, DOC)
        assert acct is not None and acct.used_bytes == len(raw) and acct.message_count == 1


async def test_nothing_is_stored_in_clear(runtime: Runtime, tmp_path: Path) -> None:
    marker = f"MARQUEUR-{uuid.uuid4().hex}"
    raw = make_message(subject=f"Patient {marker}", body=f"Diagnostic {marker}\r\n", size=200_000)
    await runtime.store.deliver(raw, "dr.martin@demo.mssante.fr", [DOC])
    inbox = await runtime.store.folder(DOC, "INBOX")
    [msg] = await runtime.store.messages(inbox.id)
    assert await runtime.store.body(msg.blob_id) == raw  # readable through the store …
    meta = await runtime.store.meta([msg.blob_id])
    assert marker in meta[msg.blob_id]["envelope"]["subject"]
    runtime.close()
    # … but neither the database files nor anything else in the data directory holds it in clear.
    needle = marker.encode()
    scanned = 0
    for path in Path(runtime.settings.data_dir).rglob("*"):
        if path.is_file():
            scanned += 1
            assert needle not in path.read_bytes(), f"{path} contains the marker in clear"
    if runtime.settings.database_url.startswith("sqlite"):
        assert scanned >= 2  # the key ring and the database file at least
        return
    # PostgreSQL: flush to disk, then grep this database's files and the WAL on the server.
    with runtime.engine.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")
        data_dir = Path(conn.exec_driver_sql("SHOW data_directory").scalar_one())
        oid = conn.exec_driver_sql(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).scalar_one()
    if not data_dir.is_dir():
        pytest.skip("the PostgreSQL data directory is not on this machine")
    files = [
        p for d in (data_dir / "base" / str(oid), data_dir / "pg_wal") for p in d.rglob("*") if p.is_file()
    ]
    assert files
    for path in files:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue  # a WAL segment removed or recycled by a checkpoint since the listing
        assert needle not in content, f"{path} contains the marker in clear"


async def test_failed_delivery_leaves_no_partial_rows_and_no_orphan_blob(runtime: Runtime) -> None:
    await runtime.store.ensure_account(SECR)
    with Session(runtime.writer_engine) as s, s.begin():
        s.execute(update(MailAccount).where(MailAccount.bal == SECR).values(quota_bytes=100))
    before = {m: count(runtime, m) for m in (Blob, BlobChunk, Message, Change)}
    # The first recipient succeeds inside the transaction, the second one is over quota.
    with pytest.raises(QuotaExceeded):
        await runtime.store.deliver(make_message(size=5000), "dr.martin@demo.mssante.fr", [DOC, SECR])
    assert {m: count(runtime, m) for m in (Blob, BlobChunk, Message, Change)} == before
    # The failure did not poison concurrent deliveries grouped in the same batch.
    ok, bad = await asyncio.gather(
        runtime.store.deliver(make_message(subject="ok"), "x@demo.mssante.fr", [DOC]),
        runtime.store.deliver(make_message(subject="bad", size=5000), "x@demo.mssante.fr", [SECR]),
        return_exceptions=True,
    )
    assert ok == {DOC: 1} and isinstance(bad, QuotaExceeded)
    assert count(runtime, Blob) == 1


async def _hold_writer(writer: GroupCommitWriter) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keep the writer busy until the returned event is set, so that what is submitted next
    waits in its queue and forms the next batch. Returns once the writer runs the holding job
    (before that, on a busy machine, it could take later jobs into the holding job's batch)."""
    gate, holding = threading.Event(), threading.Event()

    def hold(session: Session) -> None:
        holding.set()
        gate.wait(30)

    held = asyncio.wrap_future(writer.submit(hold))
    assert await asyncio.to_thread(holding.wait, 30)
    return gate, held


async def _in_one_batch(
    writer: GroupCommitWriter, submit: Callable[[], list[asyncio.Future[Any]]]
) -> list[Any]:
    """What ``submit`` queues, run as one batch of the writer: held behind a busy writer until
    all of it waits in the queue. The results (or exceptions), in order."""
    gate, held = await _hold_writer(writer)
    jobs = submit()
    while writer._queue.qsize() < len(jobs):
        await asyncio.sleep(0.01)
    batches = writer.batches
    gate.set()
    await held
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert writer.batches == batches + 1
    return results


async def test_a_refusal_in_a_batch_of_deliveries_rolls_back_alone(runtime: Runtime) -> None:
    """A batch made only of deliveries runs as one group without a savepoint; when one of them
    is refused (a quota), the transaction is rolled back and each runs again alone: the others
    are stored once, with consecutive UIDs, in that one batch."""
    await runtime.store.ensure_account(SECR)
    with Session(runtime.writer_engine) as s, s.begin():
        s.execute(update(MailAccount).where(MailAccount.bal == SECR).values(quota_bytes=100))

    def submit() -> list[asyncio.Future[Any]]:
        deliveries = [
            asyncio.ensure_future(
                runtime.store.deliver(make_message(subject=f"ok{i}"), "x@demo.mssante.fr", [DOC])
            )
            for i in range(3)
        ]
        bad = runtime.store.deliver(make_message(subject="bad", size=5000), "x@demo.mssante.fr", [SECR])
        deliveries.insert(1, asyncio.ensure_future(bad))
        return deliveries

    results = await _in_one_batch(runtime.store.writer, submit)
    assert isinstance(results.pop(1), QuotaExceeded)
    assert sorted(r[DOC] for r in results if isinstance(r, dict)) == [1, 2, 3]
    assert count(runtime, Message) == 3 and count(runtime, Blob) == 3


async def test_light_jobs_share_the_batch_without_savepoints_and_a_failure_stays_its_own(
    runtime: Runtime,
) -> None:
    """Flag changes and audit records of one batch run one after the other with no savepoint
    each (two round trips per job on PostgreSQL); when one light job fails, the batch runs
    again with each job alone in its savepoint: the others are applied exactly once."""
    store, writer = runtime.store, runtime.store.writer
    for i in range(3):
        await store.deliver(make_message(subject=f"m{i}"), "x@demo.mssante.fr", [DOC])
    inbox = await store.folder(DOC, "INBOX")
    savepoints: list[str] = []
    event.listen(runtime.writer_engine, "savepoint", lambda conn, name: savepoints.append(name))

    def fail(session: Session) -> None:
        raise ValueError("refused")

    async def batch(with_failure: bool, flag: str) -> list[Any]:
        def submit() -> list[asyncio.Future[Any]]:
            jobs = [
                asyncio.ensure_future(store.store_flags(inbox.id, [uid], "add", [flag], actor=DOC))
                for uid in (1, 2, 3)
            ]
            jobs.append(asyncio.ensure_future(store.record(audit.AuditEvent(actor=DOC, action="test.light"))))
            if with_failure:
                jobs.insert(1, asyncio.ensure_future(writer.run(Light(fail))))
            return jobs

        return await _in_one_batch(writer, submit)

    results = await batch(False, "$One")
    assert not savepoints
    assert sorted(m for r in results[:3] for _, _, m in r) == [
        inbox.highestmodseq + 1,
        inbox.highestmodseq + 2,
        inbox.highestmodseq + 3,
    ]
    results = await batch(True, "$Two")
    assert isinstance(results.pop(1), ValueError) and savepoints
    assert sorted(m for r in results[:3] for _, _, m in r) == [
        inbox.highestmodseq + 4,
        inbox.highestmodseq + 5,
        inbox.highestmodseq + 6,
    ]
    assert (await store.folder(DOC, "INBOX")).highestmodseq == inbox.highestmodseq + 6
    assert [m.flags for m in await store.messages(inbox.id)] == [("$One", "$Two")] * 3
    with Session(runtime.engine) as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(audit.AuditRecord)
                .where(audit.AuditRecord.action == "test.light")
            )
            == 2
        )


async def test_two_writers_adding_flags_to_the_same_messages_lose_none(runtime: Runtime) -> None:
    """Two stores (two server processes) add flags to the same messages at once: each change
    reads the flags the other committed (on PostgreSQL, read and locked in one statement),
    every flag is kept, each change gets its own MODSEQ and its audit record."""
    store = runtime.store
    for i in range(2):
        await store.deliver(make_message(subject=f"f{i}"), "x@demo.mssante.fr", [DOC])
    inbox = await store.folder(DOC, "INBOX")
    second = open_runtime(runtime.settings)
    keywords = [f"$K{i}" for i in range(12)]
    try:
        stores = [store, second.store]
        results = await asyncio.gather(
            *(
                stores[i % 2].store_flags(inbox.id, [1, 2], "add", [k], actor=DOC)
                for i, k in enumerate(keywords)
            )
        )
    finally:
        second.close()
    rows = await store.messages(inbox.id)
    assert [set(r.flags) for r in rows] == [set(keywords), set(keywords)]
    modseqs = [changed[0][2] for changed in results]
    assert all(len(changed) == 2 for changed in results)
    assert len(set(modseqs)) == len(keywords)
    # Each change recorded once, the chain whole (on PostgreSQL its head taken by the change's
    # own statement).
    with Session(runtime.engine) as s:
        assert audit.verify(s).ok
        recorded = s.scalars(
            select(audit.AuditRecord.detail).where(audit.AuditRecord.action == "message.flags")
        ).all()
    assert sorted(recorded) == sorted(f'{{"count": 2, "flags": ["{k}"], "mode": "add"}}' for k in keywords)


async def test_flags_expunge_copy_move_keep_imap_state(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(3):
        await store.deliver(make_message(subject=f"m{i}"), "x@demo.mssante.fr", [DOC])
    inbox = await store.folder(DOC, "INBOX")
    changed = await store.store_flags(inbox.id, [1, 2], "add", ["\\seen", "$Urgent"], actor=DOC)
    assert [(u, f) for u, f, _ in changed] == [(1, ("$Urgent", "\\Seen")), (2, ("$Urgent", "\\Seen"))]
    assert changed[0][2] > inbox.highestmodseq
    assert await store.store_flags(inbox.id, [1], "add", ["\\Seen"], actor=DOC) == []  # no change, no modseq
    await store.create_folder(DOC, "Patients/Dupont")
    assert {f.name for f in await store.folders(DOC)} >= {"Patients", "Patients/Dupont", "Sent", "Trash"}
    with pytest.raises(FolderExists):
        await store.create_folder(DOC, "Patients")
    copied = await store.copy(inbox.id, [1, 3], DOC, "Patients/Dupont", actor=DOC)
    assert copied.pairs == [(1, 1), (3, 2)]
    moved = await store.copy(inbox.id, [2], DOC, "Archive", actor=DOC, move=True)
    assert moved.pairs == [(2, 1)]
    assert [m.uid for m in await store.messages(inbox.id)] == [1, 3]
    await store.store_flags(inbox.id, [1], "add", ["\\Deleted"], actor=DOC)
    assert await store.expunge(inbox.id, actor=DOC) == [1]
    status = await store.status(DOC, "INBOX")
    assert (status.messages, status.unseen) == (1, 1)
    kinds = [c.kind for c in await store.changes_since(inbox.id, 0)]
    assert kinds.count("append") == 3 and kinds.count("expunge") == 2 and "flags" in kinds
    await store.rename_folder(DOC, "Patients", "Dossiers", actor=DOC)
    assert "Dossiers/Dupont" in {f.name for f in await store.folders(DOC)}
    await store.delete_folder(DOC, "Dossiers/Dupont", actor=DOC)
    with pytest.raises(FolderNotFound):
        await store.folder(DOC, "Dossiers/Dupont")
    # Blobs still referenced survive; the usage counters follow.
    with Session(runtime.engine) as s:
        acct = s.get(MailAccount, DOC)
        assert acct is not None and acct.message_count == 2


async def test_change_feed_wakes_a_listener(runtime: Runtime) -> None:
    await runtime.store.ensure_account(DOC)
    inbox = await runtime.store.folder(DOC, "INBOX")
    sub = runtime.store.hub.subscribe(inbox.id)
    try:
        await runtime.store.deliver(make_message(), "x@demo.mssante.fr", [DOC])
        change = await asyncio.wait_for(sub.get(), 5)
        assert (change.kind, change.uid) == ("append", 1)
    finally:
        sub.close()


async def test_change_feed_keeps_what_a_cancelled_read_did_not_take() -> None:
    """What IDLE relies on: changes published from another thread (the writer's) arrive in
    commit order; a read cancelled before any change takes none, and drain() returns what no
    read took."""
    hub = ChangeHub()
    sub = hub.subscribe(7)
    early = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    early.cancel()  # IDLE ended by DONE before anything happened
    with pytest.raises(asyncio.CancelledError):
        await early
    changes = [FolderChange(7, n, "append", n) for n in (1, 2, 3)] + [FolderChange(8, 9, "append", 9)]
    waiting = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    publisher = threading.Thread(target=hub.publish, args=(changes,))
    publisher.start()
    publisher.join()
    assert (await asyncio.wait_for(waiting, 5)).uid == 1
    assert [c.uid for c in sub.drain()] == [2, 3]  # the other folder's change is not this one's
    assert sub.drain() == []
    sub.close()
    hub.publish([FolderChange(7, 4, "append", 4)])  # no longer subscribed: nothing scheduled
    await asyncio.sleep(0.05)
    assert sub.drain() == []


async def test_large_message_streams_and_ranges(runtime: Runtime) -> None:
    raw = make_message(size=3 * 1024 * 1024 + 17)
    await runtime.store.deliver(raw, "x@demo.mssante.fr", [DOC])
    inbox = await runtime.store.folder(DOC, "INBOX")
    [msg] = await runtime.store.messages(inbox.id)
    pieces = [p async for p in runtime.store.stream(msg.blob_id)]
    assert len(pieces) > 1 and max(map(len, pieces)) <= 4 * runtime.settings.storage.chunk_size
    assert b"".join(pieces) == raw
    assert await runtime.store.body(msg.blob_id, 100_000, 300_123) == raw[100_000:300_123]


async def test_key_rotation_while_running_and_missing_keyring(runtime: Runtime) -> None:
    await runtime.store.deliver(make_message(subject="avant rotation"), "x@demo.mssante.fr", [DOC])
    # Another process (the CLI) rotates the ring and re-wraps the data keys …
    ring = KeyRing.load(runtime.settings.keyring_path)
    new_kid = ring.add_key()
    assert rewrap_all(runtime.writer_engine, ring) == 1
    with Session(runtime.engine) as s:
        assert s.execute(select(Blob.key_id)).scalar_one() == new_kid
    # … and the running store still reads it (it re-reads the ring on an unknown key id).
    runtime.store.reader._keys.clear()
    inbox = await runtime.store.folder(DOC, "INBOX")
    [msg] = await runtime.store.messages(inbox.id)
    assert b"avant rotation" in await runtime.store.body(msg.blob_id)
    # Without the ring, the server refuses to start with a clear message.
    runtime.settings.keyring_path.rename(runtime.settings.keyring_path.with_suffix(".bak"))
    with pytest.raises(KeyRingError, match="missing"):
        open_runtime(runtime.settings)


async def test_a_reused_blob_id_never_meets_a_stale_data_key(runtime: Runtime) -> None:
    """SQLite reuses the id of the last deleted row: reading must not use the old blob's key."""
    store = runtime.store
    await store.deliver(make_message(subject="premier"), "x@demo.mssante.fr", [DOC])
    inbox = await store.folder(DOC, "INBOX")
    [first] = await store.messages(inbox.id)
    assert b"premier" in await store.body(first.blob_id)  # its data key is now cached
    await store.store_flags(inbox.id, [first.uid], "add", ["\\Deleted"], actor=DOC)
    await store.expunge(inbox.id, actor=DOC)
    await store.deliver(make_message(subject="second"), "x@demo.mssante.fr", [DOC])
    [second] = await store.messages(inbox.id)
    assert b"second" in await store.body(second.blob_id)


async def test_deliveries_stored_together_never_take_a_collected_blob_id(runtime: Runtime) -> None:
    """The multi-row insert of a group commit takes its blob ids from the high-water mark too,
    as a lone delivery does (SQLite would give the last collected id again)."""
    store = runtime.store
    await store.deliver(make_message(subject="premier"), "x@demo.mssante.fr", [DOC])
    inbox = await store.folder(DOC, "INBOX")
    [first] = await store.messages(inbox.id)
    await store.store_flags(inbox.id, [first.uid], "add", ["\\Deleted"], actor=DOC)
    await store.expunge(inbox.id, actor=DOC)
    assert count(runtime, Blob) == 0  # collected
    results = await _in_one_batch(  # one batch, stored together
        store.writer,
        lambda: [
            asyncio.ensure_future(
                store.deliver(make_message(subject=f"ensemble {n}"), "x@demo.mssante.fr", [DOC])
            )
            for n in ("un", "deux")
        ],
    )
    assert all(isinstance(r, dict) for r in results)
    later = await store.messages(inbox.id)
    assert len(later) == 2 and all(m.blob_id > first.blob_id for m in later)
    bodies = [await store.body(m.blob_id) for m in later]
    assert sorted(b"Subject: ensemble un\r\n" in body for body in bodies) == [False, True]


async def test_a_cancelled_caller_does_not_stop_the_writer(runtime: Runtime) -> None:
    store = runtime.store
    tasks = [
        asyncio.create_task(store.deliver(make_message(subject=f"c{i}"), "x@demo.mssante.fr", [DOC]))
        for i in range(20)
    ]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The writer still works after callers gave up (some of those jobs may have committed).
    assert await store.deliver(make_message(subject="after"), "x@demo.mssante.fr", [DOC])
    assert store.writer._thread.is_alive()


async def test_internaldate_keeps_its_instant_whatever_the_offset(runtime: Runtime) -> None:
    from datetime import datetime, timedelta, timezone

    await runtime.store.ensure_account(DOC)
    paris = datetime(2026, 7, 14, 10, 30, tzinfo=timezone(timedelta(hours=2)))
    await runtime.store.append(DOC, "INBOX", make_message(), internaldate=paris, actor=DOC)
    inbox = await runtime.store.folder(DOC, "INBOX")
    [msg] = await runtime.store.messages(inbox.id)
    assert msg.internaldate == paris
    assert await runtime.store.messages(inbox.id, since_uid=msg.uid) == []


async def test_large_contents_sealed_as_stored_read_back_identical(runtime: Runtime) -> None:
    """A content of 1 MiB or more is sealed chunk by chunk in the writer's transaction, from the
    caller's buffer (a bytearray, as SMTP hands it over), with the queue's copy sealed from the
    same buffer behind a prefix (the DKIM-Signature field); several in one group commit."""
    raws = [
        bytearray(make_message(subject=f"gros {i}", size=SEAL_AS_STORED + 70_000 * i + 13)) for i in range(3)
    ]
    prefix = b"DKIM-Signature: v=1; a=rsa-sha256; b=xyz\r\n"
    results = await asyncio.gather(
        *(
            runtime.store.deliver(
                raw,
                "dr.martin@demo.mssante.fr",
                [DOC],
                outbound=Outbound(raw, {"autre.mssante.fr": ["x@autre.mssante.fr"]}, prefix),
            )
            for raw in raws
        )
    )
    inbox = await runtime.store.folder(DOC, "INBOX")
    stored = {m.uid: m for m in await runtime.store.messages(inbox.id)}
    for raw, uids in zip(raws, results, strict=True):
        blob = stored[uids[DOC]].blob_id
        assert await runtime.store.body(blob) == bytes(raw)
        assert b"".join([c async for c in runtime.store.stream(blob, 5, len(raw) - 7)]) == bytes(raw[5:-7])
    with Session(runtime.engine) as s:
        queued = s.execute(
            select(Blob.id).where(Blob.size.in_([len(prefix) + len(r) for r in raws]))
        ).scalars()
        copies = [await runtime.store.body(blob_id) for blob_id in list(queued)]
    assert sorted(copies) == sorted(prefix + bytes(r) for r in raws)


async def test_a_small_message_is_sealed_by_the_writer_thread_a_large_one_by_another(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual message costs no thread hop of its own: the writer analyses and seals it just
    before its transaction; a large one is sealed meanwhile by a worker thread."""
    store = runtime.store
    sealed_by: list[str] = []
    prepare = store._prepare

    def recording(raw: bytes | bytearray) -> Any:
        sealed_by.append(threading.current_thread().name)
        return prepare(raw)

    monkeypatch.setattr(store, "_prepare", recording)
    await store.deliver(make_message(subject="small", size=2000), "x@demo.mssante.fr", [DOC])
    await store.deliver(make_message(subject="large", size=300_000), "x@demo.mssante.fr", [DOC])
    assert sealed_by[0] == "mssante-writer" and sealed_by[1] != "mssante-writer"
    assert count(runtime, Message) == 2


async def test_a_delivery_whose_preparation_fails_fails_alone_in_its_batch(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime.store
    prepare = store._prepare

    def failing(raw: bytes | bytearray) -> Any:
        if b"Subject: broken" in raw:
            raise ValueError("cannot analyse")
        return prepare(raw)

    monkeypatch.setattr(store, "_prepare", failing)

    def submit() -> list[asyncio.Future[Any]]:
        return [
            asyncio.ensure_future(store.deliver(make_message(subject=subject), "x@demo.mssante.fr", [DOC]))
            for subject in ("first", "broken", "third")
        ]

    first, broken, third = await _in_one_batch(store.writer, submit)
    assert isinstance(broken, ValueError)
    assert sorted([first[DOC], third[DOC]]) == [1, 2]
    assert count(runtime, Message) == 2


async def test_a_job_given_up_before_the_writer_reaches_it_is_not_run(runtime: Runtime) -> None:
    writer = runtime.store.writer
    ran: list[str] = []
    gate, held = await _hold_writer(writer)
    given_up = asyncio.ensure_future(writer.run(lambda session: ran.append("given up")))
    kept = asyncio.ensure_future(writer.run(lambda session: ran.append("kept") or "answer"))
    await asyncio.sleep(0)
    given_up.cancel()
    gate.set()
    await held
    assert await kept == "answer"
    assert ran == ["kept"] and given_up.cancelled()


async def test_the_writer_keeps_its_connection_until_a_batch_fails(runtime: Runtime) -> None:
    """The writer's connection (with SQLite's page cache) outlives a batch; a failed batch drops
    it and the next one runs on another (a connection the server closed: see
    test_store_reads)."""
    writer = runtime.store.writer

    def connection_of(session: Session) -> Any:
        return session.connection()  # (held by the test: no other object takes its address)

    def failing(session: Session) -> None:
        session.connection()
        raise RuntimeError("refused")

    first = await writer.run(connection_of)
    second = await writer.run(connection_of)
    with pytest.raises(RuntimeError):
        await writer.run(failing)
    third = await writer.run(connection_of)
    assert first is second and third is not first
