"""The HEADER.FIELDS answers IMAP keeps (:mod:`mssante.imap.fieldcache`): given again from memory
to a webmail's next page view, counted in bytes as tracemalloc measures them, bounded."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mssante.imap.fieldcache import LARGEST, FieldCache, field_cache
from mssante.runtime import Runtime
from tests.imap_dialogues.harness import running_server

# What Roundcube asks for each message of a list page (rcube_imap_generic, its default fields).
ROUNDCUBE = (
    "BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT CONTENT-TYPE CC REPLY-TO LIST-POST "
    "DISPOSITION-NOTIFICATION-TO X-PRIORITY)]"
)


def _header(n: int) -> bytes:
    return (
        f"Date: Mon, 7 Dec 2026 05:{n % 60:02d}:00 +0100\r\nFrom: Dr Jeanne Martin <jeanne.martin{n}@"
        f"hopital.mssante.fr>\r\nTo: secretariat@clinique.mssante.fr\r\nSubject: Compte rendu {n}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()


def test_the_cache_counts_the_memory_its_answers_take() -> None:
    fields = ("DATE", "FROM", "TO", "SUBJECT", "CONTENT-TYPE", "CC", "REPLY-TO")
    cache = FieldCache(limit=1 << 40)
    read = [bytearray(_header(n)) for n in range(3000)]  # as the store hands them: new objects
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, data in enumerate(read):
            cache.put((100_000 + n, (), fields, False), bytes(data))
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 <= cache.size / taken <= 1.1


def test_the_cache_keeps_the_most_recently_used_answers_within_its_bytes() -> None:
    fields = ("SUBJECT",)
    one = FieldCache()
    one.put((1, (), fields, False), b"x" * (LARGEST + 1))
    assert len(one) == 0  # too large to be worth keeping
    small = FieldCache(limit=3 * 300)
    for blob in (1, 2, 3):
        small.put((blob, (), fields, False), b"Subject: a\r\n\r\n")
    assert small.get((1, (), fields, False)) is not None  # 1 is now the most recent
    small.put((4, (), fields, False), b"Subject: b\r\n\r\n")
    assert [small.get((b, (), fields, False)) is not None for b in (1, 2, 3, 4)] == [
        True,
        False,
        True,
        True,
    ]
    assert small.get((1, (), fields, True)) is None  # HEADER.FIELDS.NOT is another answer


async def test_a_webmail_page_is_answered_again_without_reading_the_messages(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second view of a page reads neither the messages nor their structures, gives the
    same bytes, and another session is answered from what the first one read."""
    store = runtime.store
    reads: list[int] = []
    window = store._window

    async def counted(blob_id: int, start: int, end: int) -> Any:
        reads.append(blob_id)
        return await window(blob_id, start, end)

    monkeypatch.setattr(store, "_window", counted)
    decoded: list[int] = []
    meta = store.meta

    async def structures(blob_ids: list[int], only: str | None = None) -> Any:
        decoded.extend(blob_ids)
        return await meta(blob_ids, only)

    monkeypatch.setattr(store, "meta", structures)

    def page(client: IMAPClient) -> Any:
        client.select_folder("Liste", readonly=True)
        return client.fetch(list(range(1, 21)), [ROUNDCUBE, "BODYSTRUCTURE"])

    def scenario() -> Any:
        with IMAPClient("127.0.0.1", port=running.tls_port, ssl_context=running.tls.client) as client:
            client.login("alice", "wonderland")
            client.create_folder("Liste")
            client.multiappend("Liste", [_header(n) + b"Bonjour.\r\n" for n in range(20)])
            first = page(client)
            read_first, decoded_first = len(reads), len(decoded)
            again = page(client)
        with IMAPClient("127.0.0.1", port=running.tls_port, ssl_context=running.tls.client) as other:
            other.login("alice", "wonderland")
            other_view = page(other)
        return first, (read_first, decoded_first), again, other_view

    async with running_server(store, tmp_path / "tls") as running:
        first, read_first, again, other_view = await asyncio.to_thread(scenario)
    assert read_first == (20, 20)  # each message's first chunk and its structure, once
    assert len(reads) == 20 and len(decoded) == 20
    assert again == first == other_view
    assert first[1][ROUNDCUBE.replace(".PEEK", "").encode()] == _header(0)  # the fields, as sent
    assert len(field_cache(store)) == 20
