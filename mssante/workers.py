"""``server.workers``: several processes serving one server's SMTP and IMAP ports.

One Python process uses one core at a time for its protocol work (the event loop and the
writer thread share one interpreter lock), while Postfix and Dovecot spread their sessions
over processes. With ``workers = N`` the process that ``mssante serve`` started becomes a
supervisor: it prepares everything that is done once (configuration, migrations, the demo
directory), forks N workers and then only watches them; it binds no port and opens no
database. Each worker opens its own runtime (engines, group-commit writer, caches) and binds
every SMTP and IMAP port with ``SO_REUSEPORT``, so the kernel spreads new connections over the
workers. What must be serial stays serial in the database: UIDs are reserved under the
folder's row lock (SQLite: the write lock every writer takes with ``BEGIN IMMEDIATE``), the
audit chain under its head row, login failures are counted in the database. Commits reach the
other workers' IMAP sessions by PostgreSQL's ``NOTIFY`` or, on SQLite, by the workers' own
datagrams (:mod:`mssante.store.siblingfeed`).

Worker 0 is the primary: it alone runs the web listener, the directory updates and the node's
identity. Every worker runs the outbound queue, under leases of its own name.

Ports configured as 0 (any free port, as tests do) are given a number first: the supervisor
binds one ``SO_REUSEPORT`` socket on each without listening (it takes no connection) and keeps
it, so that every worker binds that same number.

Stopping: SIGTERM or SIGINT to the supervisor is passed to every worker, each stops as a lone
server does (drains, commits what it acknowledged), and the supervisor returns once all have.
A worker that dies on its own is started again; one that dies before it served (a port
taken, a bad certificate) stops the whole server instead of failing in a loop.

Metrics: the workers count into files the supervisor empties when it starts, so worker 0's
``/metrics`` shows the whole server's counts, a restarted worker's included
(:mod:`mssante.metrics_workers`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mssante import metrics_workers
from mssante.config import Settings
from mssante.runtime import WorkerSlot

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0


def _reserve(host: str, port: int) -> tuple[int, socket.socket | None]:
    """``port``, or when it is 0 a free port held by a bound, non-listening socket."""
    if port != 0:
        return port, None
    info = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    holder = socket.socket(info[0], socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(info[4])
    return int(holder.getsockname()[1]), holder


def reserve_ports(settings: Settings) -> tuple[Settings, list[socket.socket]]:
    """The settings with every shared port (SMTP, IMAP) a number, and the sockets holding them."""
    holders: list[socket.socket] = []

    def numbered(section: Any, names: tuple[str, ...]) -> Any:
        update = {}
        for name in names:
            port, holder = _reserve(section.host, getattr(section, name))
            update[name] = port
            if holder is not None:
                holders.append(holder)
        return section.model_copy(update=update)

    smtp = numbered(settings.smtp, ("submission_port", "submissions_port", "relay_port"))
    imap = numbered(settings.imap, ("port", "tls_port"))
    return settings.model_copy(update={"smtp": smtp, "imap": imap}), holders


class Supervisor:
    """Forks the workers, passes the stop signals on, starts again a worker that died."""

    def __init__(
        self,
        count: int,
        serve: Callable[[WorkerSlot], None],
        metrics_dir: Path,
        roles: Mapping[int, str] | None = None,
    ) -> None:
        self.count = count
        self.serve = serve
        self.metrics_dir = metrics_dir
        self.roles = dict(roles or {})  # index -> what a worker that serves no port does
        self.group = str(os.getpid())
        self.children: dict[int, tuple[int, int]] = {}  # pid -> (worker index, its "serving" pipe)
        self.stopping = False
        self.failed = False

    def _name(self, index: int) -> str:
        """How the log names a worker: its index, and its role when it is not a serving one."""
        role = self.roles.get(index)
        return f"worker {index} ({role})" if role else f"worker {index}"

    def _spawn(self, index: int, holders: list[socket.socket]) -> None:
        heard, said = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # The supervisor's ends: this worker's pipe and (after a restart) its siblings'.
                for fd in (heard, *(pipe for _, pipe in self.children.values())):
                    os.close(fd)
                for holder in holders:
                    holder.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                self.serve(WorkerSlot(index, self.count, self.group, said))
            except BaseException:
                log.exception("%s failed", self._name(index))
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(said)
        os.set_blocking(heard, False)
        self.children[pid] = (index, heard)
        log.info("%s started (pid %d)", self._name(index), pid)

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self, holders: list[socket.socket]) -> int:
        """Serve until stopped; the exit status (1 when a worker could not start)."""
        metrics_workers.share_counters(self.metrics_dir)
        gc.freeze()  # what the supervisor built stays shared with the workers, page for page
        for index in range(self.count):
            self._spawn(index, holders)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, heard = self.children.pop(pid)
            metrics_workers.worker_gone(pid, self.metrics_dir)
            code = os.waitstatus_to_exitcode(status)
            try:
                served = os.read(heard, 1) == b"1"
            except BlockingIOError:
                served = False
            os.close(heard)
            if self.stopping:
                log.info("%s stopped (%s)", self._name(index), code)
                continue
            if not served:
                log.error("%s could not start (exit %s): stopping the server", self._name(index), code)
                self.failed = True
                self._stop(signal.SIGTERM, None)
                continue
            log.error("%s exited (%s); starting it again", self._name(index), code)
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._spawn(index, holders)
        for holder in holders:
            holder.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # the counts ended with the server
        return 1 if self.failed else 0


def run_workers(settings: Settings, serve: Callable[[Settings, WorkerSlot], None]) -> int:
    """Run ``settings.server.workers`` workers (and, with ``smtp.acknowledge = "queued"``, the
    queue's delivery process after them), each ``serve(settings, slot)``, until stopped."""
    settings, holders = reserve_ports(settings)
    # With smtp.acknowledge = "queued", one more worker: the queue's delivery process.
    queued = settings.smtp.acknowledge == "queued"
    roles = {settings.server.workers: "queue delivery"} if queued else {}
    supervisor = Supervisor(
        settings.server.workers + len(roles),
        lambda slot: serve(settings, slot),
        metrics_workers.directory(settings),
        roles,
    )
    return supervisor.run(holders)
