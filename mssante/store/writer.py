"""The single writer with group commit.

Every change to the store goes through one thread that owns the write connection. Jobs that
arrive while a transaction is being committed are gathered into the next one, each inside
its own savepoint, so one durable commit (one fsync) acknowledges many deliveries, and one
failing job rolls back alone. A caller's future resolves only after the commit returned:
what was acknowledged is on disk.

Jobs of one kind that can run as one (deliveries: a multi-row insert per table instead of a
dozen statements per message) carry a ``together`` function: the writer hands it all such
jobs of a batch at once, in one savepoint (none when they are the whole batch: the
transaction is theirs); should that fail (a mailbox over quota, a hook's write refused), the
savepoint (or the transaction) is rolled back and each job runs again alone in its own, so one
refusal still rolls back alone.

Small jobs that rarely fail (a flag change, an audit record, a \\Recent claim) are
:class:`Light`: they run one after the other in one savepoint per batch, or none when they
are the whole batch, rather than one each — a SAVEPOINT and a RELEASE are two round trips per
job on PostgreSQL, which under eight busy IMAP clients made up a third of the writer's time.
Should one fail, the batch runs again as above, each job alone in its savepoint (so a light
job must be one that can run twice: it keeps nothing of a rolled-back run).

A job with a ``prepare()`` method has it called by the writer thread before the transaction
(a small delivery's analysis and sealing: done here, it costs no thread of its own and no hop
back to the event loop); should it raise, that job alone fails.

With ``group_commit=False`` every job gets its own transaction (the baseline the benchmark
compares against).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from mssante import writeturn
from mssante.db import still_usable

log = logging.getLogger(__name__)

Job = Callable[[Session], Any]
# ``job.together(session, jobs)``: the results of several jobs of one kind, run as one.
Together = Callable[[Session, list[Any]], list[Any]]
AfterCommit = Callable[[list[Any]], None]
# Runs inside the transaction, after the jobs and before COMMIT, with their notes: what must
# commit (or roll back) with them, such as PostgreSQL's NOTIFY to the other nodes.
BeforeCommit = Callable[[Session, list[Any]], None]


class _LoopAnswer:
    """The answer to a job submitted from the event loop (``run``), given on that loop.

    A ``concurrent.futures.Future`` wrapped by ``asyncio.wrap_future`` answers through two
    futures, their locks and conditions and a copy of the state: at one SMTP session, a
    twelfth of the event loop's busy time went there (profile of issue 20). This gives the
    result to the awaiting loop with one ``call_soon_threadsafe``; the writer sees the
    methods of a ``Future`` that it uses.
    """

    __slots__ = ("_answered", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiter: asyncio.Future[Any] = loop.create_future()
        self._answered = False

    def set_running_or_notify_cancel(self) -> bool:
        # (a read of another thread's future: a job given up on just now still runs, and its
        # answer is dropped, as with a running concurrent future)
        return not self._waiter.cancelled()

    def done(self) -> bool:
        return self._answered

    def set_result(self, result: Any) -> None:
        self._answer(_give_result, result)

    def set_exception(self, error: BaseException) -> None:
        self._answer(_give_exception, error)

    def _answer(self, give: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        self._answered = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(give, self._waiter, value)


def _give_result(waiter: asyncio.Future[Any], result: Any) -> None:
    if not waiter.done():
        waiter.set_result(result)


def _give_exception(waiter: asyncio.Future[Any], error: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(error)


@dataclass
class _Item:
    job: Job
    future: Future[Any] | _LoopAnswer


def in_sequence(session: Session, jobs: list[Job]) -> list[Any]:
    """``together`` of light jobs: each in turn, in the one transaction (or savepoint)."""
    return [job(session) for job in jobs]


@dataclass(frozen=True)
class Light:
    """A job that may run with the other light jobs of its batch, without a savepoint of its own."""

    job: Job
    together: Together = in_sequence

    def __call__(self, session: Session) -> Any:
        return self.job(session)


class WriterClosed(Exception):
    """The writer was stopped; the job was not run."""


class _Regroup(Exception):
    """A batch run as one group failed: run it again, each job alone in its savepoint."""


class Notes(list[Any]):
    """What a job wants announced after the commit (change-feed entries)."""


class GroupCommitWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        group_commit: bool = True,
        max_batch: int = 256,
        after_commit: AfterCommit | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        self.engine = engine
        self.group_commit = group_commit
        self.max_batch = max_batch if group_commit else 1
        self._after_commit: list[AfterCommit] = [after_commit] if after_commit is not None else []
        self.before_commit = before_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        # The writer thread's own connection, kept from one batch to the next: no check-out
        # and reset each time (on PostgreSQL the reset is a ROLLBACK, a round trip per batch)
        # and SQLite keeps its page cache (a connection taken afresh from the pool read back
        # some twenty pages per delivery). Before each batch it is checked as the pool checks
        # at check-out (``db.still_usable``): one the server closed is replaced before any job
        # runs on it.
        self._connection: Connection | None = None
        # And one ORM session on it, kept too (emptied after each batch, see _commit).
        self._session: Session | None = None
        self.batches = 0
        self.jobs = 0
        self._thread = threading.Thread(target=self._run, name="mssante-writer", daemon=True)
        self._thread.start()

    def also_after_commit(self, listener: AfterCommit) -> None:
        """Another listener of committed notes (the change feed to sibling worker processes)."""
        self._after_commit.append(listener)

    # -- submitting -----------------------------------------------------------------------
    def submit(self, job: Job) -> Future[Any]:
        """Queue ``job(session) -> result``; a job may return ``(result, Notes)``."""
        fut: Future[Any] = Future()
        self._put(_Item(job, fut))
        return fut

    async def run(self, job: Job) -> Any:
        """``submit`` for a coroutine: the result once the job's transaction committed."""
        answer = _LoopAnswer(asyncio.get_running_loop())
        self._put(_Item(job, answer))
        return await answer._waiter

    def _put(self, item: _Item) -> None:
        if self._closed:
            raise WriterClosed("the store is shutting down")
        self._queue.put(item)

    def run_sync(self, job: Job) -> Any:
        return self.submit(job).result()

    def close(self) -> None:
        """Finish the queued jobs, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    # -- the writer thread ----------------------------------------------------------------
    def _take_batch(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
        return batch, stop

    def _kept(self) -> Connection:
        if self._connection is not None and not still_usable(self._connection):
            self._drop_connection()
        if self._connection is None:
            self._connection = self.engine.connect()
        return self._connection

    def _kept_session(self) -> Session:
        # (a connection is only ever replaced through _drop_connection, which drops the session)
        connection = self._kept()
        if self._session is None:
            self._session = Session(bind=connection, expire_on_commit=False)
        return self._session

    def _drop_connection(self) -> None:
        """After a failed batch, or a connection the server closed: the next batch starts on
        one from the pool."""
        self._session = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.close()
            except Exception:  # a broken connection: the pool discards it
                log.debug("writer connection closed with an error", exc_info=True)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_connection()

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take_batch(first)
            self._commit_batch(batch)
            # Let the jobs go now, not when the next one arrives: a delivery holds its message.
            del first, batch
            if stop:
                # Drain what arrived before close() and run it, then stop.
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        return
                    if item is not None:
                        self._commit_batch([item])

    def _commit_batch(self, batch: list[_Item]) -> None:
        # Counted before any caller hears back (they read the counters once answered).
        self.batches += 1
        self.jobs += len(batch)
        # (a caller that gave up before its job ran has nothing to do)
        running = _prepared([item for item in batch if item.future.set_running_or_notify_cancel()])
        if not running:
            return
        try:
            self._commit(running, as_one=True)
        except _Regroup:
            self._commit(running, as_one=False)

    def _commit(self, running: list[_Item], *, as_one: bool) -> None:
        """One transaction for the jobs, their futures answered after its commit.

        A batch that is one group of jobs run together (deliveries under load: the usual
        batch) runs without a savepoint, which costs as much CPU as a small delivery: should
        the group fail, the whole transaction is rolled back (``_Regroup``) and the batch runs
        again with ``as_one=False``, each job alone in its savepoint.
        """
        ok: list[tuple[_Item, Any]] = []
        failed: list[tuple[_Item, BaseException]] = []
        try:
            # (SQLite with several worker processes: the write lock passed on without sleeps)
            with writeturn.taken(self.engine), (session := self._kept_session()).begin():
                groups = _groups(running)
                for group in groups:
                    together: Together | None = getattr(group[0].job, "together", None)
                    if together is not None and len(group) > 1 and len(groups) == 1 and as_one:
                        try:
                            together_results = together(session, [item.job for item in group])
                        except Exception as exc:
                            raise _Regroup from exc
                        ok.extend(zip(group, together_results, strict=True))
                        continue
                    if together is not None and len(group) > 1 and len(groups) > 1:
                        shared = session.begin_nested()
                        try:
                            together_results = together(session, [item.job for item in group])
                        except Exception:
                            shared.rollback()  # each job again alone: a refusal stays its own
                        else:
                            shared.commit()
                            ok.extend(zip(group, together_results, strict=True))
                            continue
                    lone = len(running) == 1  # a lone job needs no savepoint: its failure rolls back all
                    for item in group:
                        savepoint = None if lone else session.begin_nested()
                        try:
                            result = item.job(session)
                        except Exception as exc:
                            if savepoint is None:
                                raise
                            savepoint.rollback()
                            failed.append((item, exc))
                            continue
                        if savepoint is not None:
                            savepoint.commit()
                        ok.append((item, result))
                if self.before_commit is not None:
                    self.before_commit(session, _notes_of(ok))
        except _Regroup:
            _forget_objects(session)
            raise
        except Exception as exc:
            # The commit (or the lone job) failed: nothing of this batch is durable.
            self._drop_connection()
            for item in running:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        _forget_objects(session)
        notes = _notes_of(ok)
        results = [(item, _result_of(result)) for item, result in ok]
        # Listeners hear of the change before its author hears "done" (IMAP: another session
        # must not run its next command without seeing what the first one already reported).
        for listener in self._after_commit if notes else ():
            try:
                listener(notes)
            except Exception:  # a listener must never break the writer
                log.exception("change-feed listener failed")
        for item, error in failed:
            item.future.set_exception(error)
        for item, result in results:
            item.future.set_result(result)


def _forget_objects(session: Session) -> None:
    """The kept session after a batch: no object a job loaded stays in it (nor in memory)."""
    if session.identity_map:
        session.expunge_all()


def _prepared(items: list[_Item]) -> list[_Item]:
    """The jobs whose ``prepare()`` (if any) went well; the others are answered with its error."""
    ready = []
    for item in items:
        prepare = getattr(item.job, "prepare", None)
        if prepare is not None:
            try:
                prepare()
            except Exception as exc:
                item.future.set_exception(exc)
                continue
        ready.append(item)
    return ready


def _groups(items: list[_Item]) -> list[list[_Item]]:
    """Jobs that can run together gathered at the place of the first of them; others alone."""
    groups: list[list[_Item]] = []
    kinds: dict[Any, list[_Item]] = {}
    for item in items:
        kind = getattr(item.job, "together", None)
        if kind is None:
            groups.append([item])
        elif kind in kinds:
            kinds[kind].append(item)
        else:
            kinds[kind] = [item]
            groups.append(kinds[kind])
    return groups


def _has_notes(result: Any) -> bool:
    return isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Notes)


def _notes_of(ok: list[tuple[_Item, Any]]) -> list[Any]:
    return [note for _, result in ok if _has_notes(result) for note in result[1]]


def _result_of(result: Any) -> Any:
    return result[0] if _has_notes(result) else result
