"""Server behaviour that dialogues cannot show: memory bounds under hostile input, streaming
of large bodies, the audit trail of reads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tracemalloc
from pathlib import Path

from sqlalchemy import text

from mssante.imap.server import Limits
from mssante.runtime import Runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import Client, running_server

BAL = "alice@demo.mssante.fr"


async def _login(client: Client) -> None:
    await client.line()
    await client.send(b"a LOGIN alice wonderland\r\n")
    assert (await client.line()).startswith("a OK")


async def test_endless_line_and_huge_literal_keep_memory_bounded(runtime: Runtime, tmp_path: Path) -> None:
    limits = Limits(max_line=8192, max_literal=8192)
    async with running_server(runtime.store, tmp_path / "tls", limits=limits) as running:
        client = await Client.connect(running)
        await _login(client)
        tracemalloc.start()
        try:
            await client.send(b"x1 SEARCH ")
            for _ in range(200):  # 10 MB without a line break
                await client.send(b"SUBJECT abc " * 4096)
            await client.send(b"ALL\r\n")
            assert await client.line(timeout=30) == "x1 BAD Command line too long"
            # A non-synchronising literal beyond the limit: refused, counted off, never stored.
            await client.send(b"x2 LOGIN {10000000+}\r\n")
            for _ in range(100):
                await client.send(b"\0" * 100_000)
            await client.send(b" pw\r\n")
            assert await client.line(timeout=30) == "x2 BAD Literal too large"
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024, peak
        await client.send(b"x3 NOOP\r\n")
        assert await client.line() == "x3 OK NOOP completed"
        await client.close()


async def test_large_body_streams_byte_identical_and_reads_are_audited(
    runtime: Runtime, tmp_path: Path
) -> None:
    big = make_message(to=BAL, size=3 * 1024 * 1024)
    await runtime.store.deliver(big, "dr.martin@demo.mssante.fr", [BAL])
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await _login(client)
        await client.send(b"s SELECT INBOX\r\n")
        while not (await client.line()).startswith("s OK"):
            pass
        await client.send(b"f FETCH 1 BODY.PEEK[]<1000.2000000>\r\n")
        head = await asyncio.wait_for(client.reader.readline(), 5)
        assert head == b"* 1 FETCH (BODY[]<1000> {2000000}\r\n"
        body = await asyncio.wait_for(client.reader.readexactly(2_000_000), 10)
        assert body == big[1000:2_001_000]
        assert await client.line() == ")"
        assert await client.line() == "f OK FETCH completed"
        await client.send(b"l LOGOUT\r\n")
        await client.line()
        await client.close()
    for _ in range(100):  # read traces join the writer's next group commit
        with runtime.engine.connect() as conn:
            actions = [r[0] for r in conn.execute(text("SELECT action FROM audit_log ORDER BY seq"))]
        if "message.read" in actions:
            break
        await asyncio.sleep(0.02)
    assert "folder.select" in actions and "message.read" in actions


async def test_plaintext_pipelined_after_starttls_is_discarded(runtime: Runtime, tmp_path: Path) -> None:
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running, tls=False)
        await client.line()
        # An attacker in the middle appends a command after STARTTLS, in clear text.
        await client.send(b"a STARTTLS\r\n")
        await client.send(b"b LOGIN alice wonderland\r\n")
        assert await client.line() == "a OK Begin TLS negotiation now"
        await client.start_tls(running)
        await client.send(b"c CAPABILITY\r\n")
        assert (await client.line()).startswith("* CAPABILITY ")
        assert await client.line() == "c OK CAPABILITY completed"
        await client.send(b"d SELECT INBOX\r\n")
        assert await client.line() == "d BAD SELECT is not valid in the not authenticated state"
        await client.close()


async def test_reads_are_aggregated_into_one_audit_record(runtime: Runtime, tmp_path: Path) -> None:
    for n in range(3):
        await runtime.store.deliver(make_message(to=BAL, subject=f"m{n}"), "dr.martin@demo.mssante.fr", [BAL])
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await _login(client)
        await client.send(b"s SELECT INBOX\r\n")
        while not (await client.line()).startswith("s OK"):
            pass
        for n in (1, 2, 3, 2):
            await client.send(b"f FETCH %d BODY.PEEK[TEXT]\r\n" % n)
            assert (await client.line()).startswith(f"* {n} FETCH (BODY[TEXT] ")
            assert await client.line() == "f OK FETCH completed"
        await client.send(b"f FETCH 1:3 (FLAGS ENVELOPE)\r\n")  # no content read: not traced
        for _ in range(4):
            await client.line()
        await client.send(b"l LOGOUT\r\n")
        await client.line()
        await client.line()
        await client.close()
    for _ in range(100):
        with runtime.engine.connect() as conn:
            reads = conn.execute(text("SELECT detail FROM audit_log WHERE action = 'message.read'")).all()
        if reads:
            break
        await asyncio.sleep(0.02)
    assert len(reads) == 1
    assert json.loads(reads[0][0]) == {"count": 3, "uids": "1:3", "commands": 4}


async def test_idle_client_is_logged_out(runtime: Runtime, tmp_path: Path) -> None:
    limits = Limits(login_timeout=1.0, idle_timeout=0.4)
    async with running_server(runtime.store, tmp_path / "tls", limits=limits) as running:
        silent = await Client.connect(running)
        await silent.line()
        assert await silent.line() == "* BYE Login timeout: not logged in within 1 s"
        assert await silent.reader.read() == b""
        await silent.close()
        client = await Client.connect(running)
        await _login(client)  # the longer authenticated timeout now applies
        await asyncio.sleep(0.3)
        await client.send(b"n NOOP\r\n")
        assert await client.line() == "n OK NOOP completed"
        assert await client.line() == "* BYE Autologout; idle for too long"
        await client.close()


async def test_fetch_of_a_large_body_is_streamed_with_bounded_memory(
    runtime: Runtime, tmp_path: Path
) -> None:
    big = make_message(to=BAL, size=12 * 1024 * 1024)
    await runtime.store.deliver(big, "dr.martin@demo.mssante.fr", [BAL])
    expected = hashlib.sha256(big).hexdigest()
    del big
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await _login(client)
        await client.send(b"s SELECT INBOX\r\n")
        while not (await client.line()).startswith("s OK"):
            pass
        tracemalloc.start()
        try:
            await client.send(b"f FETCH 1 BODY.PEEK[]\r\n")
            head = await asyncio.wait_for(client.reader.readline(), 10)
            size = int(head.rsplit(b"{", 1)[1].rstrip(b"}\r\n"))
            digest = hashlib.sha256()
            while size:
                chunk = await asyncio.wait_for(client.reader.read(min(size, 65536)), 10)
                digest.update(chunk)
                size -= len(chunk)
            assert await client.line() == ")"
            assert await client.line() == "f OK FETCH completed"
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert digest.hexdigest() == expected
        assert peak < 3 * 1024 * 1024, peak  # the 12 MB body never sits whole in memory
        await client.close()
