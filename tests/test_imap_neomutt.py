"""neomutt reads a message from our server over TLS, driven by keystrokes pushed from its
configuration (a pseudo-terminal from ``script``, since neomutt has no headless mode).
Skipped when neomutt or script is absent (Debian packages ``neomutt``, ``bsdutils``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mssante.runtime import Runtime
from tests.helpers import NEOMUTT, SCRIPT, make_message, neomutt_pipe
from tests.imap_dialogues.harness import running_server

BAL = "alice@demo.mssante.fr"

pytestmark = pytest.mark.skipif(
    NEOMUTT is None or SCRIPT is None, reason="neomutt and script (util-linux) are needed"
)


async def test_neomutt_reads_a_message(runtime: Runtime, tmp_path: Path) -> None:
    message = make_message(to=BAL, subject="Lettre de liaison", body="Patient vu ce jour.\r\n")
    await runtime.store.deliver(message, "dr.martin@demo.mssante.fr", [BAL])
    async with running_server(runtime.store, tmp_path / "tls") as running:
        piped, screen = await asyncio.to_thread(
            neomutt_pipe,
            tmp_path,
            f"imaps://alice@localhost:{running.tls_port}/",
            str(running.tls.ca_file),
            'set imap_pass = "wonderland"',
        )
    assert piped is not None, f"neomutt did not pipe the message: {screen!r}"
    assert b"Subject: Lettre de liaison" in piped
    assert b"Patient vu ce jour." in piped
