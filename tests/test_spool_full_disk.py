"""A spool that runs out of room: the server's spool directory is a 256 KiB tmpfs, a 1 MiB
message does not fit. SMTP refuses it with ``452 4.3.1`` (the client may try again later),
IMAP APPEND with a tagged NO; nothing of it is stored, the same session and another client
are served right after, and the spool is empty again. Needs root (``mount``), as CI runs.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssante.store.spooled import SPOOL_DIR
from tests.conftest import DEMO_ENV
from tests.demo_server import DemoServer, start_demo
from tests.mailbox import StoredMail
from tests.test_spool_smtp import (
    DURAND,
    LIMIT,
    THRESHOLD,
    imaps,
    logged_in,
    message,
    no_spool_file_left,
    send_data,
    tagged,
    transaction,
)

ROOM = "256k"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    data = tmp_path_factory.mktemp("spool-full") / "data"
    spool = data / SPOOL_DIR
    spool.mkdir(parents=True, mode=0o700)
    data.chmod(0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={ROOM},mode=0700", "tmpfs", str(spool)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root needed): {mounted.stderr.decode().strip()}")
    try:
        env = {
            **DEMO_ENV,
            "MSSANTE_SMTP__SPOOL_THRESHOLD": str(THRESHOLD),
            "MSSANTE_SMTP__MAX_MESSAGE_SIZE": str(LIMIT),
        }
        server = start_demo(data, env)
        try:
            yield server
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", str(spool)], check=False)


@pytest.fixture
def stored(full: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(full.data_dir)
    yield view
    view.close()


def test_smtp_says_452_when_the_spool_is_full_and_stores_nothing(
    full: DemoServer, stored: StoredMail
) -> None:
    subject = f"plein-{uuid.uuid4().hex[:8]}"
    wire = logged_in(full)
    try:
        transaction(wire)
        assert send_data(wire, message(subject, 1024 * 1024))[-1].startswith(b"452 4.3.1")
        transaction(wire)  # the same session takes a message that fits in memory
        assert send_data(wire, message(subject + "-petit", 8 * 1024))[-1].startswith(b"250 ")
    finally:
        wire.close()
    assert stored.with_subject(DURAND, subject) == []
    assert len(stored.with_subject(DURAND, subject + "-petit")) == 1
    no_spool_file_left(full)
    other = logged_in(full)  # and another client right after
    try:
        transaction(other)
        assert send_data(other, message(subject + "-autre", 8 * 1024))[-1].startswith(b"250 ")
    finally:
        other.close()


def test_imap_append_is_refused_when_the_spool_is_full_and_stores_nothing(
    full: DemoServer, stored: StoredMail
) -> None:
    subject = f"plein-append-{uuid.uuid4().hex[:8]}"
    big, small = message(subject, 1024 * 1024), message(subject + "-petit", 4 * 1024)
    sock, replies = imaps(full)
    try:
        sock.sendall(b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        assert tagged(replies, b"b").startswith(b"b NO ")
        sock.sendall(b"c APPEND INBOX {%d+}\r\n" % len(small) + small + b"\r\n")
        assert tagged(replies, b"c").startswith(b"c OK")
    finally:
        replies.close()
        sock.close()
    assert stored.with_subject(DURAND, subject) == []
    assert stored.with_subject(DURAND, subject + "-petit") == [small]
    no_spool_file_left(full)


def test_the_spool_is_the_small_file_system(full: DemoServer) -> None:
    """(What the two tests above rely on.)"""
    found = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", str(full.data_dir / SPOOL_DIR)], capture_output=True
    )
    assert found.stdout.decode().strip() == "tmpfs"
    assert Path(full.data_dir / SPOOL_DIR).is_dir()
