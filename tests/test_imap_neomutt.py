"""neomutt reads a message from our server over TLS, driven by keystrokes pushed from its
configuration (a pseudo-terminal from ``script``, since neomutt has no headless mode).
Skipped when neomutt or script is absent (Debian packages ``neomutt``, ``bsdutils``)."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from pathlib import Path

import pytest

from mssante.runtime import Runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import running_server

BAL = "alice@demo.mssante.fr"
NEOMUTT, SCRIPT = shutil.which("neomutt"), shutil.which("script")

pytestmark = pytest.mark.skipif(
    NEOMUTT is None or SCRIPT is None, reason="neomutt and script (util-linux) are needed"
)


async def test_neomutt_reads_a_message(runtime: Runtime, tmp_path: Path) -> None:
    message = make_message(to=BAL, subject="Lettre de liaison", body="Patient vu ce jour.\r\n")
    await runtime.store.deliver(message, "dr.martin@demo.mssante.fr", [BAL])
    out = tmp_path / "piped.eml"
    async with running_server(runtime.store, tmp_path / "tls") as running:
        rc = tmp_path / "neomuttrc"
        rc.write_text(
            f"""
set folder = "imaps://alice@localhost:{running.tls_port}/"
set spoolfile = "+INBOX"
set imap_pass = "wonderland"
set ssl_ca_certificates_file = "{running.tls.ca_file}"
set ssl_force_tls = yes
set certificate_file = "{tmp_path / "certificates"}"
set header_cache = ""
set message_cachedir = ""
set mail_check = 0
set timeout = 5
set wait_key = no
set pipe_decode = no
push "<pipe-message>cat > {out}<enter><quit>"
"""
        )
        command = f"{NEOMUTT} -n -F {rc}"
        env = {**os.environ, "TERM": "xterm", "HOME": str(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            *(SCRIPT, "-qec", command, "/dev/null"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            screen, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            raise
    assert out.exists(), f"neomutt did not pipe the message ({shlex.quote(command)}): {screen[-2000:]!r}"
    piped = out.read_bytes()
    assert b"Subject: Lettre de liaison" in piped
    assert b"Patient vu ce jour." in piped
