"""Real IMAP client libraries against our server over TLS on loopback: imaplib, imapclient,
aioimaplib. What they send is what Thunderbird-era clients send; what we answer must parse."""

from __future__ import annotations

import asyncio
import imaplib
from pathlib import Path

import aioimaplib
import pytest
from imapclient import IMAPClient

from mssante.imap import search
from mssante.runtime import Runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import Running, running_server

BAL = "alice@demo.mssante.fr"


def _imaplib_session(running: Running, delivered: bytes) -> None:
    with imaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client) as imap:
        assert "LOGINDISABLED" not in imap.capabilities
        assert imap.login("alice", "wonderland")[0] == "OK"
        typ, data = imap.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        # Byte-identical round trip of a delivered message.
        typ, data = imap.fetch("1", "(RFC822)")
        assert typ == "OK" and data[0][1] == delivered
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: Compte rendu\r\n\r\n"
        own = make_message(subject="Brouillon", body="texte\r\n")
        typ, data = imap.append("Drafts", r"(\Draft)", imaplib.Time2Internaldate(1700000000), own)
        assert typ == "OK" and b"APPENDUID" in data[0]
        assert imap.select("Drafts")[1] == [b"1"]
        typ, data = imap.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE BODY[])")
        flags = imaplib.ParseFlags(data[0][0])
        assert flags == (b"\\Draft", b"\\Seen", b"\\Recent")  # first session to see it (IMAP4rev1)
        assert data[0][1] == own
        assert imaplib.Internaldate2tuple(data[0][0]) is not None
        assert imap.store("1", "+FLAGS", r"(\Deleted)")[0] == "OK"
        assert imap.search(None, "DELETED") == ("OK", [b"1"])
        assert imap.expunge() == ("OK", [b"1"])
        assert imap.close()[0] == "OK"
        assert imap.logout()[0] == "BYE"


def _imaplib_starttls(running: Running) -> None:
    imap = imaplib.IMAP4("127.0.0.1", running.plain_port)
    try:
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        try:
            imap.login("alice", "wonderland")
        except imaplib.IMAP4.error as exc:
            assert "PRIVACYREQUIRED" in str(exc)
        else:
            raise AssertionError("LOGIN accepted in clear text")
        imap.starttls(ssl_context=running.tls.client)
        assert imap.login("alice", "wonderland")[0] == "OK"
        assert imap.status("INBOX", "(MESSAGES UIDNEXT)")[0] == "OK"
    finally:
        imap.logout()


def _imapclient_session(running: Running) -> None:
    with IMAPClient("127.0.0.1", port=running.tls_port, ssl=True, ssl_context=running.tls.client) as client:
        client.login("alice", "wonderland")
        assert client.has_capability("MOVE") and client.has_capability("UIDPLUS")
        folders = {name: flags for flags, _, name in client.list_folders()}
        assert b"\\Sent" in folders["Sent"] and b"\\HasNoChildren" in folders["INBOX"]
        assert client.find_special_folder(b"\\Trash") == "Trash"
        client.create_folder("Dossiers/Été")
        assert client.folder_exists("Dossiers/Été")
        client.select_folder("INBOX")
        data = client.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "FLAGS", "RFC822.SIZE", "INTERNALDATE"])
        envelope = data[1][b"ENVELOPE"]
        assert envelope.subject == b"Compte rendu"
        assert envelope.from_[0].mailbox == b"dr.martin" and envelope.from_[0].host == b"demo.mssante.fr"
        assert data[1][b"BODYSTRUCTURE"][0] == b"text"
        client.add_flags([1], [b"$Important"])
        assert b"$Important" in client.get_flags([1])[1]
        assert client.search(["SUBJECT", "compte"]) == [1]
        assert client.search(["SEEN"]) == [1]  # imaplib fetched RFC822 above
        client.move([1], "Dossiers/Été")
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        status = client.folder_status("Dossiers/Été", ["MESSAGES", "UNSEEN"])
        assert status[b"MESSAGES"] == 1
        assert client.namespace().personal == (("", "/"),)
        server_id = client.id_({"name": "pytest"})
        assert server_id[0][:2] == (b"name", b"mssante")
        client.logout()


async def _aioimaplib_session(running: Running) -> None:
    client = aioimaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client, timeout=5)
    await client.wait_hello_from_server()
    assert (await client.login("alice", "wonderland")).result == "OK"
    assert (await client.select("Dossiers/&AMk-t&AOk-")).result == "OK"
    response = await client.fetch("1", "(UID FLAGS BODY.PEEK[TEXT])")
    assert response.result == "OK"
    assert any(b"ci-joint le compte rendu" in bytes(line) for line in response.lines)
    # IDLE: a second client's APPEND to the selected mailbox is pushed at once.
    idle = await client.idle_start(timeout=5)
    other = aioimaplib.IMAP4_SSL("127.0.0.1", running.tls_port, ssl_context=running.tls.client, timeout=5)
    await other.wait_hello_from_server()
    await other.login("alice", "wonderland")
    appended = await other.append(make_message(subject="Nouveau"), mailbox="Dossiers/&AMk-t&AOk-")
    assert appended.result == "OK"
    pushed = await client.wait_server_push()
    assert b"2 EXISTS" in b" ".join(
        bytes(p) if isinstance(p, bytes | bytearray) else str(p).encode() for p in pushed
    )
    client.idle_done()
    assert (await asyncio.wait_for(idle, 5)).result == "OK"
    await other.logout()
    assert (await client.uid_search("ALL")).lines[0] == b"1 2"
    await client.logout()


async def test_real_clients_over_tls(runtime: Runtime, tmp_path: Path) -> None:
    delivered = make_message(to=BAL)
    uids = await runtime.store.deliver(delivered, "dr.martin@demo.mssante.fr", [BAL])
    assert uids == {BAL: 1}
    async with running_server(runtime.store, tmp_path / "tls") as running:
        await asyncio.to_thread(_imaplib_session, running, delivered)
        await asyncio.to_thread(_imaplib_starttls, running)
        await asyncio.to_thread(_imapclient_session, running)
        await _aioimaplib_session(running)


def _imapclient_body_search(running: Running, hits: list[int]) -> None:
    with IMAPClient("127.0.0.1", port=running.tls_port, ssl=True, ssl_context=running.tls.client) as client:
        client.login("alice", "wonderland")
        client.select_folder("INBOX", readonly=True)
        assert client.search(["BODY", "glyquée"], charset="UTF-8") == hits
        assert client.search(["TEXT", "GLYQUÉE", "NOT", "SUBJECT", "m6"], charset="UTF-8") == hits[:-1]
        try:
            client.search(["BODY"])  # a key without its string
        except IMAPClient.Error as exc:  # the server's BAD, with the parser's reason
            assert "Expected 'space'" in str(exc)
        else:
            raise AssertionError("SEARCH BODY without a string accepted")
        assert client.search(["BODY", "glyquée"], charset="UTF-8") == hits  # the session goes on
        client.logout()


async def test_a_body_search_from_a_real_client_reads_many_groups_of_large_messages(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """imapclient searches bodies over TLS: messages larger than a storage chunk, read in
    groups of two (on PostgreSQL the next group's chunks are asked for while the current one
    is scanned, and a message whose hit is in a later chunk is read further meanwhile). The
    hits are those of the bodies; a malformed SEARCH is answered BAD and the session goes on."""
    monkeypatch.setattr(search, "BODY_READ_AHEAD", 2)
    filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * (
        runtime.settings.storage.chunk_size // 40
    )
    kinds = [filler + "Glyquée en fin\r\n", "glyquée au début\r\n" + filler, filler]
    for i in range(7):
        raw = make_message(to=BAL, subject=f"m{i}", body=kinds[i % 3])
        assert len(raw) > runtime.settings.storage.chunk_size
        await runtime.store.deliver(raw, "dr.martin@demo.mssante.fr", [BAL])
    async with running_server(runtime.store, tmp_path / "tls") as running:
        await asyncio.to_thread(_imapclient_body_search, running, [1, 2, 4, 5, 7])
