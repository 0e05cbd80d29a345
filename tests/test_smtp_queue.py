"""``smtp.acknowledge = "queued"``: 250 once the message is sealed in the queue, delivered by
the queue's own process an instant later.

Seen from outside, over real sockets with smtplib and IMAP clients: the reply names the queue
entry; an IDLE session (served by the other process) hears the message at once; a full mailbox
no longer refuses the message while the client waits: the others get it and the sender gets a
delivery status notification (5.2.2) in its INBOX; the queue database is sealed (the message's
text is not in it); entries left by a stop are delivered at the next start, one whose delivery
committed before a crash (its id in ``smtp_queue_delivered``) is not delivered twice, and one
that does not open is set aside, not dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imapclient import IMAPClient
from sqlalchemy import create_engine, text

from mssante.auth.identity import Identity
from mssante.crypto import KeyRing
from mssante.policy import MessageFacts, Recipient
from mssante.runtime import Runtime
from mssante.smtp.queue import QueuedMessage, QueueEntryError, SubmissionQueue, new_id
from mssante.smtp.queue_delivery import QueueDelivery, _mark
from tests.conftest import DEMO_ENV, PG_URL, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message, web_client
from tests.test_patients_smtp import mail, patients, send

SENDER = "claire.martin@demo.mssante.fr"
ENV = {**DEMO_ENV, "MSSANTE_SMTP__ACKNOWLEDGE": "queued"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def queued(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoServer, str]]:
    """A queued demo server, and its database's URL."""
    env = dict(ENV)
    database = None
    data = tmp_path_factory.mktemp(f"queue-{request.param}") / "data"
    url = f"sqlite:///{data / 'mssante.db'}"
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("MSSANTE_TEST_PG_URL is not set")
        database, url = _create_pg_database()
        env["MSSANTE_DATABASE__URL"] = url
    started = start_demo(data, env)
    try:
        yield started, url
    finally:
        code = started.stop()
        if database is not None:
            _drop_pg_database(database)
        assert code == 0, f"server exited with {code}:\n{started.log()}"


@pytest.fixture
def server(queued: tuple[DemoServer, str]) -> DemoServer:
    return queued[0]


def _imap(server: DemoServer, user: str) -> IMAPClient:
    context = ssl.create_default_context(cafile=server.ca_cert)
    client = IMAPClient("127.0.0.1", port=server.port("imaps"), ssl=True, ssl_context=context, timeout=10)
    client.login(user, str(server.account(user)["password"]))
    return client


def _submit(server: DemoServer, recipients: list[str], subject: str, body: str = "Bonjour.") -> str:
    """Send one message as SENDER; the server's reply to DATA."""
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        client.login(SENDER, str(server.account(SENDER)["password"]))
        client.mail(SENDER)
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(make_message(SENDER, ", ".join(recipients), subject, body))
    assert code == 250, reply
    return reply.decode()


def _colleague(server: DemoServer) -> str:
    """Another professional's personal BAL of the demo."""
    for account in server.doc["accounts"]:
        if account["address"] != SENDER and account["kind"] == "professional" and account["password"]:
            return str(account["address"])
    raise AssertionError("the demo has no second professional")


def _wait_for(client: IMAPClient, criteria: list[str], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        client.noop()
        found: list[int] = client.search(criteria)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _arrives(server: DemoServer, user: str, subject: str) -> bool:
    """Whether a message of ``subject`` shows in ``user``'s INBOX within the wait."""
    client = _imap(server, user)
    try:
        client.select_folder("INBOX")
        return bool(_wait_for(client, ["SUBJECT", subject]))
    finally:
        client.logout()


def _entries(data_dir: Path, aside: int = 0) -> list[str]:
    """The ids in the node's queue database (waiting, or set aside)."""
    with sqlite3.connect(data_dir / "queue.db") as db:
        return [row[0] for row in db.execute("SELECT id FROM entries WHERE aside = ?", (aside,))]


def test_reply_names_the_entry_and_idle_hears_the_message(server: DemoServer) -> None:
    watcher = _imap(server, SENDER)
    try:
        watcher.select_folder("INBOX")
        watcher.idle()
        started = time.monotonic()
        reply = _submit(server, [SENDER], "file d'attente")
        assert "queued as" in reply
        heard = watcher.idle_check(timeout=10)
        elapsed = time.monotonic() - started
        watcher.idle_done()
        assert any(item[1] == b"EXISTS" for item in heard), heard
        assert elapsed < 5
        uids = watcher.search(["SUBJECT", "file d'attente"])
        assert len(uids) == 1
        body = watcher.fetch(uids, ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
        assert b"Bonjour." in body
        assert b"Received: from" in body  # the trace fields written before the 250
    finally:
        watcher.logout()
    deadline = time.monotonic() + 5
    while _entries(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _entries(server.data_dir) == []


def _each_arrives_once(server: DemoServer, word: str, count: int) -> None:
    """``count`` messages whose subject holds ``word`` reach the sender's INBOX, none twice."""
    reader = _imap(server, SENDER)
    try:
        reader.select_folder("INBOX")
        deadline = time.monotonic() + 15
        while len(reader.search(["SUBJECT", word])) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            reader.noop()
        found = reader.search(["SUBJECT", word])
        subjects = reader.fetch(found, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        assert len(found) == count
        assert len({v[b"BODY[HEADER.FIELDS (SUBJECT)]"] for v in subjects.values()}) == count
    finally:
        reader.logout()


def test_many_messages_in_a_row_all_arrive_once(server: DemoServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        client.login(SENDER, str(server.account(SENDER)["password"]))
        for i in range(40):
            client.sendmail(SENDER, [SENDER], make_message(SENDER, SENDER, f"rafale {i:02d}"))
    _each_arrives_once(server, "rafale", 40)


def test_sessions_at_once_and_a_lone_one_each_message_arrives_once(server: DemoServer) -> None:
    """A lone session's entries are committed by the event loop itself, those of sessions at
    once by the writer thread in groups; sessions coming and going switch between the two, and
    every message is delivered once either way."""
    password = str(server.account(SENDER)["password"])

    def session(name: str, count: int) -> None:
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
            client.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
            client.login(SENDER, password)
            for i in range(count):
                client.sendmail(SENDER, [SENDER], make_message(SENDER, SENDER, f"ensemble {name}-{i:02d}"))

    session("seule", 5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(session, ["a", "b", "c", "d"], [10, 10, 10, 10]))
    _each_arrives_once(server, "ensemble", 45)


def test_an_entry_put_alone_while_the_writer_commits_waits_for_it(tmp_path: Path) -> None:
    """``put(alone=True)`` commits on the caller's thread only when no other write is under way:
    while the writer thread is in a transaction the entry goes to it, and both are written."""
    queue = SubmissionQueue(tmp_path, KeyRing.create(tmp_path / "keyring.json"))
    first = _entry(make_message(SENDER, SENDER, "en cours"), SENDER)
    second = _entry(make_message(SENDER, SENDER, "seule"), SENDER)
    inside, release = threading.Event(), threading.Event()
    writer_threads: list[str] = []

    def slow(connection: sqlite3.Connection) -> None:
        writer_threads.append(threading.current_thread().name)
        queue._insert(first)(connection)
        inside.set()
        release.wait(10)

    async def scenario() -> None:
        busy = queue._submit(slow)
        assert await asyncio.to_thread(inside.wait, 10)
        alone = asyncio.create_task(queue.put(second, alone=True))
        await asyncio.sleep(0.05)
        assert not alone.done()  # it waits for the writer, not on the connection in use
        release.set()
        await asyncio.wait_for(alone, 10)
        busy.result(10)

    try:
        asyncio.run(scenario())
        assert writer_threads == ["mssante-queue"]
        assert queue.waiting() == sorted([first.id, second.id])

        async def lone() -> str:  # the writer idle: committed by the caller before it returns
            third = _entry(make_message(SENDER, SENDER, "troisieme"), SENDER)
            await queue.put(third, alone=True)
            return third.id

        third_id = asyncio.run(lone())
        with sqlite3.connect(tmp_path / "queue.db") as db:
            assert db.execute("SELECT count(*) FROM entries WHERE id = ?", (third_id,)).fetchone() == (1,)
    finally:
        queue.close()


def _set_quota(url: str, bal: str, quota: int | None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as db:
            db.execute(
                text("UPDATE mail_accounts SET quota_bytes = :q WHERE bal = :b"), {"q": quota, "b": bal}
            )
    finally:
        engine.dispose()


def test_full_mailbox_is_told_by_a_dsn_after_the_250(queued: tuple[DemoServer, str]) -> None:
    server, url = queued
    colleague = _colleague(server)
    _submit(server, [colleague], "premier")  # the colleague's account exists from here on
    reader = _imap(server, colleague)
    try:
        reader.select_folder("INBOX")
        assert _wait_for(reader, ["SUBJECT", "premier"])
        _set_quota(url, colleague, 1)
        reply = _submit(server, [colleague, SENDER], "trop plein")
        assert "queued as" in reply
        own = _imap(server, SENDER)
        try:
            own.select_folder("INBOX")
            assert _wait_for(own, ["SUBJECT", "trop plein"])  # the other recipient has it
            bounce = _wait_for(own, ["FROM", "MAILER-DAEMON"])
            assert bounce
            report = own.fetch(bounce[-1:], ["BODY.PEEK[]"])[bounce[-1]][b"BODY[]"]
            assert b"report-type=delivery-status" in report
            assert f"Final-Recipient: rfc822; {colleague}".encode() in report
            assert b"Status: 5.2.2" in report
            assert b"Subject: trop plein" in report  # the original header, not its body
        finally:
            own.logout()
        reader.noop()
        assert not reader.search(["SUBJECT", "trop plein"])
    finally:
        _set_quota(url, colleague, None)
        reader.logout()


def _entry(raw: bytes, to: str) -> QueuedMessage:
    return QueuedMessage(
        new_id(),
        SENDER,
        "professional:test",
        "127.0.0.1",
        Identity.staff("test.queue"),
        SENDER,
        (Recipient(to, "local", to.partition("@")[2]),),
        MessageFacts(from_addresses=(SENDER,)),
        None,
        b"",
        (),
        datetime.now(UTC),
        raw,
    )


def test_entries_left_by_a_stop_are_delivered_at_start_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_demo(data, ENV)
    assert first.stop() == 0
    queue = SubmissionQueue(data, KeyRing.load(data / "keyring.json"))
    secret = "Compte rendu confidentiel 4242"
    pending = _entry(make_message(SENDER, SENDER, "laisse en file", secret), SENDER)
    done = _entry(make_message(SENDER, SENDER, "deja remis"), SENDER)
    try:
        queue.put_now(pending)
        queue.put_now(done)
        on_disk = b"".join(p.read_bytes() for p in data.glob("queue.db*"))
        assert secret.encode() not in on_disk and b"laisse en file" not in on_disk  # sealed at rest
        [(entry_id, sealed)] = queue.read([pending.id])
        assert queue.open(entry_id, sealed).raw == pending.raw
        with pytest.raises(QueueEntryError):  # bound to its id: not openable as another entry
            queue.open(done.id, sealed)
    finally:
        queue.close()
    with sqlite3.connect(data / "mssante.db") as db:  # as if it was delivered before a crash
        db.execute(
            "INSERT INTO smtp_queue_delivered (id, delivered_at) VALUES (?, ?)", (done.id, "2026-12-07")
        )
    altered = new_id()  # acknowledged once, altered since: set aside, not dropped
    with sqlite3.connect(data / "queue.db") as db:
        db.execute(
            "INSERT INTO entries (id, sealed, aside) VALUES (?, ?, 0)",
            (altered, b'{"key": "k1", "wrapped": "AAAA"}\n' + b"\1" * 64),
        )
    second = start_demo(data, ENV)
    try:
        reader = _imap(second, SENDER)
        try:
            reader.select_folder("INBOX")
            assert _wait_for(reader, ["SUBJECT", "laisse en file"])
            assert not reader.search(["SUBJECT", "deja remis"])
        finally:
            reader.logout()
        deadline = time.monotonic() + 5
        while _entries(data) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _entries(data) == []
        assert _entries(data, aside=1) == [altered]
        assert f"queue entry {altered} does not open" in second.log()
        assert "worker 1 (queue delivery) started" in second.log()  # named as what it does
        with web_client(second) as web:  # monitoring sees it
            health = web.get("/health").json()
            scraped = web.get("/metrics").text
        assert health["submission_queue"]["set_aside"] == 1
        assert health["submission_queue"]["waiting"] == 0
        assert "mssante_submission_queue_set_aside 1.0" in scraped
        assert "mssante_submission_queue_waiting 0.0" in scraped
    finally:
        assert second.stop() == 0, second.log()
    with sqlite3.connect(data / "mssante.db") as db:  # the delivered ids are forgotten at stop
        assert db.execute("SELECT count(*) FROM smtp_queue_delivered").fetchone() == (0,)


def test_an_entry_retried_after_its_delivery_committed_is_not_delivered_again(runtime: Runtime) -> None:
    """What fails after a delivery's commit (its DSN, the entry's removal) is retried: the retry
    finds the delivery's mark and only removes the entry."""
    queue = SubmissionQueue(runtime.settings.data_dir, runtime.keyring)
    entry = _entry(make_message(SENDER, SENDER, "commit puis panne"), SENDER)
    try:
        queue.put_now(entry)
        runtime.store.writer.run_sync(_mark(entry.id))  # written in the delivery's transaction

        async def retry() -> QueueDelivery:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bell:
                delivery = QueueDelivery(runtime, queue, bell)
                delivery._retry[entry.id] = (1, 0.0)  # it failed once, after the commit
                await delivery._deliver_batch([entry.id])
                return delivery

        delivery = asyncio.run(retry())
        assert queue.waiting() == []
        assert entry.id not in delivery._retry
        with runtime.engine.connect() as db:
            assert db.execute(text("SELECT count(*) FROM messages")).scalar() == 0  # not again
    finally:
        queue.close()


def test_patient_conversations_open_through_the_delivery_process(server: DemoServer) -> None:
    """The hooks run where the message is delivered: a professional's queued message opens the
    conversation the patient's reply needs, and the reply (queued too) reaches the professional."""
    patient = patients(server)[0]
    subject = f"Resultats {new_id()}"
    first, raw = mail(SENDER, [patient], subject)
    assert send(server, SENDER, SENDER, [patient], raw).ok
    assert _arrives(server, patient, subject)
    answer = f"Re: {subject}"
    _, raw = mail(patient, [SENDER], answer, in_reply_to=first, references=[first])
    reply = send(server, patient, patient, [SENDER], raw)
    assert reply.ok and "queued as" in reply.text, reply
    assert _arrives(server, SENDER, answer)


def test_operator_lists_puts_back_and_drops_set_aside_entries(tmp_path: Path) -> None:
    """``mssante queue submission``, run beside the serving node: an entry sealed under a key the
    ring does not hold is set aside by the delivery process and listed as not opening; one set
    aside that opens goes back in line and is delivered; dropping needs a reason, is audited,
    and tells the sender by a DSN when the entry opens. Content is never printed."""
    data = tmp_path / "data"
    server = start_demo(data, ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mssante", "--data-dir", str(data), "queue", "submission", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    try:
        assert json.loads(cli("list", "--json").stdout) == {"waiting": 0, "set_aside": 0, "entries": []}
        old_ring = SubmissionQueue(data, KeyRing.create(tmp_path / "old-keyring.json"))
        lost = _entry(make_message(SENDER, SENDER, "scellee ailleurs"), SENDER)
        try:
            old_ring.put_now(lost)  # the delivery process cannot open it: set aside
        finally:
            old_ring.close()
        ours = SubmissionQueue(data, KeyRing.load(data / "keyring.json"))
        secret = "Resultat confidentiel 7315"
        back = _entry(make_message(SENDER, SENDER, "remise en file", secret), SENDER)
        dropped = _entry(make_message(SENDER, SENDER, "retiree par l'exploitant"), SENDER)
        try:  # set aside earlier, though they open (a store failure, a key ring since restored)
            with sqlite3.connect(data / "queue.db") as db:
                for entry in (back, dropped):
                    db.execute("INSERT INTO entries VALUES (?, ?, 1)", (entry.id, ours.seal(entry)))
        finally:
            ours.close()
        deadline = time.monotonic() + 10
        while len(_entries(data, aside=1)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)

        listing = cli("list", "--json")
        assert secret not in listing.stdout
        listed = json.loads(listing.stdout)
        assert (listed["waiting"], listed["set_aside"]) == (0, 3)
        by_id = {e["id"]: e for e in listed["entries"]}
        assert by_id[lost.id]["opens"] is False and "does not open" in by_id[lost.id]["error"]
        assert by_id[back.id]["opens"] is True
        assert by_id[back.id]["sender"] == SENDER and by_id[back.id]["recipients"] == [SENDER]
        assert "does not open" in cli("list").stdout

        assert cli("retry").returncode == 2  # an id or --all
        assert cli("retry", back.id).returncode == 0
        assert _arrives(server, SENDER, "remise en file")
        assert cli("retry", back.id).returncode == 1  # no longer set aside

        assert cli("drop", lost.id, "--reason", " ").returncode == 2
        assert cli("drop", "00000000000000000000-000000000000", "--reason", "inconnue").returncode == 1
        assert cli("drop", lost.id, "--reason", "cle perdue").returncode == 0
        done = cli("drop", dropped.id, "--reason", "doublon envoye par le DPI")
        assert done.returncode == 0, done.stderr
        assert _arrives(server, SENDER, "Undelivered Mail Returned to Sender")
        reader = _imap(server, SENDER)
        try:
            reader.select_folder("INBOX")
            [report] = reader.search(["TEXT", "removed from the queue by the operator"])
            text_of = reader.fetch([report], ["BODY.PEEK[]"])[report][b"BODY[]"]
            assert b"doublon envoye par le DPI" in text_of and b"retiree par l'exploitant" in text_of
        finally:
            reader.logout()
        assert json.loads(cli("list", "--json").stdout)["set_aside"] == 0
        assert "0 entries back in line" in cli("retry", "--all").stdout
        with sqlite3.connect(data / "mssante.db") as db:
            drops = db.execute(
                "SELECT bal, object FROM audit_log WHERE action = 'queue.submission.drop' ORDER BY seq"
            ).fetchall()
        assert drops == [(None, lost.id), (SENDER, dropped.id)]
    finally:
        assert server.stop() == 0, server.log()
