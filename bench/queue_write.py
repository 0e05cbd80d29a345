"""What one durable queue write costs: a file per message (Postfix's way) against a row in a
SQLite WAL (``smtp.acknowledge = "queued"``'s way), on this machine's file system.

Usage:
    .venv/bin/python bench/queue_write.py [--messages 1500] [--size 10500] [--rounds 3]
                                          [--dir DIR] [--out FILE]

Each message is made durable before the next, as a session waiting for its ``250`` needs:

- ``file``: create ``<id>.partial``, write, ``fsync``, rename to ``<id>`` (what is answered),
  and later unlink it once delivered;
- ``sqlite``: ``BEGIN IMMEDIATE``, one insert, ``COMMIT`` (WAL, ``synchronous = FULL``: the
  WAL is synced), and the delivered rows deleted 25 at a time, as the delivery process does.

Both run in this process, alternated ``--rounds`` times (file, sqlite, file, sqlite…); each
figure is the median over the rounds (min–max) of wall time, user CPU and kernel CPU per
message, taken from ``getrusage``. ``--dir`` chooses the file system (default: a temporary
directory under ``/var/tmp``, on disk). It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit


def _usage() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime


def file_per_message(directory: Path, messages: int, data: bytes) -> None:
    for i in range(messages):
        partial = directory / f"{i}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, directory / str(i))
    for i in range(messages):
        os.unlink(directory / str(i))


def sqlite_rows(directory: Path, messages: int, data: bytes) -> None:
    db = sqlite3.connect(directory / "queue.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, sealed BLOB NOT NULL)")
        delivered: list[tuple[str]] = []
        for i in range(messages):
            entry = f"{time.time_ns():020d}-{i}"
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO entries VALUES (?, ?)", (entry, data))
            db.execute("COMMIT")
            delivered.append((entry,))
            if len(delivered) == 25:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM entries WHERE id = ?", delivered)
                db.execute("COMMIT")
                delivered.clear()
    finally:
        db.close()


def measure(
    way: Callable[[Path, int, bytes], None], directory: Path, messages: int, size: int
) -> dict[str, float]:
    data = os.urandom(size)
    start = _usage()
    way(directory, messages, data)
    end = _usage()
    return {
        "wall_ms_per_message": 1000 * (end[0] - start[0]) / messages,
        "user_ms_per_message": 1000 * (end[1] - start[1]) / messages,
        "kernel_ms_per_message": 1000 * (end[2] - start[2]) / messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--size", type=int, default=10500, help="bytes per message (a sealed 10 KiB message)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: under /var/tmp)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mssante-queue-write-", dir=args.dir or "/var/tmp"))
    ways = {"file": file_per_message, "sqlite": sqlite_rows}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    result: dict[str, Any] = {
        "benchmark": "queue_write",
        "messages": args.messages,
        "size": args.size,
        "rounds": args.rounds,
        "directory": str(base),
        "loadavg_before": os.getloadavg(),
    }
    try:
        for _ in range(args.rounds):
            for name, way in ways.items():
                target = base / name
                target.mkdir(exist_ok=True)
                runs[name].append(measure(way, target, args.messages, args.size))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for name, rows in runs.items():
        result[name] = {
            figure: {
                "median": round(statistics.median(r[figure] for r in rows), 3),
                "min": round(min(r[figure] for r in rows), 3),
                "max": round(max(r[figure] for r in rows), 3),
            }
            for figure in rows[0]
        }
        result[name]["runs"] = rows
    result["ratio_file_over_sqlite"] = {
        figure: round(result["file"][figure]["median"] / max(result["sqlite"][figure]["median"], 1e-6), 2)
        for figure in runs["file"][0]
    }
    result["loadavg_after"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
