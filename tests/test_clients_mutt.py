"""Delegates in Debian's mbsync and neomutt against the demo server over TLS.

- mbsync, configured with ``<BAL>*<login>`` for Dr MARTIN's BAL: syncs its INBOX, Sent and Trash;
  the secretary moves the message to Trash and files her reply into Sent in the local Maildir,
  and the next sync carries both to the BAL.
- neomutt, with the plain login of a secretary of one doctor: opens on that doctor's INBOX (it
  used to open on "(no mailbox)") and reads the message.

Skipped when the tools are absent (Debian packages ``isync``, ``neomutt``, ``bsdutils``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients_setup import (
    DURAND,
    MARTIN,
    check_reply,
    deliver,
    headers,
    letter,
    revoke_grants,
    smtp,
    staff,
)
from tests.demo_server import DemoServer
from tests.helpers import NEOMUTT, SCRIPT, neomutt_pipe


@pytest.fixture(scope="module", autouse=True)
def _grants_revoked_after(demo: DemoServer) -> Iterator[None]:
    yield
    revoke_grants(demo)


MBSYNC = shutil.which("mbsync")


def _files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).glob("*"))


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (Debian package isync) is not installed")
def test_mbsync_with_bal_star_login(demo: DemoServer, tmp_path: Path) -> None:
    secretary = staff(demo, "secretariat", {MARTIN: "lrswite send"})
    subject = f"Bilan sanguin {uuid.uuid4().hex[:8]}"
    deliver(demo, MARTIN, subject)
    maildir = tmp_path / "mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""
IMAPAccount martin
Host localhost
Port {demo.port("imaps")}
User {secretary.as_delegate(MARTIN)}
Pass {secretary.password}
SSLType IMAPS
CertificateFile {demo.ca_cert}
AuthMechs LOGIN

IMAPStore far
Account martin

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :far:
Near :near:
Patterns INBOX Sent Trash
Create Near
Expunge Both
SyncState *
""")

    def mbsync() -> None:
        assert MBSYNC is not None
        done = subprocess.run([MBSYNC, "-c", str(config), "-a"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    mbsync()
    [original] = [p for p in _files(maildir / "INBOX") if headers(p.read_bytes())["Subject"] == subject]
    assert (maildir / "Sent").is_dir() and (maildir / "Trash").is_dir()
    # She answers (SMTP with the same user name), keeps the reply in Sent, and bins the original.
    reply = letter(MARTIN, DURAND, f"Re: {subject}", "Transmis au Dr MARTIN.\n")
    with smtp(demo, secretary.as_delegate(MARTIN), secretary.password) as client:
        client.send_message(reply)
    (maildir / "Sent" / "cur" / f"reply.{uuid.uuid4().hex}:2,S").write_bytes(reply.as_bytes())
    # A move between Maildir folders: the file loses the UID mbsync gave it in the old folder.
    original.rename(maildir / "Trash" / "cur" / re.sub(r",U=\d+", "", original.name))
    mbsync()
    check_reply(demo, MARTIN, secretary, subject)


@pytest.mark.skipif(NEOMUTT is None or SCRIPT is None, reason="neomutt and script (util-linux) are needed")
def test_neomutt_plain_login_of_a_one_doctor_secretary_opens_his_inbox(
    demo: DemoServer, tmp_path: Path
) -> None:
    secretary = staff(demo, "secretariat", {MARTIN: "lrswite send"})  # her only BAL
    subject = f"Lettre de liaison {uuid.uuid4().hex[:8]}"
    deliver(demo, MARTIN, subject, "Patient vu ce jour, à revoir dans un mois.\n")
    piped, screen = neomutt_pipe(
        tmp_path,
        f"imaps://localhost:{demo.port('imaps')}/",
        demo.ca_cert,
        f'set imap_user = "{secretary.login}"',
        f'set imap_pass = "{secretary.password}"',
        "set sort = reverse-date-received",
        select=f"<limit>~s '{subject}'<enter>",
    )
    assert piped is not None, f"neomutt did not pipe the message: {screen!r}"
    assert headers(piped)["Subject"] == subject
