"""Conformance points of issue 16 that a dialogue cannot compare: values that must differ
(UIDVALIDITY), and races between sessions (\\Recent ownership), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import imaplib
from pathlib import Path

import pytest
from sqlalchemy import text

from mssante.imap.fetch import decode_quoted_printable
from mssante.runtime import Runtime, open_runtime
from mssante.store.addresses import parse, searchable
from mssante.store.sortkeys import base_subject
from mssante.store.types import QuotaExceeded
from tests.helpers import make_message
from tests.imap_dialogues.harness import Client, running_server

BAL = "alice@demo.mssante.fr"


def _uidvalidity(imap: imaplib.IMAP4, name: str) -> int:
    typ, data = imap.status(name, "(UIDVALIDITY UIDNEXT)")
    assert typ == "OK", data
    text = data[0].decode()
    return int(text.split("UIDVALIDITY ")[1].split()[0].rstrip(")"))


async def test_uidvalidity_never_reused_when_a_folder_is_recreated_at_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    async with running_server(runtime.store, tmp_path / "tls") as running:

        def scenario() -> list[int]:
            with imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client) as imap:
                imap.login("alice", "wonderland")
                seen = []
                for _ in range(3):  # well within one second
                    assert imap.create("Ordonnances")[0] == "OK"
                    seen.append(_uidvalidity(imap, "Ordonnances"))
                    assert imap.append("Ordonnances", None, None, make_message(to=BAL))[0] == "OK"
                    assert imap.delete("Ordonnances")[0] == "OK"
                assert imap.create("Ordonnances")[0] == "OK"
                seen.append(_uidvalidity(imap, "Ordonnances"))
                _typ, data = imap.status("Ordonnances", "(UIDNEXT)")
                assert b"UIDNEXT 1" in data[0]  # a new UIDVALIDITY may restart UIDs
                return seen

        values = await asyncio.to_thread(scenario)
    assert values == sorted(values) and len(set(values)) == len(values), values


async def test_recent_goes_to_exactly_one_of_concurrent_sessions(runtime: Runtime) -> None:
    store = runtime.store
    await store.ensure_account(BAL)
    for _ in range(3):
        await store.deliver(make_message(to=BAL), "dr.martin@demo.mssante.fr", [BAL])
    folder = await store.folder(BAL, "INBOX")
    assert folder.first_recent_uid == 1 and folder.uidnext == 4
    firsts = await asyncio.gather(*(store.claim_recent(folder.id, folder.uidnext) for _ in range(8)))
    # One claim takes UIDs 1-3; every other one finds nothing left (first == upto).
    assert sorted(firsts) == [1] + [4] * 7
    assert (await store.status(BAL, "INBOX")).recent == 0
    await store.deliver(make_message(to=BAL), "dr.martin@demo.mssante.fr", [BAL])
    assert (await store.status(BAL, "INBOX")).recent == 1


def test_address_groups_and_comments_parse_as_envelope_wants() -> None:
    # RFC 5322 §3.4 examples and the forms of imaptest's fetch-envelope script.
    assert parse("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;") == [
        [None, None, "A Group", None],
        ["Ed Jones", None, "c", "a.test"],
        [None, None, "joe", "where.test"],
        ["John", None, "jdoe", "one.test"],
        [None, None, None, None],
    ]
    assert parse("Undisclosed recipients:;") == [[None, None, "Undisclosed recipients", None], [None] * 4]
    assert parse('"Joe Q. Public" <john.q.public@example.com>') == [
        ["Joe Q. Public", None, "john.q.public", "example.com"]
    ]
    assert parse("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>") == [
        ["Pete", None, "pete", "silly.test"]
    ]
    assert parse("<@route1,@route2:user@domain>") == [[None, "@route1,@route2", "user", "domain"]]
    assert searchable(parse("user@domain.org (Real Name)")) == "Real Name <user@domain.org>"
    assert parse("") is None and parse("   ") is None


async def test_qresync_select_reports_vanished_and_changed_since_a_modseq(
    runtime: Runtime, tmp_path: Path
) -> None:
    store = runtime.store
    await store.ensure_account(BAL)
    for _ in range(4):
        await store.deliver(make_message(to=BAL), "dr.martin@demo.mssante.fr", [BAL])
    inbox = await store.folder(BAL, "INBOX")
    known = inbox.highestmodseq
    await store.store_flags(inbox.id, [2], "add", ["\\Flagged"], actor="test")
    await store.store_flags(inbox.id, [4], "add", ["\\Deleted"], actor="test")
    await store.expunge(inbox.id, actor="test")
    async with running_server(store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await client.line()
        for command in (b"a LOGIN alice wonderland", b"b ENABLE QRESYNC"):
            await client.send(command + b"\r\n")
            while not (await client.line()).startswith(command[:1].decode() + " OK"):
                pass
        await client.send(b"c SELECT INBOX (QRESYNC (%d %d 1:4))\r\n" % (inbox.uidvalidity, known))
        lines = []
        while not (line := await client.line()).startswith("c "):
            lines.append(line)
        await client.close()
    assert line.startswith("c OK [READ-WRITE]"), line
    assert "* VANISHED (EARLIER) 4" in lines
    changed = [x for x in lines if " FETCH " in x]
    assert changed == [f"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ ({known + 1}))"], lines


async def test_multiappend_is_all_or_nothing_against_the_quota(runtime: Runtime) -> None:
    store = runtime.store
    await store.ensure_account(BAL)
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE mail_accounts SET quota_bytes = 5000 WHERE bal = :b"), {"b": BAL})
    small, big = make_message(to=BAL, size=1000), make_message(to=BAL, size=4500)
    with pytest.raises(QuotaExceeded):
        await store.append_many(BAL, "INBOX", [(small, (), None), (big, (), None)], actor="test")
    assert (await store.status(BAL, "INBOX")).messages == 0
    assert (await store.usage(BAL))[0] == 0
    uidvalidity, uids = await store.append_many(
        BAL, "INBOX", [(small, ["\\Seen"], None), (small, (), None)], actor="test"
    )
    assert uids == [1, 2] and uidvalidity == (await store.folder(BAL, "INBOX")).uidvalidity


async def test_binary_append_literal8_and_fetch_of_content_with_nul(runtime: Runtime, tmp_path: Path) -> None:
    """RFC 3516: APPEND takes a ``~{n}`` literal8; a decoded part holding NUL comes back as one."""
    payload = b"\x00\x01binary\x00"
    message = (
        b"Subject: nul\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\ntexte\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        + payload
        + b"\r\n--B--\r\n"
    )
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await client.line()
        await client.send(b"a LOGIN alice wonderland\r\n")
        assert (await client.line()).startswith("a OK")
        await client.send(b"b APPEND INBOX ~{%d+}\r\n" % len(message) + message + b"\r\n")
        assert (await client.line()).startswith("b OK [APPENDUID")
        await client.send(b"c SELECT INBOX\r\n")
        while not (await client.line()).startswith("c OK"):
            pass
        await client.send(b"d FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])\r\n")
        raw = await client.reader.readuntil(b"d OK FETCH completed\r\n")
        await client.close()
    assert raw.startswith(b"* 1 FETCH (BINARY[2] ~{%d}\r\n" % len(payload) + payload + b" BINARY.SIZE[2] 9)")


def test_base_subject_follows_rfc_5256() -> None:
    cases = {
        "Re: Fwd: [labo] Résultats": "RÉSULTATS",
        "[Fwd: Re: Compte rendu]": "COMPTE RENDU",
        "Compte   rendu (fwd) (FWD)": "COMPTE RENDU",
        "RE [x]: Ordonnance": "ORDONNANCE",
        "[urgent]": "[URGENT]",  # a blob alone is the subject
        "=?utf-8?q?Re=3A_R=C3=A9sum=C3=A9?=": "RÉSUMÉ",
        "": "",
    }
    for subject, base in cases.items():
        assert base_subject(subject) == base, subject


async def test_conditional_stores_from_two_processes_are_exact(runtime: Runtime) -> None:
    """Two stores on one database (two server processes): concurrent UNCHANGEDSINCE STOREs on
    one message — exactly one wins, every change gets its own MODSEQ, none is lost."""
    store = runtime.store
    await store.ensure_account(BAL)
    await store.deliver(make_message(to=BAL), "dr.martin@demo.mssante.fr", [BAL])
    inbox = await store.folder(BAL, "INBOX")
    [row] = await store.messages(inbox.id)
    second = open_runtime(runtime.settings)
    try:
        stores = [store, second.store]
        outcomes = []

        async def attempt(i: int) -> None:
            modified: list[int] = []
            changed = await stores[i % 2].store_flags(
                inbox.id, [1], "add", [f"$k{i}"], actor="t", unchanged_since=row.modseq, modified=modified
            )
            outcomes.append((changed, modified))

        await asyncio.gather(*(attempt(i) for i in range(6)))
        # Unconditional adds from both processes: each lands, with distinct increasing MODSEQs.
        adds = await asyncio.gather(
            *(stores[i % 2].store_flags(inbox.id, [1], "add", [f"$u{i}"], actor="t") for i in range(6))
        )
    finally:
        second.close()
    winners = [c for c, m in outcomes if c]
    assert len(winners) == 1 and sum(1 for _, m in outcomes if m == [1]) == 5
    modseqs = [c[0][2] for c in adds]
    assert len(set(modseqs)) == 6
    [final] = await store.messages(inbox.id)
    assert {f"$u{i}" for i in range(6)} <= set(final.flags)
    assert final.modseq == max(modseqs) == (await store.folder(BAL, "INBOX")).highestmodseq


def test_quoted_printable_decoding_follows_rfc_2045() -> None:
    """Trailing white space is not content; ``=`` ends a soft line break even when white space
    follows it; ``=XX`` is a byte; a stray ``=`` stays."""
    encoded = b"Ordonnance  \r\nr=C3=A9nale=\r\n\r\ndose\t= \r\n=3D 2 =\r\nmg\r\n50% = moiti=E9\r\n"
    assert decode_quoted_printable(
        encoded
    ) == "Ordonnance\r\nrénale\r\ndose\t= 2 mg\r\n50% = moiti".encode() + (b"\xe9\r\n")


async def test_binary_parts_appended_as_literal8_are_stored_base64(runtime: Runtime, tmp_path: Path) -> None:
    """BODY[] never carries NUL: a binary part is re-encoded at APPEND; BINARY[] gives it back."""
    message = (
        b"From: a@demo.mssante.fr\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n \x00-\x01\r\n"
    )
    async with running_server(runtime.store, tmp_path / "tls") as running:
        client = await Client.connect(running)
        await client.line()
        await client.send(b"a LOGIN alice wonderland\r\n")
        assert (await client.line()).startswith("a OK")
        await client.send(b"b APPEND INBOX ~{%d+}\r\n" % len(message) + message + b"\r\n")
        assert (await client.line()).startswith("b OK [APPENDUID")
        await client.send(b"c EXAMINE INBOX\r\n")
        while not (await client.line()).startswith("c OK"):
            pass
        await client.send(b"d FETCH 1 (BODY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1])\r\n")
        raw = await client.reader.readuntil(b"d OK FETCH completed\r\n")
        await client.close()
    encoded = b"IAAtAQ0K\r\n"
    assert raw.startswith(
        b"* 1 FETCH (BODY[1] {%d}\r\n" % len(encoded)
        + encoded
        + b" BINARY.SIZE[1] 6 BINARY[1] ~{6}\r\n \x00-\x01\r\n)"
    ), raw
