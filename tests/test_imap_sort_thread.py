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
from sqlalchemy import text

from mssante.runtime import Runtime
from mssante.store import sortkeys
from mssante.store.blobs import BlobReader
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
    """The store is asked for a content's keys at its first SORT only, and answers with those
    sealed at delivery, thread links included (THREAD asks nothing more); a new message is the
    only one read at the next SORT, whichever session asks. No structure is decoded."""
    asked: list[tuple[int, ...]] = []
    decoded: list[int] = []
    read, structures = sortkeys.read, BlobReader.structures

    def counted(reader: BlobReader, db: Any, blob_ids: list[int], *, threads: bool) -> Any:
        asked.append(tuple(blob_ids))
        return read(reader, db, blob_ids, threads=threads)

    def decoding(self: BlobReader, db: Any, blob_ids: list[int], parse: Any) -> Any:
        decoded.extend(blob_ids)
        return structures(self, db, blob_ids, parse)

    monkeypatch.setattr(sortkeys, "read", counted)
    monkeypatch.setattr(BlobReader, "structures", decoding)

    def first(client: IMAPClient) -> Any:
        client.create_folder("Tri")
        for n in (3, 1, 2):
            client.append("Tri", _message(n, f"Sujet {4 - n}"))
        client.select_folder("Tri", readonly=True)
        by_date = client.sort(["DATE"])
        by_subject = client.sort(["REVERSE", "SUBJECT"])
        assert client.thread("REFERENCES") == ((2,), (3,), (1,))
        assert client.thread("REFERENCES") == ((2,), (3,), (1,))
        return by_date, by_subject

    def second(client: IMAPClient) -> Any:
        client.select_folder("Tri")
        client.append("Tri", _message(4, "Sujet 0"))
        client.noop()
        return client.sort(["SUBJECT"])

    async with running_server(runtime.store, tmp_path / "tls") as running:
        by_date, by_subject = await _with_client(running, first)
        assert by_date == [2, 3, 1] and by_subject == [2, 3, 1]
        assert [len(batch) for batch in asked] == [3]  # SORT's; THREAD found the links kept
        asked.clear()
        assert await _with_client(running, second) == [4, 1, 3, 2]
    assert [len(batch) for batch in asked] == [1] and decoded == []


async def test_messages_without_sealed_keys_sort_and_thread_from_their_structure(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages stored before migration 0025 have no sealed keys, and keys sealed by other rules
    (another format) are not trusted: both are worked out from the structure, with the same
    answers as the keys sealed at delivery give."""
    thread = [_message(1, "Bilan"), _message(2, "Re: Bilan", references=["<m1@demo.mssante.fr>"])]
    others = [_message(3, "[Fwd: Bilan]"), _message(4, "Autre", references=["<m3@demo.mssante.fr>"])]

    def fill(folder: str) -> Callable[[IMAPClient], Any]:
        def run(client: IMAPClient) -> Any:
            client.create_folder(folder)  # contents of their own (the same bytes are stored once)
            mark = f"\r\nX-Lot: {folder}\r\n\r\n".encode()
            client.multiappend(folder, [m.replace(b"\r\n\r\n", mark, 1) for m in [*thread, *others]])

        return run

    def asked(folder: str) -> Callable[[IMAPClient], Any]:
        def run(client: IMAPClient) -> Any:
            client.select_folder(folder, readonly=True)
            return (
                client.thread("REFERENCES"),
                client.sort(["SUBJECT", "DATE"]),
                client.thread("ORDEREDSUBJECT"),
                client.sort(["REVERSE", "DATE"]),
            )

        return run

    decoded: list[int] = []
    structures = BlobReader.structures

    def decoding(self: BlobReader, db: Any, blob_ids: list[int], parse: Any) -> Any:
        decoded.extend(blob_ids)
        return structures(self, db, blob_ids, parse)

    monkeypatch.setattr(BlobReader, "structures", decoding)
    async with running_server(runtime.store, tmp_path / "tls") as running:
        await _with_client(running, fill("Scelles"))
        with monkeypatch.context() as rules:
            rules.setattr(sortkeys, "_FORMAT", "k0")  # sealed by other rules
            await _with_client(running, fill("Anciens"))
        with runtime.engine.begin() as conn:  # and two of them stored before the column existed
            last = "SELECT id FROM blobs ORDER BY id DESC LIMIT 2"
            conn.execute(text(f"UPDATE blobs SET sortkeys = NULL WHERE id IN ({last})"))
        sealed = await _with_client(running, asked("Scelles"))
        assert decoded == []
        assert await _with_client(running, asked("Anciens")) == sealed
    assert len(decoded) == 4
    # "[Fwd: Bilan]" has Bilan's base subject (RFC 5256 §2.1) and 4 answers it.
    assert sealed == (((1, (2,), (3, 4)),), [4, 1, 2, 3], ((1, (2,), (3,)), (4,)), [4, 3, 2, 1])
