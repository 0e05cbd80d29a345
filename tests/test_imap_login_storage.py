"""Issue 20: a login opens its BAL's storage without waiting for the writer when the storage
exists; only a BAL that has none yet goes through the writer, which creates it."""

from __future__ import annotations

import asyncio
import imaplib
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session

from mssante.runtime import Runtime
from tests.imap_dialogues.harness import Running, running_server

ALICE = "alice@demo.mssante.fr"
BOB = "bob@demo.mssante.fr"


def _log_in(running: Running, user: str, password: str) -> tuple[float, list[bytes]]:
    """Seconds the LOGIN took, and the mailboxes LIST shows afterwards."""
    imap = imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client)
    try:
        started = time.monotonic()
        imap.login(user, password)
        took = time.monotonic() - started
        imap.noop()
        listing = imap.list()[1]
        return took, [line for line in listing if isinstance(line, bytes)]
    finally:
        imap.logout()


async def test_a_login_does_not_wait_for_the_writer_when_its_storage_exists(
    runtime: Runtime, tmp_path: Path
) -> None:
    store = runtime.store
    await store.ensure_account(ALICE)
    started, release = threading.Event(), threading.Event()

    def long_batch(_session: Session) -> None:
        started.set()
        release.wait(20)  # deliveries under load: the writer busy with a batch

    busy = store.writer.submit(long_batch)
    try:
        assert await asyncio.to_thread(started.wait, 10)
        jobs_before = store.writer.jobs
        async with running_server(store, tmp_path / "tls") as running:
            took, listing = await asyncio.wait_for(
                asyncio.to_thread(_log_in, running, "alice", "wonderland"), timeout=15
            )
        # Answered while the writer still held its batch, and nothing queued behind it.
        assert not busy.done()
        assert took < 5
        assert any(b'"INBOX"' in line or b" INBOX" in line for line in listing)
        assert store.writer.jobs == jobs_before
    finally:
        release.set()
        await asyncio.wrap_future(busy)


async def test_a_bal_without_storage_gets_it_at_its_first_login(runtime: Runtime, tmp_path: Path) -> None:
    store = runtime.store
    async with running_server(store, tmp_path / "tls") as running:
        _took, listing = await asyncio.to_thread(_log_in, running, "bob", "builder")
        again, _ = await asyncio.to_thread(_log_in, running, "bob", "builder")
    assert any(b"INBOX" in line for line in listing)
    assert [f.name for f in await store.folders(BOB) if f.name == "INBOX"] == ["INBOX"]
    assert again < 5
