"""SORT and THREAD through imapclient over TLS, on SQLite and PostgreSQL: what other senders'
messages can make of a folder (a References field of thousands of ids, hundreds of messages of
one subject), and each content's keys read from the store once, not at every command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mssante.runtime import Runtime
from tests.imap_dialogues.harness import Running, running_server


def _message(number: int, subject: str, *, references: list[str] | None = None) -> bytes:
    head = [
        "From: labo@demo.mssante.fr",
        "To: alice@demo.mssante.fr",
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime(2026, 3, 4 + number % 20, 8, number % 60, tzinfo=UTC))}",
        f"Message-ID: <m{number}@demo.mssante.fr>",
    ]
    if references:
        head.append("References: " + "\r\n ".join(references))  # folded, as clients write it
    return ("\r\n".join(head) + f"\r\n\r\nmessage {number}\r\n").encode()


async def _with_client(running: Running, scenario: Callable[[IMAPClient], Any]) -> Any:
    def run() -> Any:
        with IMAPClient("127.0.0.1", port=running.tls_port, ssl_context=running.tls.client) as client:
            client.login("alice", "wonderland")
            return scenario(client)

    return await asyncio.to_thread(run)


async def test_a_references_chain_of_thousands_of_ids_threads(runtime: Runtime, tmp_path: Path) -> None:
    """A References field of 3,000 ids (any sender can write one) is a chain 3,000 deep: the
    folder's threads are still answered (it ended in NO [SERVERBUG], recursion exhausted)."""
    chain = [f"<r{i}@elsewhere>" for i in range(3000)]

    def scenario(client: IMAPClient) -> Any:
        client.create_folder("Fils")
        client.append("Fils", _message(1, "Analyse"))
        client.append("Fils", _message(2, "Re: Analyse", references=[*chain, "<m1@demo.mssante.fr>"]))
        client.append("Fils", _message(3, "Re: Analyse", references=[*chain[:10], "<m2@demo.mssante.fr>"]))
        client.append(
            "Fils", _message(4, "Autre chose", references=[f"<s{i}@elsewhere>" for i in range(2000)])
        )
        client.select_folder("Fils", readonly=True)
        return client.thread("REFERENCES"), client.thread("ORDEREDSUBJECT"), client.sort(["DATE"])

    async with running_server(runtime.store, tmp_path / "tls") as running:
        references, ordered, by_date = await _with_client(running, scenario)
    # 2 answers 1 (its last reference) and 3 answers 2; the chains of ids nobody has are pruned.
    assert references == ((1, 2, 3), (4,))
    assert ordered == ((1, (2,), (3,)), (4,))
    assert by_date == [1, 2, 3, 4]


async def test_hundreds_of_messages_of_one_subject_make_one_thread(runtime: Runtime, tmp_path: Path) -> None:
    """Results sent by a laboratory all say "Résultats": REFERENCES gathers them under one
    dummy parent (RFC 5256 §3 step 5) and ORDEREDSUBJECT under the first, by date."""
    count = 300

    def scenario(client: IMAPClient) -> Any:
        client.create_folder("Labo")
        client.multiappend("Labo", [_message(n, "=?utf-8?q?R=C3=A9sultats?=") for n in range(1, count + 1)])
        client.select_folder("Labo", readonly=True)
        return client.thread("REFERENCES"), client.thread("ORDEREDSUBJECT")

    async with running_server(runtime.store, tmp_path / "tls") as running:
        references, ordered = await _with_client(running, scenario)
    by_date = sorted(range(1, count + 1), key=lambda n: (n % 20, n % 60, n))
    assert references == (tuple((n,) for n in by_date),)
    assert ordered == ((by_date[0], *((n,) for n in by_date[1:])),)


async def test_each_contents_keys_are_read_once(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is asked for a content's structure at its first SORT only; THREAD REFERENCES
    asks once more for what SORT did not need (the References field), and a new message is the
    only one read at the next SORT, whichever session asks."""
    store = runtime.store
    asked: list[tuple[int, ...]] = []
    structures = store.structures

    async def counted(blob_ids: list[int], parse: Any) -> Any:
        asked.append(tuple(blob_ids))
        return await structures(blob_ids, parse)

    monkeypatch.setattr(store, "structures", counted)

    def first(client: IMAPClient) -> Any:
        client.create_folder("Tri")
        for n in (3, 1, 2):
            client.append("Tri", _message(n, f"Sujet {4 - n}"))
        client.select_folder("Tri", readonly=True)
        by_date = client.sort(["DATE"])
        reads_after_sort = len(asked)
        by_subject = client.sort(["REVERSE", "SUBJECT"])
        assert len(asked) == reads_after_sort
        assert client.thread("REFERENCES") == ((2,), (3,), (1,))
        assert client.thread("REFERENCES") == ((2,), (3,), (1,))
        return by_date, by_subject, reads_after_sort

    def second(client: IMAPClient) -> Any:
        client.select_folder("Tri")
        client.append("Tri", _message(4, "Sujet 0"))
        client.noop()
        return client.sort(["SUBJECT"])

    async with running_server(store, tmp_path / "tls") as running:
        by_date, by_subject, reads = await _with_client(running, first)
        assert by_date == [2, 3, 1] and by_subject == [2, 3, 1]
        assert [len(batch) for batch in asked] == [3] * reads + [3]  # SORT's, then THREAD's
        asked.clear()
        assert await _with_client(running, second) == [4, 1, 3, 2]
    assert [len(batch) for batch in asked] == [1]
