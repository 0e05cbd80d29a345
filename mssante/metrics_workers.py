"""``/metrics`` and ``/health`` for the whole server when it runs several workers.

Worker 0 alone serves the web, but every worker counts SMTP transactions, logins, IMAP
commands. Two kinds of figures, two ways:

- Counters and histograms (:data:`mssante.metrics.EVENTS`) use prometheus_client's
  multiprocess mode: before forking, the supervisor wipes ``<data_dir>/worker-metrics`` and
  switches the value class to memory-mapped files there (``PROMETHEUS_MULTIPROC_DIR``). Each
  worker writes its counts to files named after its pid as it counts, and worker 0 sums every
  file at scrape time (``MultiProcessCollector``). A worker killed, even by SIGKILL, leaves its
  files (the kernel keeps the mapped pages), so the sum never goes backwards when a worker is
  started again: a counter resets only when the whole server starts again.
- What a worker *is* rather than what it counted (open SMTP and IMAP sessions, memory, CPU,
  descriptors, its garbage collector) lives only in that process, so worker 0 asks each sibling
  at scrape time over a Unix socket (Linux's abstract namespace, named after the supervisor as
  the sibling feed is; the peer must be the same user). Sessions are summed over the workers
  (same names and labels as a lone process: dashboards need no change); process metrics keep
  one series per worker, labelled ``worker``. A sibling that does not answer (starting again,
  or stuck) is shown by ``mssante_worker_up`` = 0 and by ``/health``.

A single process (``workers = 1``) uses none of this: its ``/metrics`` is its own registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from mssante import metrics
from mssante.lifecycle import READY
from mssante.listening import RunningListener

if TYPE_CHECKING:
    from mssante.config import Settings
    from mssante.runtime import Runtime, WorkerSlot

log = logging.getLogger(__name__)

ASK_TIMEOUT = 2.0  # per sibling: a scrape (Prometheus' default timeout 10 s) still answers
POLL_SECONDS = 0.5
_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


def directory(settings: Settings) -> Path:
    """Where the workers' counter files live (private, like the rest of the data directory)."""
    return settings.data_dir / "worker-metrics"


def share_counters(path: Path) -> None:
    """In the supervisor, before the first fork: the event metrics of every process forked from
    here count into files under ``path``, emptied first (counters restart with the server)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus_client picks its value class when imported, from that variable; the metrics
    # are defined by then, but each labelled series takes the class when first used.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for metric in metrics.EVENTS:
        metric.clear()  # none is used in the supervisor; should one be, it starts again in a file


def worker_gone(pid: int, path: Path) -> None:
    """A worker exited: its counter files stay (their counts are the server's); the files of
    gauges that only mean something while their process lives are removed."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _peer_is_us(sock: socket.socket) -> bool:
    _pid, uid, _gid = _CREDENTIALS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    )
    return bool(uid == os.getuid())


def address(group: str, index: int) -> bytes:
    """The abstract socket address where worker ``index`` of the server ``group`` answers."""
    return f"\0mssante-metrics-{group}-{index}".encode()


def _families(collected: Iterable[Metric]) -> list[list[Any]]:
    return [
        [
            family.name,
            family.documentation,
            family.type,
            family.unit,
            [[s.name, s.labels, s.value] for s in family.samples],
        ]
        for family in collected
    ]


def snapshot(runtime: Runtime) -> dict[str, Any]:
    """This worker as its siblings see it: whether it serves, its sessions and its resources."""
    return {
        "pid": os.getpid(),
        "ready": bool(runtime.extras.get(READY)),
        "sessions": _families(metrics.SESSIONS.collect()),
        "resources": _families(metrics.RESOURCES.collect()),
    }


def ask(group: str, index: int, timeout: float = ASK_TIMEOUT) -> dict[str, Any] | None:
    """Worker ``index``'s snapshot, or ``None`` when it does not answer (not serving)."""
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address(group, index))
            if not _peer_is_us(sock):
                log.warning("metrics socket of worker %d is held by another user", index)
                return None
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError:
            return None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


class _Responder:
    """Answers worker 0's questions in a thread (so a busy event loop still answers)."""

    def __init__(self, runtime: Runtime, slot: WorkerSlot) -> None:
        self.runtime = runtime
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(address(slot.group, slot.index))
        self._sock.listen(8)
        self._sock.settimeout(POLL_SECONDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mssante-metrics-peer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stop.is_set():
                    log.exception("metrics peer stopped")
                return
            with conn:
                try:
                    if _peer_is_us(conn):
                        conn.settimeout(ASK_TIMEOUT)
                        conn.sendall(json.dumps(snapshot(self.runtime)).encode())
                except Exception:  # one failed answer must not stop the next
                    log.exception("metrics snapshot not sent")


async def start_metrics_peer(runtime: Runtime) -> list[RunningListener]:
    """A worker after the first answers worker 0's scrapes (a lone process: nothing to do)."""
    slot = runtime.worker
    if slot is None or slot.count < 2 or slot.primary:
        return []
    responder = _Responder(runtime, slot)
    responder.start()

    async def close() -> None:
        import asyncio

        with contextlib.suppress(Exception):
            await asyncio.to_thread(responder.stop)

    return [RunningListener("metrics-peer", "unix", "", 0, "none", close, public=False)]


def snapshots(runtime: Runtime) -> dict[int, dict[str, Any] | None]:
    """Every worker's snapshot by index, this one's (worker 0) read directly."""
    slot = runtime.worker
    assert slot is not None
    return {
        index: snapshot(runtime) if index == slot.index else ask(slot.group, index)
        for index in range(slot.count)
    }


def health(runtime: Runtime) -> list[dict[str, Any]]:
    """``/health``'s view of the workers: each one's pid and whether it serves."""
    return [
        {
            "worker": index,
            "serving": bool(answer and answer["ready"]),
            "pid": answer["pid"] if answer else None,
        }
        for index, answer in snapshots(runtime).items()
    ]


def _summed(answers: Iterable[dict[str, Any]]) -> Iterator[Metric]:
    """The sessions gauges, added up over the workers."""
    families: dict[str, Metric] = {}
    totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for answer in answers:
        for name, documentation, kind, unit, samples in answer["sessions"]:
            families.setdefault(name, Metric(name, documentation, kind, unit))
            for sample, labels, value in samples:
                key = (name, sample, tuple(sorted(labels.items())))
                totals[key] = totals.get(key, 0.0) + value
    for (name, sample, labels), value in totals.items():
        families[name].add_sample(sample, dict(labels), value)
    yield from families.values()


def _per_worker(answers: dict[int, dict[str, Any]]) -> Iterator[Metric]:
    """The process metrics, one series per worker (label ``worker``)."""
    families: dict[str, Metric] = {}
    for index, answer in answers.items():
        for name, documentation, kind, unit, samples in answer["resources"]:
            family = families.setdefault(name, Metric(name, documentation, kind, unit))
            for sample, labels, value in samples:
                family.add_sample(sample, {**labels, "worker": str(index)}, value)
    yield from families.values()


class WorkersCollector(Collector):
    """What worker 0's scrape shows of the processes: every worker's counts and state."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.counts = MultiProcessCollector(None, str(directory(runtime.settings)))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        yield from self.counts.collect()  # type: ignore[no-untyped-call]
        answers = snapshots(self.runtime)
        live = {index: answer for index, answer in answers.items() if answer is not None}
        yield from _summed(live.values())
        yield from _per_worker(live)
        yield metrics.workers_up({index: answer is not None for index, answer in answers.items()})
