"""Small reads on PostgreSQL from the event loop itself: a few asynchronous connections.

A single-message FETCH on PostgreSQL is one statement of a few tens of microseconds on the
server; run in a reader thread, the hop to the thread and back (two thread wake-ups, the
loop's self-pipe) cost as much again as the round trip itself (measured: ~95 µs for
``SELECT 1`` awaited on the loop against ~130-210 µs through a thread on this machine). An
asynchronous connection sends the statement and lets the loop serve other sessions until the
answer arrives, with no thread in between.

The connections are psycopg's own (``AsyncConnection``), opened with the parameters the
engine's dialect derives from the URL (multi-host lists and ``target_session_attrs``
included, so they follow the primary as the pool does), in autocommit: each statement sees
the latest commit and no transaction stays open between reads. Statements are prepared on the
server after ``prepare_threshold`` executions (psycopg's automatic preparation).

A connection that fails (a server restart, a failover) is discarded and the statement tried
once more on a new one; a second failure is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import Engine

from mssante.db import driver_connect_args
from mssante.sqlfast import adapt

# Connections per process for small reads: a round trip is ~100 µs and the loop does the
# rest, so a few are enough for any number of sessions (they queue for a connection).
ASYNC_READ_CONNECTIONS = 4


class AsyncReads:
    """A handful of asynchronous connections, used one statement at a time."""

    def __init__(self, engine: Engine, size: int = ASYNC_READ_CONNECTIONS) -> None:
        self._cargs, cparams = driver_connect_args(engine)
        self._cparams = {**cparams, "autocommit": True}
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Any] = []
        self._slots: asyncio.Semaphore | None = None

    def _bind(self) -> asyncio.Semaphore:
        """The pool belongs to the loop that uses it; another loop (a test's) starts afresh."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._slots is None:
            self._discard_all()
            self._loop, self._slots = loop, asyncio.Semaphore(self._size)
        return self._slots

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(*self._cargs, **self._cparams)

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All rows of one statement (driver SQL with ``:name`` parameters), in binary."""
        import psycopg

        query = adapt(sql, "postgresql")
        async with self._bind():
            conn = self._idle.pop() if self._idle else None
            for attempt in (1, 2):
                if conn is None:
                    conn = await self._connect()
                try:
                    cursor = await conn.execute(query, params or {}, binary=True)
                    rows: list[Any] = await cursor.fetchall()
                except psycopg.OperationalError:
                    _finish(conn)
                    conn = None
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    # A statement error (or a cancellation mid-statement): the connection may
                    # be in any state, so it is not reused.
                    _finish(conn)
                    raise
                self._idle.append(conn)
                return rows
        raise AssertionError("unreachable")

    def _discard_all(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            _finish(conn)

    def close(self) -> None:
        """Close the idle connections (those in use close when their statement ends)."""
        self._discard_all()
        self._loop = self._slots = None


def _finish(conn: Any) -> None:
    """Close a connection without awaiting (its socket is all there is to release)."""
    with contextlib.suppress(Exception):  # already gone: nothing to release
        conn.pgconn.finish()
