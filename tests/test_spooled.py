"""A message spooled to a file reads as the same bytes in memory: the searches the checks and
the MIME analysis use, the DKIM body hash and signature, the sealed chunks and their digest;
the file has no name and is closed with the last reference to the message."""

from __future__ import annotations

import gc
import hashlib
import os
import random
from email.utils import formatdate
from pathlib import Path

import pytest

from mssante.crypto import KeyRing, open_chunks
from mssante.imap.commands.values import Append
from mssante.imap.framing import CommandReady, Framer, NeedContinuation
from mssante.imap.parser import parse_command
from mssante.smtp import dkim
from mssante.smtp.spool import Received
from mssante.store import blobs, spooled
from mssante.store.mime import analyse
from mssante.store.spooled import SpooledMessage


def spool(directory: Path, data: bytes, head: int | None = None) -> SpooledMessage:
    """``data`` in a spool file, its first ``head`` bytes moved into memory (default: the
    header block, as after DATA)."""
    message = SpooledMessage(directory)
    for at in range(0, len(data), 7000):
        message.append(data[at : at + 7000])
    if head is None:
        message.hold_header()
    else:
        message.head, message.body_at = bytearray(data[:head]), head
    return message


def multipart(size: int) -> bytes:
    part = b"line of text with  blanks \t and more\r\n" * (size // 40)
    return (
        b"From: a@x.fr\r\nTo: b@y.fr\r\nSubject: big\r\nDate: " + formatdate().encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\npreamble\r\n"
        b"--XYZ\r\nContent-Type: text/plain\r\n\r\n" + part + b"\r\n--XYZ\r\n"
        b"Content-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment\r\n\r\n"
        + part
        + b"\r\n--XYZ--\r\n\r\n\r\n"
    )


def test_searches_read_as_in_memory(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = bytes(rng.choice(b"ab\r\n.-") for _ in range(3 * spooled.WINDOW + 123))
    for head in (0, 10, spooled.WINDOW + 5):
        message = spool(tmp_path, data, head)
        assert len(message) == len(data) and bytes(message) == data
        for _ in range(300):
            sub = bytes(rng.choice(b"ab\r\n.-") for _ in range(rng.randint(1, 5)))
            start = rng.randint(-50, len(data) + 5)
            end = rng.choice([None, rng.randint(-50, len(data) + 5)])
            assert message.find(sub, start, end) == data.find(sub, start, end), (sub, start, end)
            assert message.rfind(sub, start, end) == data.rfind(sub, start, end), (sub, start, end)
            assert message.count(sub, start, end) == data.count(sub, start, end), (sub, start, end)
            assert message.startswith(sub, start) == data.startswith(sub, start)
            assert message[start:end] == data[start:end]


@pytest.mark.parametrize("size", [100_000, 600_000])  # sealed at once; as stored (SEAL_AS_STORED)
def test_analysis_dkim_and_sealing_read_as_in_memory(tmp_path: Path, size: int) -> None:
    data = multipart(size)
    message = spool(tmp_path, data)
    assert bytes(message.head) == data[: data.find(b"\r\n\r\n") + 4]
    assert analyse(message) == analyse(data)
    for relaxed in (True, False):
        assert dkim.body_hash(message, message.body_at, relaxed, hashlib.sha256) == dkim.body_hash(
            data, message.body_at, relaxed, hashlib.sha256
        )
    keyring = KeyRing.create(tmp_path / "keyring.json")
    for chunk_size in (4096, 65536, 100_000):
        kept = blobs.seal(keyring, message, None, chunk_size, prefix=b"DKIM-Signature: x\r\n")
        memory = blobs.seal(keyring, data, None, chunk_size, prefix=b"DKIM-Signature: x\r\n")
        assert kept.digest == memory.digest and kept.size == memory.size
        sealed = list(enumerate(kept.chunks()))
        opened = open_chunks(keyring.unwrap(kept.key), sealed, kept.chunk_count)
        assert b"".join(opened) == b"DKIM-Signature: x\r\n" + data


def test_drop_fields_and_trace_on_top_as_in_memory(tmp_path: Path) -> None:
    data = b"Sender: x@y.fr\r\n  (folded)\r\nFrom: a@x.fr\r\n\r\nbody\r\n" * 1 + b"z" * 5000 + b"\r\n"
    in_memory = Received()
    in_memory.extend(data)
    on_disk = in_memory.to_file(tmp_path)
    in_memory = Received()
    in_memory.extend(data)
    on_disk.received()
    for content in (in_memory, on_disk):
        content.drop_fields("Sender")
    assert bytes(on_disk.finish(b"Received: by us\r\n")) == in_memory.finish(b"Received: by us\r\n")


def test_the_spool_file_has_no_name_and_closes_with_the_message(tmp_path: Path) -> None:
    directory = spooled.spool_dir(tmp_path)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    message = spool(directory, b"From: a@x.fr\r\n\r\nbody\r\n")
    fd = message._fd
    assert os.fstat(fd).st_nlink == 0 and os.fstat(fd).st_mode & 0o777 == 0o600
    assert list(directory.iterdir()) == []
    del message
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_left_overs_of_a_crash_are_swept_at_start(tmp_path: Path) -> None:
    directory = tmp_path / spooled.SPOOL_DIR
    directory.mkdir()
    old, new = directory / "spool-old", directory / "spool-new"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (0, 0))
    spooled.spool_dir(tmp_path)
    assert not old.exists() and new.exists()  # a file being created right now is left alone


def test_framer_spools_a_big_append_literal_and_the_parser_hands_it_over(tmp_path: Path) -> None:
    big, small = b"Subject: big\r\n\r\n" + b"x" * 200_000, b"Subject: small\r\n\r\nx"
    framer = Framer(spool=lambda: SpooledMessage(tmp_path), spool_threshold=100_000)
    framer.feed(b"t APPEND INBOX {%d}\r\n" % len(big))
    assert isinstance(framer.next_event(), NeedContinuation)
    for at in range(0, len(big), 16384):
        framer.feed(big[at : at + 16384])
        assert framer.next_event() is None
        assert framer.buffered < 1000  # the literal went to the file
    framer.feed(b" (\\Seen) {%d+}\r\n" % len(small) + small + b"\r\n")
    event = framer.next_event()
    assert isinstance(event, CommandReady) and len(event.spooled) == 1
    command = parse_command(event.data, spooled=event.spooled)
    assert isinstance(command.args, Append)
    assert isinstance(command.args.message, SpooledMessage) and bytes(command.args.message) == big
    [(flags, _, message)] = command.args.more
    assert flags == ("\\Seen",) and message == small
