"""mbsync (isync) syncing a mailbox both ways against our server over TLS: messages, flags,
deletions. Skipped when the mbsync binary is absent (Debian package ``isync``)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from mssante.runtime import Runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import Running, running_server

BAL = "alice@demo.mssante.fr"
MBSYNC = shutil.which("mbsync")

pytestmark = pytest.mark.skipif(MBSYNC is None, reason="mbsync (Debian package isync) is not installed")


def _config(running: Running, maildir: Path) -> str:
    return f"""
IMAPAccount mssante
Host localhost
Port {running.tls_port}
User alice
Pass wonderland
SSLType IMAPS
CertificateFile {running.tls.ca_file}
AuthMechs LOGIN

IMAPStore far
Account mssante

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :far:
Near :near:
Patterns INBOX Archive
Create Both
Expunge Both
SyncState *
"""


async def _mbsync(config: Path) -> str:
    assert MBSYNC is not None
    proc = await asyncio.create_subprocess_exec(
        MBSYNC, "-c", str(config), "-a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def _files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).glob("*"))


async def test_mbsync_both_ways(runtime: Runtime, tmp_path: Path) -> None:
    store = runtime.store
    first = make_message(to=BAL, subject="Premier")
    await store.deliver(first, "dr.martin@demo.mssante.fr", [BAL])
    await store.deliver(make_message(to=BAL, subject="Second"), "dr.martin@demo.mssante.fr", [BAL])
    inbox = await store.folder(BAL, "INBOX")
    await store.store_flags(inbox.id, [1], "add", ["\\Flagged"], actor="test")
    maildir = tmp_path / "mail"
    maildir.mkdir()
    async with running_server(store, tmp_path / "tls") as running:
        config = tmp_path / "mbsyncrc"
        config.write_text(_config(running, maildir))

        # 1. Far → near: both messages, byte for byte, with their flags.
        await _mbsync(config)
        files = _files(maildir / "INBOX")
        assert len(files) == 2
        # A Maildir keeps LF line ends, and mbsync adds its X-TUID tracking header.
        by_subject = {f.read_bytes().split(b"Subject: ")[1].split(b"\n")[0]: f for f in files}
        near = b"".join(
            line
            for line in by_subject[b"Premier"].read_bytes().splitlines(keepends=True)
            if not line.startswith(b"X-TUID: ")
        )
        assert near == first.replace(b"\r\n", b"\n")
        assert by_subject[b"Premier"].name.endswith(",F")
        assert (maildir / "Archive").is_dir()

        # 2. Near → far: a flag change, a deletion, a new message.
        seen = by_subject[b"Premier"]
        seen.rename(seen.with_name(seen.name + "S"))
        by_subject[b"Second"].unlink()
        (maildir / "INBOX" / "new" / "1700000000.local.host").write_bytes(make_message(subject="Local"))
        await _mbsync(config)
        rows = await store.messages(inbox.id)
        flags = {row.uid: row.flags for row in rows}
        assert set(flags) == {1, 3}  # 2 expunged, 3 appended
        assert set(flags[1]) == {"\\Flagged", "\\Seen"}
        assert b"Subject: Local" in await store.body(rows[-1].blob_id)

        # 3. Far → near again: a flag set on the server reaches the Maildir file name.
        await store.store_flags(inbox.id, [3], "add", ["\\Answered"], actor="test")
        await _mbsync(config)
        names = sorted(f.name for f in _files(maildir / "INBOX"))
        assert len(names) == 2
        assert any(name.endswith(",RS") or name.endswith(",R") for name in names), names
