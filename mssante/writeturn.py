"""Whose turn it is to write an SQLite database, handed from writer to writer without sleeping.

SQLite admits one writer at a time. A writer that finds the lock taken waits in SQLite's busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25 … ms between attempts: the lock is free again
long before the sleeper looks. With several worker processes (``server.workers``), each with
its own group-commit writer committing hundreds of times a second, their writers took turns
through those sleeps, and two workers delivered no faster than one. So a writer first takes
its turn (a lock between the threads of its process, then an ``flock`` on a file beside the
database, which the kernel passes to the next waiting process the instant the last one lets
go) and only then begins its ``BEGIN IMMEDIATE`` transaction; it lets go once the commit
returned. The store's writer and :func:`mssante.db.transaction` on a writer engine take it.
SQLite's own lock stays the guard: a write that does not take the turn (another program, a
session opened by hand) is still serialised by it, only with the busy handler's sleeps; and a
thread that waits too long for its process's turn goes on without it, to the same effect.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine

from mssante.datadir import FILE_MODE

# As long as SQLite's busy timeout (``mssante.db``): past it, the write would have failed anyway.
LOCAL_WAIT_SECONDS = 30.0

_TURNS: weakref.WeakKeyDictionary[Engine, WriteTurn] = weakref.WeakKeyDictionary()
_ALL: weakref.WeakSet[WriteTurn] = weakref.WeakSet()


class WriteTurn:
    """An exclusive turn among the writers of one SQLite file, in this process and others.

    Re-entrant within a thread (a write inside a write keeps the turn it has)."""

    _fd: int = -1  # opened at the first turn taken in this process

    def __init__(self, path: Path) -> None:
        self.path = path
        self._forget()
        _ALL.add(self)

    def _forget(self) -> None:
        # Also run in a forked child: the parent's threads, lock holders and descriptor are not
        # the child's (a descriptor shared through fork would share its flock with the parent).
        if self._fd >= 0:
            os.close(self._fd)  # the child's copy only: the parent's lock is left alone
        self._lock = threading.RLock()
        self._depth = 0
        self._fd = -1

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    @staticmethod
    def register(engine: Engine, database: Path) -> None:
        """Give a writer engine of the SQLite file ``database`` its turn."""
        _TURNS[engine] = WriteTurn(database.with_name(database.name + "-writer.lock"))

    @staticmethod
    def of(engine: Engine) -> WriteTurn | None:
        """The turn of a writer engine made by :func:`mssante.db.make_engine`, if it has one."""
        return _TURNS.get(engine)

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=LOCAL_WAIT_SECONDS):
            yield  # SQLite's busy handler decides, as without a turn
            return
        try:
            if self._depth == 0:
                if self._fd < 0:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()


def taken(engine: Engine) -> AbstractContextManager[None]:
    """The engine's turn held for one transaction; nothing to take for an engine without one
    (PostgreSQL, a reader, a database in memory)."""
    turn = _TURNS.get(engine)
    return turn.held() if turn is not None else nullcontext()


def _after_fork_in_child() -> None:
    for turn in list(_ALL):
        turn._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
