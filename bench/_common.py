"""Helpers shared by the benchmark scripts: free ports, a process and its children, their memory
(RSS and PSS, so that a server of many processes is not over- or under-counted), the load
average, a throw-away PostgreSQL database, and Debian's Dovecot when an anchor needs it.

Only the serving processes are ever measured: the callers pass the server's process id, never
their own, so the clients' memory does not blur the figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_context() -> ssl.SSLContext:
    """TLS for a client of a server with a self-signed certificate (the same on both sides)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_kib(pids: list[int]) -> dict[str, int]:
    """Summed RSS and PSS (shared pages split between their users) of ``pids``."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss_kib": rss, "pss_kib": pss, "processes": len(pids)}


class PeakMemory:
    """The peak summed RSS and PSS of a process tree, sampled in a thread while it runs."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.25) -> None:
        self.pids, self.interval = pids, interval
        self.peak = memory_kib(pids())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        now = memory_kib(self.pids())
        self.peak = {key: max(self.peak[key], now[key]) for key in now}

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self._take()
        return self.peak


def loadavg() -> float:
    """The 1-minute load average: how busy the shared machine was around a measurement."""
    return round(os.getloadavg()[0], 2)


@contextlib.contextmanager
def database(pg_url: str, sqlite_path: Path) -> Iterator[str]:
    """The store's URL: SQLite at ``sqlite_path``, or a fresh database on the PostgreSQL server
    of ``pg_url``, dropped on exit."""
    if not pg_url:
        yield f"sqlite:///{sqlite_path}"
        return
    name = f"mssante_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def ensure_dovecot_imapd() -> str:
    """Debian's Dovecot binary, ``dovecot-imapd`` installed with apt-get when missing."""
    if not Path("/usr/lib/dovecot/imap").exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "dovecot-imapd"], check=True, env=env
        )
    return shutil.which("dovecot") or "/usr/sbin/dovecot"


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def emit(result: dict[str, Any], out: Path | None) -> None:
    """A benchmark's JSON: on standard output, and into ``out`` when given."""
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(text)
