"""The SQLite write turn: exclusive between processes, handed on at once, owner-only."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from mssante.db import make_engine
from mssante.store.writeturn import WriteTurn


def test_turn_exists_for_sqlite_files_only(tmp_path: Path) -> None:
    turn = WriteTurn.for_engine(make_engine(f"sqlite:///{tmp_path / 'mssante.db'}", writer=True))
    assert turn is not None and turn.path == tmp_path / "mssante.db-writer.lock"
    assert WriteTurn.for_engine(make_engine("sqlite://")) is None
    assert WriteTurn.for_engine(make_engine("postgresql+psycopg://u@127.0.0.1:1/x")) is None


def test_turn_is_exclusive_between_processes(tmp_path: Path) -> None:
    turn = WriteTurn(tmp_path / "db-writer.lock")
    with turn.held():  # opened in this process before the fork: the child must open its own
        pass
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # the other worker: holds the turn until told to let go
        try:
            with turn.held():
                os.write(ready_w, b"x")
                os.read(go_r, 1)
                time.sleep(0.2)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        os.write(go_w, b"x")
        asked = time.monotonic()
        with turn.held():
            waited = time.monotonic() - asked
    finally:
        os.waitpid(child, 0)
    # The child held the turn 0.2 s after being told to go: this process had to wait for it,
    # and got it as soon as the child let go (SQLite's busy handler would have slept on).
    assert 0.15 < waited < 1.0
    assert stat.S_IMODE(turn.path.stat().st_mode) & 0o077 == 0
    turn.close()
