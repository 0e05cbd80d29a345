"""The SQLite write turn: exclusive between processes, handed on at once, owner-only."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from mssante.db import make_engine
from mssante.writeturn import WriteTurn


def test_turn_exists_for_writers_of_sqlite_files_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mssante.db'}"
    turn = WriteTurn.of(make_engine(url, writer=True))
    assert turn is not None and turn.path == tmp_path / "mssante.db-writer.lock"
    assert WriteTurn.of(make_engine(url)) is None  # a reader takes no turn
    assert WriteTurn.of(make_engine("sqlite://", writer=True)) is None
    assert WriteTurn.of(make_engine("postgresql+psycopg://u@127.0.0.1:1/x", writer=True)) is None


def test_turn_excludes_threads_and_is_reentrant(tmp_path: Path) -> None:
    turn = WriteTurn(tmp_path / "db-writer.lock")
    order: list[str] = []
    with turn.held():
        with turn.held():  # a write inside a write keeps the turn
            other = threading.Thread(target=lambda: _take(turn, order))
            other.start()
            time.sleep(0.1)
            order.append("first")
        time.sleep(0.05)
        order.append("still first")  # the inner exit did not let the other thread in
    other.join()
    assert order == ["first", "still first", "other"]


def _take(turn: WriteTurn, order: list[str]) -> None:
    with turn.held():
        order.append("other")


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
