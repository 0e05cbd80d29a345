"""Idle IMAP sessions on a restarted server, several times over one filled store: the memory
figure of ``imaptest_stress.py --idle`` without the noise of the process's own history.

Usage:
    .venv/bin/python bench/idle_restarts.py [--store DIR] [--inbox-messages 20000]
                                            [--idle 1000] [--runs 3] [--out FILE]

The store (a demo data directory whose INBOX is filled once with ``--inbox-messages`` messages
over IMAP APPEND, as ``imaptest_stress.py`` fills it) is kept in ``--store`` and reused, whatever
``--inbox-messages`` says then: the JSON gives the count the store's INBOX holds. Each run
starts ``mssante serve --demo`` on a fresh copy of it, then measures what
``imaptest_stress.py`` measures (one session opens INBOX and logs out, then ``--idle`` TLS
sessions log in and SELECT INBOX, then all log out) with that benchmark's own functions. To
compare two versions of the code, run it on each checkout with the same ``--store``, in turns
(old, new, old, new…): the machine's load then hits both alike. SQLite only. Prints JSON; it
measures, it does not judge.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, loadavg
from bench._imap_servers import LOGIN, Ours
from bench.imaptest_stress import fill_inbox, idle_memory

KEPT = ("per_session_rss_kib", "rss_after_logout_vs_before", "rss_after_logout_vs_before_first_select")


def _database(root: Path) -> Path:
    return root / "ours" / "data" / "mssante.db"


def _url(root: Path) -> str:
    return f"sqlite:///{_database(root)}"


def inbox_count(store: Path) -> int:
    """The messages the store's INBOX holds (read-only: the store stays as filled)."""
    with sqlite3.connect(f"file:{_database(store)}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT count(*) FROM messages m JOIN folders f ON f.id = m.folder_id "
            "WHERE f.bal = ? AND f.name = 'INBOX'",
            (LOGIN,),
        ).fetchone()
    return int(row[0])


def fill(store: Path, messages: int) -> float:
    """A demo data directory whose INBOX holds ``messages`` messages; the seconds it took."""
    (store / "ours").mkdir(parents=True)
    server = Ours(store / "ours", _url(store))
    try:
        return fill_inbox(server.port, server.password, messages)
    finally:
        server.stop()


def one_run(store: Path, idle: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mssante-idle-") as tmp:
        root = Path(tmp) / "copy"
        shutil.copytree(store, root)
        server = Ours(root / "ours", _url(root))
        try:
            result = idle_memory(server.port, server.password, idle, server.pids)
            result["server_tracebacks"] = server.tracebacks()
            return result
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "mssante-idle-store")
    parser.add_argument("--inbox-messages", type=int, default=20000)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    result: dict[str, Any] = {
        "benchmark": "idle_restarts",
        "commit": commit,
        "python": platform.python_version(),
        "idle_sessions": args.idle,
        "store": str(args.store),
        "loadavg_before": loadavg(),
    }
    if not _database(args.store).exists():
        shutil.rmtree(args.store, ignore_errors=True)
        result["fill_seconds"] = round(fill(args.store, args.inbox_messages), 1)
    result["inbox_messages"] = inbox_count(args.store)
    runs = [one_run(args.store, args.idle) for _ in range(args.runs)]
    result["runs"] = runs
    result["median"] = {key: statistics.median(run[key] for run in runs) for key in KEPT}
    result["min_max"] = {key: [min(run[key] for run in runs), max(run[key] for run in runs)] for key in KEPT}
    result["loadavg_after"] = loadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
