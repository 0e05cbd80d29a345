"""Scripted IMAP dialogues (tests/imap_dialogues/*.dialogue) played over real sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from mssante.runtime import Runtime
from tests.imap_dialogues.harness import DIALOGUES, run_dialogue, running_server

FILES = sorted(DIALOGUES.glob("*.dialogue"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_dialogue(path: Path, runtime: Runtime, tmp_path: Path) -> None:
    async with running_server(runtime.store, tmp_path / "tls") as running:
        await run_dialogue(running, path)
