"""Dovecot's imaptest in stress mode against our IMAPS listener and a throw-away Dovecot, like for like.

Usage (root, for Dovecot's users and apt-get):
    .venv/bin/python bench/imaptest_stress.py --imaptest /path/to/imaptest
        [--clients 10 50] [--seconds 60] [--mbox-messages 100] [--logins 200] [--idle 1000]
        [--inbox-messages 20000]
        [--pg-url postgresql+psycopg://...] [--no-dovecot] [--out FILE]

imaptest (github dovecot/imaptest, built against Debian's ``dovecot-dev``) is not packaged; give
its path. Both servers get the same conditions: implicit TLS on 127.0.0.1 with the same RSA
certificate (the demo's), the same login and the *same* argon2id hash (ours, copied into
Dovecot's passwd-file as ``{ARGON2ID}``), a verified-credential cache on both (ours by default,
Dovecot's ``auth_cache_size``), the same mbox that imaptest appends from, the same clients and
duration. Ours is ``mssante serve --demo`` in its own process (SQLite, or a fresh database on
``--pg-url``); Dovecot comes from Debian's ``dovecot-imapd`` (installed when missing) with its
config, state and Maildir in a temporary directory, high-performance login processes, stopped at
the end. The machine's own mail setup is never read or touched.

Measured, for each server: imaptest stress commands/s for each ``--clients`` count, with a login
per session and with ``logout=0``, and the errors it printed; login latency (new TLS connection
to tagged LOGIN OK) p50/p99 over ``--logins`` logins from 10 threads; the memory cost of
``--idle`` connections logged in with INBOX selected and left idle: growth of the serving
processes only (ours: the server process; Dovecot: its master and every child), as RSS and as
PSS (shared pages counted once, fairer to Dovecot's process per session), then again 5 s after
they all log out (and the share of the added RSS given back). "Before" is taken once one
session has opened the INBOX and logged out (the folder's own state, shared by every session
that selects it, exists then, as on a server whose mailbox has been read once: ours its
snapshot, Dovecot its index files); the RSS before that first SELECT is reported too, with the
ratio against it (``rss_after_logout_vs_before_first_select``). Ratios are ours/Dovecot for costs
and Dovecot/ours for rates (above 1: we are worse). Prints JSON; it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import make_url

from bench._common import client_context, database, emit, loadavg, memory_kib
from bench._imap_servers import LOGIN, Dovecot, Ours
from tests.helpers import make_message


def write_mbox(path: Path, messages: int) -> None:
    """The messages imaptest appends, the same file for both servers (sizes 2 to 11 KB)."""
    with path.open("wb") as out:
        for i in range(messages):
            body = make_message(subject=f"stress {i}", size=2000 + (i % 7) * 1500)
            out.write(b"From dr.martin@demo.mssante.fr Sat Dec  5 10:00:00 2026\r\n" + body + b"\r\n")


# -- imaptest ----------------------------------------------------------------------------------------
def run_imaptest(
    imaptest: str, port: int, password: str, mbox: Path, clients: int, seconds: int, logout: bool
) -> dict[str, Any]:
    args = [imaptest, "host=127.0.0.1", f"port={port}", "ssl=any-cert", f"user={LOGIN}", f"pass={password}",
            f"mbox={mbox}", f"clients={clients}", f"secs={seconds}"]  # fmt: skip
    if not logout:
        args.append("logout=0")
    env = {**os.environ, "LD_LIBRARY_PATH": "/usr/lib/dovecot"}
    done = subprocess.run(
        args, capture_output=True, text=True, errors="replace", env=env, timeout=seconds + 120
    )
    return parse_imaptest(done.stdout + done.stderr, seconds)


def parse_imaptest(output: str, seconds: int) -> dict[str, Any]:
    """Totals per command and commands/s from imaptest's last table; the mean of its per-interval
    login times; the error lines it printed (first few kept)."""
    lines = output.splitlines()
    totals: dict[str, int] = {}
    if "Totals:" in lines:
        at = lines.index("Totals:")
        names = lines[at + 1].split()
        counts = next(
            (ln.split() for ln in lines[at + 2 :] if re.fullmatch(r"[\d ]+", ln.strip() or "x")), []
        )
        totals = dict(zip(names, map(int, counts), strict=False))
    header = next((ln.split() for ln in lines if ln.startswith("Logi")), [])
    login_ms = [
        int(ln.split()[header.index("Logi")])
        for ln in lines
        if ln.endswith("ms/cmd avg") and "Logi" in header
    ]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    return {
        "commands": sum(totals.values()),
        "commands_per_s": round(sum(totals.values()) / seconds, 1),
        "totals": totals,
        "login_ms_avg_per_interval": round(statistics.mean(login_ms), 1) if login_ms else None,
        "errors": len(errors),
        "serverbug": sum("SERVERBUG" in ln for ln in errors),
        "first_errors": errors[:5],
    }


# -- logins and idle sessions ------------------------------------------------------------------------
def login_latency(port: int, password: str, logins: int, threads: int = 10) -> dict[str, Any]:
    """New TLS connection + LOGIN per sample; time from connect() to the tagged OK."""
    import imaplib

    context = client_context()
    samples: list[float] = []
    errors: list[str] = []
    todo = iter(range(logins))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if next(todo, None) is None:
                    return
            started = time.perf_counter()
            try:
                imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
                imap.login(LOGIN, password)
                elapsed = time.perf_counter() - started
                imap.logout()
                samples.append(elapsed)
            except Exception as exc:  # reported, not hidden
                errors.append(repr(exc))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    samples.sort()

    def pct(p: float) -> float | None:
        return round(samples[min(len(samples) - 1, int(p * len(samples)))] * 1000, 1) if samples else None

    return {"logins": len(samples), "threads": threads, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "errors": len(errors), "first_errors": errors[:3]}  # fmt: skip


async def _idle_sessions(port: int, password: str, count: int, pids: Any) -> dict[str, Any]:
    context = client_context()
    gate = asyncio.Semaphore(20)
    sessions: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def command(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, line: str
    ) -> None:
        writer.write(f"{tag} {line}\r\n".encode())
        while True:
            answer = await reader.readline()
            if not answer:
                raise ConnectionError("closed")
            if answer.startswith(tag.encode() + b" "):
                if not answer.startswith(tag.encode() + b" OK"):
                    raise RuntimeError(answer.decode(errors="replace").strip())
                return

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, limit=1 << 20)
                await reader.readline()
                await command(reader, writer, "a", f'LOGIN "{LOGIN}" "{password}"')
                await command(reader, writer, "b", "SELECT INBOX")
                sessions.append((reader, writer))
            except Exception as exc:
                errors.append(repr(exc))

    await asyncio.sleep(1)
    cold = memory_kib(pids())
    # The folder opened once, by one session (LOGIN, SELECT INBOX, LOGOUT): the server's state of
    # the folder (ours: its shared snapshot and the connection that read it; Dovecot: its index
    # and cache files) then exists before the figure, as it does once anyone has read the
    # mailbox. The sessions' memory is measured from there; the cold figure is kept beside it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, limit=1 << 20)
    await reader.readline()
    await command(reader, writer, "a", f'LOGIN "{LOGIN}" "{password}"')
    await command(reader, writer, "b", "SELECT INBOX")
    await command(reader, writer, "z", "LOGOUT")
    writer.close()
    await asyncio.sleep(3)  # past the server's give-back after closes (mssante.memory.TRIM_DELAY)
    before = memory_kib(pids())
    started = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(count)))
    opened_s = time.perf_counter() - started
    await asyncio.sleep(3)
    during = memory_kib(pids())

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await command(reader, writer, "z", "LOGOUT")
                writer.close()

    await asyncio.gather(*(close(r, w) for r, w in sessions))
    await asyncio.sleep(5)
    after = memory_kib(pids())
    n = max(1, len(sessions))
    added = during["rss_kib"] - before["rss_kib"]
    return {
        "sessions": len(sessions),
        "open_seconds": round(opened_s, 2),
        "before_first_select": cold,
        "first_select_rss_kib": before["rss_kib"] - cold["rss_kib"],
        "before": before,
        "idle": during,
        "after_logout": after,
        "per_session_rss_kib": round((during["rss_kib"] - before["rss_kib"]) / n, 1),
        "per_session_pss_kib": round((during["pss_kib"] - before["pss_kib"]) / n, 1),
        "rss_after_logout_vs_before": round(after["rss_kib"] / before["rss_kib"], 3)
        if before["rss_kib"]
        else None,
        # The same against the memory before the folder was first opened (the cold server).
        "rss_after_logout_vs_before_first_select": round(after["rss_kib"] / cold["rss_kib"], 3)
        if cold["rss_kib"]
        else None,
        # Of what the sessions added, the share given back once they logged out (1: all).
        "rss_given_back": round((during["rss_kib"] - after["rss_kib"]) / added, 3) if added > 0 else None,
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def idle_memory(port: int, password: str, count: int, pids: Any) -> dict[str, Any]:
    return asyncio.run(_idle_sessions(port, password, count, pids))


def fill_inbox(port: int, password: str, messages: int, threads: int = 4) -> float:
    """APPEND ``messages`` messages to INBOX over IMAP (the same path on both servers, each
    indexing as it goes), from ``threads`` connections; returns the seconds taken."""
    import imaplib

    context = client_context()
    todo = iter(range(messages))
    lock = threading.Lock()

    def worker() -> None:
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
        imap.login(LOGIN, password)
        while True:
            with lock:
                seq = next(todo, None)
            if seq is None:
                break
            imap.append("INBOX", None, None, make_message(subject=f"bulk {seq}", size=4000))
        imap.logout()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return round(time.perf_counter() - started, 1)


# -- main ----------------------------------------------------------------------------------------------
def _phase(fn: Any, *args: Any) -> Any:
    """One measurement; a failure is reported in the JSON and the others still run."""
    try:
        return fn(*args)
    except Exception as exc:
        return {"failed": repr(exc)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imaptest", default=os.environ.get("IMAPTEST", "imaptest"))
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50], help="none: no stress runs")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--mbox-messages", type=int, default=100)
    parser.add_argument("--logins", type=int, default=200, help="login latency samples (0: skip)")
    parser.add_argument(
        "--idle", type=int, default=1000, help="idle sessions for the memory figure (0: skip)"
    )
    parser.add_argument(
        "--inbox-messages",
        type=int,
        default=0,
        help="APPEND this many messages to INBOX before the idle sessions",
    )
    parser.add_argument("--pg-url", default="", help="our store on PostgreSQL (a database is created)")
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    imaptest = shutil.which(args.imaptest) or args.imaptest
    if not Path(imaptest).exists():
        raise SystemExit(f"imaptest not found at {args.imaptest!r}: build it and pass --imaptest PATH")
    result: dict[str, Any] = {
        "benchmark": "imaptest_stress",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "mbox_messages": args.mbox_messages,
        "inbox_messages_added_before_idle": args.inbox_messages,
        "transport": "implicit TLS (same RSA 2048 certificate), same argon2id hash, credential cache on both",
        "loadavg_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="mssante-imaptest-") as tmp:
        root = Path(tmp)
        mbox = root / "source.mbox"
        write_mbox(mbox, args.mbox_messages)
        (root / "ours").mkdir()
        with database(args.pg_url, root / "ours" / "data" / "mssante.db") as url:
            ours = Ours(root / "ours", url)
            dovecot = None
            try:
                result["mssante"] = {"store": make_url(url).get_backend_name(), "stress": {}}
                servers: list[tuple[str, Any]] = [("mssante", ours)]
                if not args.no_dovecot:
                    dovecot = Dovecot(root / "dovecot", ours)
                    result["dovecot"] = {"version": dovecot.version, "stress": {}}
                    servers.append(("dovecot", dovecot))
                for clients in args.clients:
                    for logout in (True, False):
                        key = f"{clients}_clients_{'with_logins' if logout else 'logout_0'}"
                        for name, server in servers:  # interleaved: ours, Dovecot, per setting
                            result[name]["stress"][key] = _phase(
                                run_imaptest, imaptest, server.port, server.password, mbox, clients,
                                args.seconds, logout,
                            )  # fmt: skip
                for name, server in servers:
                    if args.logins:
                        result[name]["login_latency"] = _phase(
                            login_latency, server.port, server.password, args.logins
                        )
                    if args.idle and args.inbox_messages:
                        result[name]["inbox_fill_s"] = _phase(
                            fill_inbox, server.port, server.password, args.inbox_messages
                        )
                    if args.idle:
                        result[name]["idle_sessions"] = _phase(
                            idle_memory, server.port, server.password, args.idle, server.pids
                        )
                result["mssante"]["server_tracebacks"] = ours.tracebacks()
            finally:
                if dovecot is not None:
                    dovecot.stop()
                ours.stop()
    if "dovecot" in result:
        ours_r, theirs = result["mssante"], result["dovecot"]

        def figure(side: dict[str, Any], *path: str) -> Any:
            for key in path:
                side = side.get(key) if isinstance(side, dict) else None  # type: ignore[assignment]
            return side

        ratios: dict[str, float | None] = {}
        for key in ours_r["stress"]:
            ratios[f"commands_per_s_{key}"] = _ratio(
                figure(theirs, "stress", key, "commands_per_s"),
                figure(ours_r, "stress", key, "commands_per_s"),
            )
        for p in ("p50_ms", "p99_ms"):
            ratios[f"login_{p}"] = _ratio(
                figure(ours_r, "login_latency", p), figure(theirs, "login_latency", p)
            )
        for m in ("per_session_rss_kib", "per_session_pss_kib"):
            ratios[f"idle_{m}"] = _ratio(
                figure(ours_r, "idle_sessions", m), figure(theirs, "idle_sessions", m)
            )
        # Our single process's RSS per session against Dovecot's PSS (its processes share pages):
        # the goal is at most 1.
        ratios["idle_ours_rss_vs_dovecot_pss_per_session"] = _ratio(
            figure(ours_r, "idle_sessions", "per_session_rss_kib"),
            figure(theirs, "idle_sessions", "per_session_pss_kib"),
        )
        result["ratios_ours_vs_dovecot"] = ratios
    result["loadavg_after"] = loadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
