"""IMAP operations on 1k, 10k and 50k-message folders: our server against Dovecot, interleaved.

Usage (root, for Dovecot's users and apt-get):
    .venv/bin/python bench/imap_ops.py [--sizes 1000 10000 50000] [--rounds 3] [--repeat 3]
        [--size 10240] [--fetches 200] [--clients 8] [--processes 4] [--seconds 10]
        [--fill-connections 4] [--append-batch 100] [--pg-url postgresql+psycopg://...]
        [--pg-against-sqlite] [--out FILE]

The servers are started alike by ``bench/_imap_servers.py``: ours is ``mssante serve --demo``
(SQLite, or a fresh database on the PostgreSQL server of ``--pg-url``, dropped at the end);
Dovecot comes from Debian's ``dovecot-imapd`` with its Maildir in a temporary directory. Same
certificate, same login and password hash, implicit TLS on 127.0.0.1.

With ``--pg-against-sqlite`` the two servers are ours on PostgreSQL (``--pg-url``) and ours on
SQLite, each in its own process and data directory, filled, warmed and measured exactly as
above and interleaved the same way (PostgreSQL, SQLite, PostgreSQL...), so that the ratio of the
two stores is taken at the same moment of a shared machine rather than from runs minutes apart.

Filling: both servers get the *same* deterministic messages (``--size`` bytes, unique
Message-ID, two in three ``\\Seen``, one with a rare word) through the *same* path: IMAP
MULTIAPPEND into a folder ``Bench``, ``--append-batch`` messages per command, from
``--fill-connections`` connections, non-synchronising literals where the server advertises
LITERAL+ (both do), synchronising ones otherwise. Each server indexes as it appends.
The folder grows from one level to the next (1k, then 9k more, then 40k more); the fill time
and rate of each step are in the JSON.

Warm: after each fill, each server gets one untimed session that SELECTs the folder and
``FETCH 1:* (FLAGS ENVELOPE)``, so that Dovecot's index and cache hold what the timed commands
read (and ours gets the same). Figures are measured warm, on both. With ``--pg-url``, the
database then gets the upkeep PostgreSQL's autovacuum and checkpointer would give it within
the minute after such a bulk load (``VACUUM ANALYZE`` and ``CHECKPOINT``, timed in the JSON as
``pg_upkeep_s``): without it the timed rounds met plans made with no statistics and shared the
two cores with that upkeep (SQLite has none; Dovecot's index is warm). The JSON also records
the PostgreSQL server's version and memory settings (``settings``): with a ``shared_buffers``
smaller than the store, a fetch reads part of its pages through the kernel's cache.

Each level then runs ``--rounds`` rounds, interleaved: ours, Dovecot, ours, Dovecot... In a
round, on one new connection: the first SELECT of the session, then ``--repeat`` times each of
SELECT again, ``UID FETCH 1:* (FLAGS)``, ``FETCH 1:* (ENVELOPE)``, ``UID SEARCH TEXT <rare
word>`` (a body scan) and ``UID SEARCH SUBJECT`` (a header match, 1 in 32); then ``--fetches``
random single-message ``BODY.PEEK[]`` (a rate); then the mixed workload: ``--clients`` clients
spread over ``--processes`` client processes (so the clients are not held by one Python
process's GIL), each with its own connection and the folder selected, for ``--seconds``: 50 %
BODY.PEEK[] of one message, 20 % FLAGS ENVELOPE of 51 messages, 20 % STORE +FLAGS, 10 % NOOP.
The client is a minimal one (reads to the tagged line, skips literals by length) so that its
cost stays small and the same for both servers.

Reported per level and server: each figure's median, min and max over all its samples (rounds x
repeat); ratio = ours / Dovecot on medians, with the direction that is better (``↓`` times,
``↑`` rates); memory of the serving processes only (ours: the server and its children;
Dovecot: its master and every child; not PostgreSQL's own processes with ``--pg-url``, nor the
page cache), as RSS and PSS from /proc/PID/smaps_rollup: growth
against the idle server before any fill, at its peak during the rounds (sampled every 0.25 s)
and after the level's sessions logged out; the 1-minute load average before and after each level
and the whole run. Prints JSON (and ``--out FILE``), and a summary table on stderr. It
measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from bench._common import PeakMemory, client_context, database, loadavg, memory_kib
from bench._imap_servers import LOGIN, Dovecot, Ours

FOLDER = "Bench"
RARE = "zygomorphique"
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")
_FILLER = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod.\r\n"
_DATE = formatdate(1_780_000_000)


def message(seq: int, size: int, rare_at: int) -> bytes:
    """Message ``seq`` of the folder, the same bytes for both servers."""
    head = (
        f"From: dr.martin@demo.mssante.fr\r\nTo: {LOGIN}\r\n"
        f"Subject: Compte rendu {seq} lot {seq % 32:02d}\r\nDate: {_DATE}\r\n"
        f"Message-ID: <{seq}.imap-ops@demo.mssante.fr>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Bonjour,\r\nvoici le compte rendu {seq}{' ' + RARE if seq == rare_at else ''}.\r\n"
    ).encode()
    pad = max(0, size - len(head))
    return head + (_FILLER * (pad // len(_FILLER) + 1))[:pad]


def _flags(seq: int) -> str:
    return "" if seq % 3 == 0 else " (\\Seen)"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- a minimal client -----------------------------------------------------------------------------
class Client:
    """One IMAP connection over TLS, logged in. :meth:`run` sends a command and reads to its
    tagged answer, skipping literals by length; it returns the untagged responses' first lines."""

    def __init__(self, port: int, password: str) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        self.tls = client_context().wrap_socket(sock)
        self.file = self.tls.makefile("rb")
        self.count = 0
        self.file.readline()
        self.run(f"LOGIN {_quote(LOGIN)} {_quote(password)}")

    def run(self, command: str) -> list[bytes]:
        self.count += 1
        tag = b"c%d " % self.count
        self.tls.sendall(tag + command.encode() + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"closed during {command!r}")
            first = line
            while found := _LITERAL.search(line):
                self.file.read(int(found[1]))
                line = self.file.readline()
            if first.startswith(b"* "):
                untagged.append(first)
            elif first.startswith(tag):
                if first[len(tag) :].startswith(b"OK"):
                    return untagged
                raise RuntimeError(f"{command!r}: {first.decode(errors='replace').strip()}")

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            self.run("LOGOUT")
        self.tls.close()


# -- filling -----------------------------------------------------------------------------------
async def _append_batches(
    port: int, password: str, batches: Iterator[range], size: int, rare_at: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(), limit=1 << 22)
    count = 0

    async def tagged(tag: bytes) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed during the fill")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace").strip())
                return lines
            lines.append(line)

    async def simple(command: str) -> list[bytes]:
        nonlocal count
        count += 1
        writer.write(b"f%d %s\r\n" % (count, command.encode()))
        return await tagged(b"f%d" % count)

    await reader.readline()
    await simple(f"LOGIN {_quote(LOGIN)} {_quote(password)}")
    plus = any(b"LITERAL+" in line for line in await simple("CAPABILITY"))
    for batch in batches:
        count += 1
        tag = b"f%d" % count
        head = tag + f" APPEND {FOLDER}".encode()
        for seq in batch:
            data = message(seq, size, rare_at)
            writer.write(head + f"{_flags(seq)} {{{len(data)}{'+' if plus else ''}}}\r\n".encode())
            if not plus:
                await writer.drain()
                line = await reader.readline()
                if not line.startswith(b"+"):
                    raise RuntimeError(f"APPEND refused: {line!r}")
            writer.write(data)
            head = b""
        writer.write(b"\r\n")
        await writer.drain()
        await tagged(tag)
    await simple("LOGOUT")
    writer.close()


def fill(
    port: int, password: str, start: int, stop: int, args: argparse.Namespace, rare_at: int
) -> dict[str, Any]:
    """APPEND messages ``start`` to ``stop - 1``; the seconds taken and the rate."""
    if start == 0:
        creator = Client(port, password)
        creator.run(f"CREATE {FOLDER}")
        creator.close()
    batches = iter(
        [range(i, min(i + args.append_batch, stop)) for i in range(start, stop, args.append_batch)]
    )

    async def all_connections() -> None:
        await asyncio.gather(
            *(
                _append_batches(port, password, batches, args.size, rare_at)
                for _ in range(args.fill_connections)
            )
        )

    started = time.perf_counter()
    asyncio.run(all_connections())
    seconds = time.perf_counter() - started
    return {"messages_added": stop - start, "seconds": round(seconds, 2),
            "messages_per_s": round((stop - start) / seconds, 1)}  # fmt: skip


PG_SETTINGS = ("server_version", "shared_buffers", "effective_cache_size", "work_mem", "jit")


def warm_up(port: int, password: str) -> float:
    """The untimed session both servers get before a level's timed rounds (its length is kept)."""
    started = time.perf_counter()
    client = Client(port, password)
    client.run(f"SELECT {FOLDER}")
    client.run("FETCH 1:* (FLAGS ENVELOPE)")
    client.close()
    return round(time.perf_counter() - started, 2)


def pg_settings(url: str) -> dict[str, str]:
    """The PostgreSQL server's version and the settings its read figures depend on (a
    ``shared_buffers`` smaller than the store makes fetches read through the kernel's cache)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {name: str(conn.execute(text(f"SHOW {name}")).scalar()) for name in PG_SETTINGS}
    engine.dispose()
    return found


def pg_upkeep(url: str) -> float:
    """What autovacuum and the checkpointer do within a minute of a bulk load, done now."""
    started = time.perf_counter()
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))
        with contextlib.suppress(DBAPIError):  # CHECKPOINT needs pg_checkpoint (or superuser)
            conn.execute(text("CHECKPOINT"))
    engine.dispose()
    return round(time.perf_counter() - started, 2)


# -- the timed rounds ----------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def single_connection(
    port: int, password: str, messages: int, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One round's samples on one new connection, and the search hits (a check that both servers
    hold the same messages)."""
    client = Client(port, password)
    samples: dict[str, list[float]] = {"select_first_s": [_timed(lambda: client.run(f"SELECT {FOLDER}"))]}
    hits: dict[str, int] = {}
    commands = {
        "select_repeat_s": f"SELECT {FOLDER}",
        "uid_fetch_flags_s": "UID FETCH 1:* (FLAGS)",
        "fetch_envelope_s": "FETCH 1:* (ENVELOPE)",
        "search_text_rare_s": f"UID SEARCH TEXT {RARE}",
        "search_subject_s": 'UID SEARCH SUBJECT "lot 07"',
    }
    for key, command in commands.items():
        samples[key] = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            answer = client.run(command)
            samples[key].append(time.perf_counter() - started)
        if key.startswith("search"):
            hits[key.removesuffix("_s")] = sum(
                len(line.split()) - 2 for line in answer if line.startswith(b"* SEARCH")
            )
    rng = random.Random(seed)
    numbers = [rng.randint(1, messages) for _ in range(args.fetches)]
    elapsed = _timed(lambda: [client.run(f"FETCH {n} (BODY.PEEK[])") for n in numbers])
    samples["body_fetches_per_s"] = [args.fetches / elapsed]
    client.close()
    return {"samples": samples, "hits": hits}


def _mixed_client(
    port: int, password: str, messages: int, seconds: float, seed: int, barrier: Any, results: Any
) -> None:
    ops, elapsed, error = 0, 0.0, None
    try:
        client = Client(port, password)
        client.run(f"SELECT {FOLDER}")
        rng = random.Random(seed)
        barrier.wait(timeout=300)
        started = time.perf_counter()
        stop = started + seconds
        while time.perf_counter() < stop:
            n = rng.randint(1, messages)
            choice = rng.random()
            if choice < 0.5:
                client.run(f"FETCH {n} (BODY.PEEK[])")
            elif choice < 0.7:
                client.run(f"FETCH {n}:{min(n + 50, messages)} (FLAGS ENVELOPE)")
            elif choice < 0.9:
                flag = rng.choice(["\\Flagged", "\\Seen"])
                client.run(f"STORE {n} +FLAGS ({flag})")
            else:
                client.run("NOOP")
            ops += 1
        elapsed = time.perf_counter() - started
        client.close()
    except Exception as exc:  # reported in the JSON, not hidden
        error = repr(exc)
        barrier.abort()
    results.put((ops, elapsed, error))


def _mixed_process(
    port: int, password: str, messages: int, seconds: float, seeds: list[int], barrier: Any, results: Any
) -> None:
    threads = [
        threading.Thread(
            target=_mixed_client, args=(port, password, messages, seconds, seed, barrier, results)
        )
        for seed in seeds
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def mixed(port: int, password: str, messages: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Operations per second of ``--clients`` clients in ``--processes`` processes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(args.clients + 1)
    results = context.Queue()
    seeds = [seed * 1000 + i for i in range(args.clients)]
    processes = [
        context.Process(
            target=_mixed_process,
            args=(port, password, messages, args.seconds, seeds[i :: args.processes], barrier, results),
        )
        for i in range(min(args.processes, args.clients))
    ]
    for p in processes:
        p.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=300)
    done = [results.get(timeout=args.seconds + 300) for _ in range(args.clients)]
    for p in processes:
        p.join()
    errors = [error for _, _, error in done if error]
    return {"ops_per_s": sum(ops / elapsed for ops, elapsed, _ in done if elapsed), "errors": errors[:3]}


# -- the run -------------------------------------------------------------------------------------
def _summary(key: str, values: list[float]) -> dict[str, Any]:
    digits = 1 if key.endswith("per_s") else 4
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}  # fmt: skip


def _growth_mib(now: dict[str, int], base: dict[str, int]) -> dict[str, float]:
    return {f"{key[:3]}_mib": round((now[key] - base[key]) / 1024, 1) for key in ("rss_kib", "pss_kib")}


def level(
    servers: dict[str, Any], messages: int, args: argparse.Namespace, baseline: dict[str, Any]
) -> dict[str, Any]:
    """The timed rounds of one level, interleaved between the servers."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    hits: dict[str, dict[str, int]] = {}
    peaks: dict[str, dict[str, int]] = {name: dict(baseline[name]) for name in servers}
    errors: dict[str, list[str]] = {name: [] for name in servers}
    for round_ in range(args.rounds):
        for name, server in servers.items():
            sampler = PeakMemory(server.pids)
            try:
                one = single_connection(server.port, server.password, messages, args, seed=round_)
                hits[name] = one["hits"]
                for key, values in one["samples"].items():
                    samples[name].setdefault(key, []).extend(values)
                mix = mixed(server.port, server.password, messages, args, seed=round_ + 1)
                samples[name].setdefault("mixed_ops_per_s", []).append(mix["ops_per_s"])
                errors[name] += mix["errors"]
            finally:
                peak = sampler.stop()
                peaks[name] = {k: max(v, peak[k]) for k, v in peaks[name].items()}
    time.sleep(1)
    out: dict[str, Any] = {}
    for name, server in servers.items():
        out[name] = {
            "figures": {key: _summary(key, values) for key, values in samples[name].items()},
            "search_hits": hits.get(name),
            "memory_growth": {
                "peak_during_rounds": _growth_mib(peaks[name], baseline[name]),
                "after_logout": _growth_mib(memory_kib(server.pids()), baseline[name]),
            },
            "mixed_errors": errors[name][:3],
        }
    if len(out) == 2:
        (name, _), (anchor, _) = out.items()
        ours, theirs = out[name]["figures"], out[anchor]["figures"]
        out[_ratio_key(list(out))] = {
            key: {
                "ratio": round(ours[key]["median"] / theirs[key]["median"], 2)
                if theirs[key]["median"]
                else None,
                "better": "↑" if key.endswith("per_s") else "↓",
            }
            for key in ours
        }
    return out


_LABELS = {"mssante": "mssante", "dovecot": "Dovecot", "postgresql": "PostgreSQL", "sqlite": "SQLite"}


def _ratio_key(names: list[str]) -> str:
    """Where a level's ratios are: ours against Dovecot, or PostgreSQL against SQLite."""
    return "ratios_postgresql_vs_sqlite" if "postgresql" in names else "ratios_ours_vs_dovecot"


def table(result: dict[str, Any]) -> str:
    """The run as a Markdown table: medians (min–max), ratio of the first server to the second
    (ours/Dovecot, or PostgreSQL/SQLite) with its direction."""
    name, anchor = (result["servers"] + ["dovecot"])[:2]  # with --no-dovecot, an empty column
    ratio_head = "ours/Dovecot" if anchor == "dovecot" else f"{_LABELS[name]}/{_LABELS[anchor]}"
    rows = [
        f"| messages | figure | {_LABELS[name]} | {_LABELS[anchor]} | {ratio_head} |",
        "|---|---|---|---|---|",
    ]

    def cell(f: dict[str, Any] | None) -> str:
        return f"{f['median']} ({f['min']}–{f['max']})" if f else "–"

    for lv in result["levels"]:
        ours = lv[name]["figures"]
        theirs = lv.get(anchor, {}).get("figures", {})
        ratios = lv.get(_ratio_key([name, anchor]), {})
        for key in ours:
            r = ratios.get(key)
            ratio = f"{r['ratio']} {r['better']}" if r else "–"
            rows.append(
                f"| {lv['messages']} | {key} | {cell(ours[key])} | {cell(theirs.get(key))} | {ratio} |"
            )
        sides = [lv[name], lv.get(anchor)]
        extra = {
            "fill_messages_per_s": [
                lv["fill"][n]["messages_per_s"] if n in lv else None for n in (name, anchor)
            ],
            **{
                f"{what}_growth_{when}_mib": [
                    side["memory_growth"][moment][f"{what}_mib"] if side else None for side in sides
                ]
                for what in ("rss", "pss")
                for when, moment in (("peak", "peak_during_rounds"), ("after_logout", "after_logout"))
            },
        }
        for key, (a, b) in extra.items():
            rows.append(f"| {lv['messages']} | {key} | {a} | {b if b is not None else '–'} | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000], help="folder sizes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level")
    parser.add_argument("--repeat", type=int, default=3, help="samples of each command per round")
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--fetches", type=int, default=200, help="single-message body fetches per round")
    parser.add_argument("--clients", type=int, default=8, help="mixed-workload clients")
    parser.add_argument("--processes", type=int, default=4, help="client processes they are spread over")
    parser.add_argument("--seconds", type=float, default=10.0, help="mixed-workload duration")
    parser.add_argument("--fill-connections", type=int, default=4)
    parser.add_argument("--append-batch", type=int, default=100, help="messages per MULTIAPPEND")
    parser.add_argument("--pg-url", default="", help="our store on PostgreSQL (a database is created)")
    parser.add_argument("--no-dovecot", action="store_true", help="measure ours only")
    parser.add_argument(
        "--pg-against-sqlite",
        action="store_true",
        help="ours on PostgreSQL (--pg-url) against ours on SQLite, interleaved (no Dovecot)",
    )
    parser.add_argument("--workers", type=int, default=1, help="our worker processes (server.workers)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.pg_against_sqlite and not args.pg_url:
        parser.error("--pg-against-sqlite needs --pg-url")
    sizes = sorted(set(args.sizes))
    rare_at = sizes[0] // 2
    result: dict[str, Any] = {
        "benchmark": "imap_ops",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "mssante_workers": args.workers,
        "message_size": args.size,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "mixed": {"clients": args.clients, "processes": args.processes, "seconds": args.seconds},
        "fill_path": f"IMAP MULTIAPPEND, {args.append_batch} per command, "
        f"{args.fill_connections} connections",
        "index": "warm on both: one untimed SELECT + FETCH 1:* (FLAGS ENVELOPE) after each fill"
        + ("; PostgreSQL: VACUUM ANALYZE and CHECKPOINT after each fill" if args.pg_url else ""),
        "loadavg_1min_before": loadavg(),
        "levels": [],
    }
    with tempfile.TemporaryDirectory(prefix="mssante-imap-ops-") as tmp:
        root = Path(tmp)
        with contextlib.ExitStack() as stack:
            # {server name: (data directory, store URL)}; each of ours gets its own store.
            stores = {"mssante": (root / "ours", args.pg_url)}
            if args.pg_against_sqlite:
                stores = {"postgresql": (root / "pg", args.pg_url), "sqlite": (root / "sqlite", "")}
            urls = {}
            for name, (home, pg_url) in stores.items():
                home.mkdir()
                urls[name] = stack.enter_context(database(pg_url, home / "data" / "mssante.db"))
            servers: dict[str, Any] = {}
            try:
                for name, (home, _) in stores.items():
                    servers[name] = Ours(home, urls[name], args.workers)
                    result[name] = {"store": make_url(urls[name]).get_backend_name()}
                    if result[name]["store"] == "postgresql":
                        result[name]["settings"] = pg_settings(urls[name])
                if not args.no_dovecot and not args.pg_against_sqlite:
                    servers["dovecot"] = dovecot = Dovecot(root / "dovecot", servers["mssante"])
                    result["dovecot"] = {"version": dovecot.version}
                result["servers"] = list(servers)
                time.sleep(2)
                baseline = {name: memory_kib(server.pids()) for name, server in servers.items()}
                for name in servers:
                    result[name]["idle_memory_kib"] = baseline[name]
                filled = 0
                for size in sizes:
                    lv: dict[str, Any] = {"messages": size, "loadavg_1min_before": loadavg(), "fill": {}}
                    for name, server in servers.items():
                        lv["fill"][name] = fill(server.port, server.password, filled, size, args, rare_at)
                    for name, server in servers.items():
                        lv["fill"][name]["warm_up_s"] = warm_up(server.port, server.password)
                    for name, url in urls.items():
                        if make_url(url).get_backend_name() == "postgresql":
                            lv["fill"][name]["pg_upkeep_s"] = pg_upkeep(url)
                    filled = size
                    lv.update(level(servers, size, args, baseline))
                    lv["loadavg_1min_after"] = loadavg()
                    result["levels"].append(lv)
                    print(f"level {size} done", file=sys.stderr)
                for name in stores:
                    result[name]["server_tracebacks"] = servers[name].tracebacks()
            finally:
                for server in servers.values():
                    server.stop()
    result["loadavg_1min_after"] = loadavg()
    out = json.dumps(result, indent=2, ensure_ascii=False)
    print(out)
    print(table(result), file=sys.stderr)
    if args.out:
        args.out.write_text(out + "\n")


if __name__ == "__main__":
    main()
