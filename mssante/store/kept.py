"""Connections kept for the store's small reads: no session, no pool check-out, no transaction.

A single-message FETCH is a statement of a few microseconds; around it, an ORM session costs a
pool check-out, a BEGIN and a ROLLBACK (on PostgreSQL, two more round trips to the server).
Each thread that runs small reads keeps one connection of the engine instead, in autocommit:
every statement sees the latest commit, and no transaction stays open between reads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

from sqlalchemy import Engine

from mssante.sqlfast import adapt

# Rows per chunk of a streamed result (on PostgreSQL chunked rows need libpq 17 or later).
STREAM_ROWS = 2000


def _libpq_chunks() -> bool:
    try:
        import psycopg
    except ImportError:  # SQLite-only installation
        return False
    return psycopg.pq.version() >= 170000


_CHUNKED_ROWS = _libpq_chunks()


class Kept:
    """One pooled DBAPI connection held by one thread."""

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect.name
        self._proxied = engine.raw_connection()  # PRAGMAs and pre-ping done by the pool
        self._driver: Any = cast(Any, self._proxied.driver_connection)
        if not isinstance(self._driver, sqlite3.Connection):
            # sqlite3 opens no transaction for a SELECT; psycopg would, without autocommit.
            self._driver.autocommit = True

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All rows (fetched whole: no statement stays open)."""
        return fetch_all(self._driver, self.dialect, sql, params)

    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """The rows of a large result as they arrive, to be read to the end.

        PostgreSQL sends them in chunks of :data:`STREAM_ROWS` (libpq's chunked-rows mode, with
        no extra round trip, unlike a server-side cursor's FETCHes): the caller turns each
        chunk into its own values while the next is on its way, and the whole result never
        sits twice in memory, as rows and as what they became. SQLite steps the same
        statement :data:`STREAM_ROWS` rows at a time, for the same reason (issue 20: the first
        SELECT of a 20,000-message folder held all its rows as tuples at once, some 6 MB of
        small objects whose allocator arenas stayed after them); its cursor is closed when the
        iteration ends or is abandoned, so no statement stays open past the read."""
        if self.dialect == "sqlite":
            cursor = self._driver.execute(sql, params or {})
            try:
                while batch := cursor.fetchmany(STREAM_ROWS):
                    yield from batch
            finally:
                cursor.close()
            return
        if not _CHUNKED_ROWS:
            yield from self.rows(sql, params)
            return
        cursor = self._driver.cursor()
        yield from cursor.stream(adapt(sql, self.dialect), params or {}, binary=True, size=STREAM_ROWS)

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[None]:
        """Statements sent by :meth:`send` go at once, without waiting for the previous answer
        (libpq's pipeline mode on PostgreSQL; nothing to do on SQLite, where a read is a call).
        Any statement may run meanwhile: answers come back in the order sent."""
        if self.dialect == "sqlite":
            yield
            return
        with self._driver.pipeline():
            yield

    def send(self, sql: str, params: dict[str, Any] | None = None) -> Callable[[], list[Any]]:
        """Send a statement now; the returned function gives its rows, waiting for them if
        they have not arrived. In a :meth:`pipeline`, the server works on it meanwhile."""
        if self.dialect == "sqlite":
            rows = self.rows(sql, params)
            return lambda: rows
        cursor = self._driver.cursor(binary=True)
        cursor.execute(adapt(sql, self.dialect), params or {})
        return cursor.fetchall  # type: ignore[no-any-return]

    def release(self) -> None:
        """Back to the pool as it came (no autocommit), or closed if it is broken."""
        try:
            if not isinstance(self._driver, sqlite3.Connection):
                self._driver.autocommit = False
            self._proxied.close()
        except Exception:
            self._proxied.invalidate()


def fetch_all(driver: Any, dialect: str, sql: str, params: dict[str, Any] | None) -> list[Any]:
    """All rows of driver SQL on a DBAPI connection; PostgreSQL sends them in binary (sealed
    chunks as bytes, not as hexadecimal text twice their size)."""
    if dialect == "postgresql":
        return driver.execute(adapt(sql, dialect), params or {}, binary=True).fetchall()  # type: ignore[no-any-return]
    return driver.execute(sql, params or {}).fetchall()  # type: ignore[no-any-return]


class KeptConnections:
    """The kept connection of each thread that reads, for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lost: type[Exception] = engine.dialect.loaded_dbapi.OperationalError
        self._local = threading.local()
        self._all: list[Kept] = []
        self._lock = threading.Lock()

    def get(self) -> Kept:
        kept: Kept | None = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = Kept(self.engine)
            with self._lock:
                self._all.append(kept)
        return kept

    def drop(self) -> None:
        """Give up this thread's connection (it failed: a server restart, say)."""
        kept: Kept | None = getattr(self._local, "kept", None)
        if kept is not None:
            self._local.kept = None
            with self._lock:
                self._all.remove(kept)
            kept.release()

    def close(self) -> None:
        with self._lock:
            kept, self._all = self._all, []
        for k in kept:
            k.release()
        self._local = threading.local()
