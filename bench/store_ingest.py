"""Store ingest benchmark: durable deliveries per second, group commit vs one commit each.

Usage:
    .venv/bin/python bench/store_ingest.py [--messages 600] [--pg-url postgresql+psycopg://...] [--out FILE]

For each backend (SQLite always; PostgreSQL when --pg-url is given), for 1, 10 and 50
concurrent producers, it delivers 10 KiB messages through ``MessageStore.deliver`` (each
call returns only after the commit is durable) with group commit on and off, in the same
run, and prints JSON: rate per configuration and the group/single ratio. It measures; it
does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench._common import database
from mssante.config import load_settings
from mssante.runtime import initialise, open_runtime
from tests.helpers import make_message

RECIPIENT = "dr.durand@demo.mssante.fr"


async def _ingest(url: str, data_dir: Path, producers: int, total: int, group: bool) -> dict[str, Any]:
    settings = load_settings(
        None, server={"data_dir": str(data_dir)}, database={"url": url}, storage={"group_commit": group}
    )
    initialise(settings)
    rt = open_runtime(settings)
    bodies = [make_message(subject=f"bench {i}", size=10 * 1024) for i in range(64)]
    per_producer = max(1, total // producers)
    latencies: list[float] = []

    async def producer(n: int) -> None:
        for i in range(per_producer):
            t0 = time.perf_counter()
            await rt.store.deliver(
                bodies[(n + i) % len(bodies)] + f"X-Seq: {n}-{i}\r\n".encode(), "bench@x", [RECIPIENT]
            )
            latencies.append(time.perf_counter() - t0)

    await rt.store.ensure_account(RECIPIENT)
    start = time.perf_counter()
    await asyncio.gather(*(producer(n) for n in range(producers)))
    elapsed = time.perf_counter() - start
    batches, jobs = rt.store.writer.batches, rt.store.writer.jobs
    rt.close()
    latencies.sort()
    done = per_producer * producers
    return {
        "producers": producers,
        "group_commit": group,
        "messages": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "jobs_per_transaction": round(jobs / max(batches, 1), 1),
    }


def _fsync_rate(directory: Path, count: int = 300) -> float:
    """Durable small writes per second on this disk: the cost group commit amortises."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, i.to_bytes(8, "big") * 512, 0)
            os.fdatasync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=600, help="messages per configuration")
    parser.add_argument("--pg-url", default="", help="PostgreSQL server URL (a database is created)")
    parser.add_argument("--producers", default="1,10,50")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "benchmark": "store_ingest",
        "message_size": 10 * 1024,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["machine"]["fsyncs_per_second"] = round(_fsync_rate(Path(tmp)), 1)
    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    for backend in backends:
        for producers in [int(p) for p in args.producers.split(",")]:
            pair = {}
            for group in (False, True):
                pg_url = args.pg_url if backend == "postgresql" else ""
                with tempfile.TemporaryDirectory() as tmp, database(pg_url, Path(tmp) / "mssante.db") as url:
                    run = asyncio.run(_ingest(url, Path(tmp), producers, args.messages, group))
                run["backend"] = backend
                results["runs"].append(run)
                pair[group] = run["per_second"]
                print(json.dumps(run), file=sys.stderr)
            results.setdefault("group_vs_single", {})[f"{backend}/{producers}"] = round(
                pair[True] / pair[False], 2
            )
    doc = json.dumps(results, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc)


if __name__ == "__main__":
    main()
