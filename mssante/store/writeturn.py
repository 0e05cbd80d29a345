"""Whose turn it is to write an SQLite database, handed from process to process without sleeping.

SQLite admits one writer at a time. A writer that finds the lock taken waits in SQLite's busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25 … ms between attempts: the lock is free again
long before the sleeper looks. With several worker processes (``server.workers``), each with
its own group-commit writer committing hundreds of times a second, their writers took turns
through those sleeps, and two workers delivered no faster than one. So each writer first takes
an ``flock`` on a file beside the database, which the kernel passes to the next waiter the
instant the last one lets go, and only then begins its ``BEGIN IMMEDIATE`` transaction; it
lets go once the commit returned. SQLite's own lock stays the guard: a writer that does not
take the turn (the command line, a login recording its time) is still serialised by it, only
with the busy handler's sleeps.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from mssante.datadir import FILE_MODE


class WriteTurn:
    """An exclusive turn among the processes writing one SQLite file (one holder per process:
    its store's writer thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._pid = 0

    @classmethod
    def for_engine(cls, engine: Engine) -> WriteTurn | None:
        """The turn of an SQLite file database; None for PostgreSQL or an in-memory database."""
        if engine.dialect.name != "sqlite":
            return None
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        db = Path(database)
        return cls(db.with_name(db.name + "-writer.lock"))

    def _descriptor(self) -> int:
        # A descriptor inherited through fork shares its lock with the parent's: each process
        # opens its own.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = self._descriptor()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, 0
