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
the latest commit and no transaction stays open between reads.

A statement is then driven through libpq itself (psycopg's ``pgconn``), with psycopg's
adapters for the parameters and the rows: each read is one send, one wait for the socket and
one result. Issue 20: through the cursor, the same read cost twice as much in Python (a cursor
and a transformer per call, the connection's lock, a generator resumed through two waits,
each registering and removing the socket), ~120 µs against ~60 µs in all, which was a
quarter of a single-message FETCH. Statements are prepared on the server after
``prepare_threshold`` executions of the same text with the same parameter types, as psycopg
does (never when it is None: PgBouncer in transaction mode).

While the loop has nothing else to do, the answer is waited for by polling the socket
without sleeping, for at most :data:`BUSY_WAIT_S` (:class:`_BusyWait`); the poll also watches
the loop's own selector, so anything else for the loop (another session's bytes, a thread's
callback) ends it at once, and sessions overlap their round trips as before. Issue 20: a
single-message FETCH is one round trip after another, and on this machine a process that
sleeps until the server's answer wakes 50-75 µs after it arrived (measured: ``SELECT 1`` in
150 µs awaited on the loop, 150 µs in a sleeping ``poll``, 75 µs polled without sleeping), a
cost a SQLite read, a plain call, does not pay. The answer of a statement on a primary key
comes within the bound; a slower one is awaited on the loop past it.

A connection that fails (a server restart, a failover) is discarded and the statement tried
once more on a new one; a second failure is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from mssante.db import driver_connect_args
from mssante.sqlfast import numbered

# Connections per process for small reads: a round trip is ~100 µs and the loop does the
# rest, so a few are enough for any number of sessions (they queue for a connection).
ASYNC_READ_CONNECTIONS = 4
# Prepared statements per connection (the store sends a handful of texts; a bound all the same).
PREPARED_MAX = 64
_PSYCOPG_THRESHOLD = 5  # psycopg's prepare_threshold when the engine sets none
# The longest an answer is polled for without sleeping (a primary-key read's round trip is
# 60-100 µs here); the loop's timers are late by at most this.
BUSY_WAIT_S = 0.0003


class AsyncReads:
    """A handful of asynchronous connections, used one statement at a time."""

    def __init__(self, engine: Engine, size: int = ASYNC_READ_CONNECTIONS) -> None:
        self._cargs, cparams = driver_connect_args(engine)
        self._cparams = {**cparams, "autocommit": True}
        self._threshold: int | None = cparams.get("prepare_threshold", _PSYCOPG_THRESHOLD)
        self._size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Link] = []
        self._slots: asyncio.Semaphore | None = None

    def _bind(self) -> asyncio.Semaphore:
        """The pool belongs to the loop that uses it; another loop (a test's) starts afresh."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._slots is None:
            self._discard_all()
            self._loop, self._slots = loop, asyncio.Semaphore(self._size)
        return self._slots

    async def _connect(self) -> _Link:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(*self._cargs, **self._cparams)
        return _Link(conn, self._threshold)

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All rows of one statement (driver SQL with ``:name`` parameters), as tuples."""
        import psycopg

        async with self._bind():
            link = self._idle.pop() if self._idle else None
            for attempt in (1, 2):
                if link is None:
                    link = await self._connect()
                try:
                    rows = await link.rows(sql, params or {})
                except psycopg.OperationalError:
                    link.finish()
                    link = None
                    if attempt == 2:
                        raise
                    continue
                except BaseException:
                    # A statement error (or a cancellation mid-statement): the connection may
                    # be in any state, so it is not reused.
                    link.finish()
                    raise
                self._idle.append(link)
                return rows
        raise AssertionError("unreachable")

    def _discard_all(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            link.finish()

    def close(self) -> None:
        """Close the idle connections (those in use close when their statement ends)."""
        self._discard_all()
        self._loop = self._slots = None


class _Link:
    """One connection, its adapters (kept from one statement to the next) and what it has
    prepared: {(text, parameter types): statement name}, and how often each text ran.

    Its socket stays registered with the loop for as long as the connection lives, and a wait
    is a future that the loop's callback completes. Issue 20: registering and removing the
    socket at every wait (two ``epoll_ctl`` calls, a handle and the selector's bookkeeping) was
    a sixth of the Python cost of a small read."""

    def __init__(self, conn: Any, threshold: int | None) -> None:
        from psycopg import pq
        from psycopg.adapt import PyFormat, Transformer

        # (psycopg is imported here, not with the module: a SQLite-only install lacks it)
        self._binary, self._binary_rows = PyFormat.BINARY, pq.Format.BINARY
        self._answered = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
        self._conn = conn
        self._pgconn = conn.pgconn
        self._tx = Transformer(conn)
        self._threshold = threshold
        self._prepared: dict[tuple[str, tuple[int, ...]], bytes] = {}
        self._runs: dict[tuple[str, tuple[int, ...]], int] = {}
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = self._pgconn.socket
        self._waiter: asyncio.Future[None] | None = None
        self._loop.add_reader(self._fd, self._ready)
        self._busy_wait = _BusyWait.of(self._loop, self._fd, self._ready)

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Any]:
        query, names = numbered(sql)
        tx, pgconn = self._tx, self._pgconn
        values = tx.dump_sequence([params[n] for n in names], [self._binary] * len(names))
        key = (query, tuple(tx.types or ()))
        name = self._prepared.get(key) or await self._prepare(key)
        if name is None:
            pgconn.send_query_params(
                query.encode(), values, tx.types, tx.formats, result_format=self._binary_rows
            )
        else:
            pgconn.send_query_prepared(name, values, tx.formats, result_format=self._binary_rows)
        result = await self._result()
        tx.set_pgresult(result)
        return tx.load_rows(0, result.ntuples, tuple)

    async def _prepare(self, key: tuple[str, tuple[int, ...]]) -> bytes | None:
        """The statement's name once it has run ``threshold`` times unprepared (then prepared
        now), else None."""
        if self._threshold is None or len(self._prepared) >= PREPARED_MAX:
            return None
        runs = self._runs[key] = self._runs.get(key, 0) + 1
        if runs <= self._threshold:
            return None
        name = b"mssante_%d" % len(self._prepared)
        self._pgconn.send_prepare(name, key[0].encode(), key[1])
        await self._result()
        del self._runs[key]
        self._prepared[key] = name
        return name

    async def _result(self) -> Any:
        """The one result of the statement sent, once the server gave it (an error raised as
        psycopg raises it: a lost connection is an ``OperationalError``)."""
        from psycopg import errors

        pgconn = self._pgconn
        while pgconn.flush():  # the statement did not fit in the socket's buffer at once
            await self._wait(write=True)
            pgconn.consume_input()
        found = None
        busy_wait = self._busy_wait if self._busy_wait is not None and self._busy_wait.idle() else None
        while True:
            while pgconn.is_busy():
                if busy_wait is None or not busy_wait.answered():
                    busy_wait = None  # something else for the loop, or a slow answer
                    await self._wait()
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            if found is None:
                found = result
        if found is None or found.status not in self._answered:
            if found is None:
                raise errors.OperationalError(pgconn.get_error_message() or "no result")
            raise errors.error_from_result(found, encoding=self._conn.info.encoding)
        return found

    async def _wait(self, write: bool = False) -> None:
        """Until the socket can be read (or written, or read: libpq may need to read a notice
        to go on writing)."""
        if self._fd is None:  # the server had closed the connection while it was idle
            from psycopg import errors

            raise errors.OperationalError("the connection was closed by the server")
        waiter = self._waiter = self._loop.create_future()
        if write:
            self._loop.add_writer(self._fd, self._ready)
        try:
            await waiter
        finally:
            self._waiter = None
            if write:
                self._loop.remove_writer(self._fd)

    def _ready(self) -> None:
        """The loop's callback for the socket: wakes the wait under way, if any."""
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return
        # Nobody waits: the server spoke unasked (a notice, or its goodbye). Read it, or the
        # selector would call again at once; a connection that ended stops being watched, and
        # its next statement fails and is retried on a new one.
        try:
            self._pgconn.consume_input()
        except Exception:  # psycopg's OperationalError: the connection is gone
            self._forget_socket()

    def _forget_socket(self) -> None:
        if self._fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = self._busy_wait = None

    def finish(self) -> None:
        """Close the connection without awaiting (its socket is all there is to release). The
        socket leaves the loop first: a later connection may get the same descriptor."""
        self._forget_socket()
        with contextlib.suppress(Exception):  # already gone: nothing to release
            self._pgconn.finish()


class _BusyWait:
    """Polls one connection's socket without sleeping, while the loop has nothing else to do.

    Two descriptors are polled: the connection's socket, and the loop's selector (an epoll
    or kqueue descriptor is readable once any descriptor registered with the loop is ready,
    the loop's self-pipe included, which a thread's ``call_soon_threadsafe`` writes to). It
    needs the selector event loop's ``_ready`` queue and ``_selector``, stable since
    Python 3.4; another loop (uvloop) has neither, and its reads always sleep in the loop.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, selector_fd: int, own: Callable[[], None]
    ) -> None:
        self._ready_queue: deque[asyncio.Handle] = loop._ready  # type: ignore[attr-defined]
        self._fd, self._own = fd, own
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(selector_fd, select.POLLIN)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, fd: int | None, own: Callable[[], None]) -> _BusyWait | None:
        selector = getattr(loop, "_selector", None)
        if fd is None or selector is None or not hasattr(loop, "_ready"):
            return None
        try:
            selector_fd = selector.fileno()
        except (AttributeError, NotImplementedError, OSError):  # select(): no descriptor
            return None
        return cls(loop, fd, selector_fd, own)

    def idle(self) -> bool:
        """Whether no callback of the loop is waiting to run, but cancelled ones and the
        connection's own socket callback: the last part of the previous answer, read already
        by that statement, can leave one queued (it will find nothing to read)."""
        return all(
            handle.cancelled() or getattr(handle, "_callback", None) == self._own
            for handle in self._ready_queue
        )

    def answered(self) -> bool:
        """True once the socket can be read; False as soon as something else for the loop is
        ready, or after :data:`BUSY_WAIT_S`."""
        poll, deadline = self._poll.poll, time.perf_counter() + BUSY_WAIT_S
        while not (events := poll(0)):
            if time.perf_counter() > deadline:
                return False
        if any(fd == self._fd for fd, _ in events):
            return True
        # The selector alone: something else for the loop, or the answer itself arriving
        # between the two descriptors' checks (the socket is in the selector too). Once more:
        # after a ready selector, the socket is seen ready if it was the cause.
        return any(fd == self._fd for fd, _ in poll(0))
