"""Annuaire benchmark: import rows per second and peak RSS for synthetic extractions, look-ups per second.

Usage:
    .venv/bin/python bench/annuaire_import.py [--sizes 100000 500000] [--pg-url postgresql+psycopg://...]
                                              [--out FILE]

For each backend (SQLite always; PostgreSQL when --pg-url is given) and each size, a fresh
process (so that its peak RSS is the import's own) imports a zipped synthetic extraction
(1 % malformed rows) into an empty database, then re-imports it (the idempotent path: nothing
written). The baseline measured in the same run is the parse-only rate (reading, decoding and
checking the rows without touching the database), which bounds what the database side costs.
Peak RSS should not grow with the file: compare the sizes.

Look-ups: ``Annuaire.bal`` on the largest imported database — warm cache (the policy's steady
state), cold (every answer from the database: the baseline), and unknown addresses.
It prints JSON; it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import database


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _import_child(url: str, path: str, rows: int, queue: Any) -> None:
    """Runs in a fresh process: parse-only pass, import, re-import; reports rates and RSS."""
    from annuaire import extraction
    from annuaire.importer import import_extraction
    from annuaire.nomenclatures import default
    from mssante import audit
    from mssante.audit import AuditKey
    from mssante.db import make_engine
    from mssante.schema import upgrade

    # A throw-away audit key: the benchmark has no key ring, and its database is discarded.
    audit.bind(url, AuditKey(os.urandom(32), os.urandom(32)))
    engine = make_engine(url, writer=True)
    upgrade(engine)
    rss_before = _rss_mb()

    started = time.perf_counter()
    parsed = sum(1 for _ in extraction.read(Path(path), default()))
    parse_s = time.perf_counter() - started

    started = time.perf_counter()
    first = import_extraction(engine, Path(path), full=True)
    import_s = time.perf_counter() - started
    started = time.perf_counter()
    second = import_extraction(engine, Path(path), full=True)
    reimport_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine.dispose()
    queue.put(
        {
            "rows": rows,
            "parsed": parsed,
            "added": first.added,
            "rejected": first.rejected,
            "import_rows_per_s": round(rows / import_s),
            "import_seconds": round(import_s, 2),
            "reimport_rows_per_s": round(rows / reimport_s),
            "reimport_changed": second.changed,
            "baseline_parse_only_rows_per_s": round(parsed / parse_s),
            "rss_before_import_mb": round(rss_before, 1),
            "peak_rss_mb": round(peak, 1),
        }
    )


def _lookups(url: str, path: Path, rows: int) -> dict[str, Any]:
    from annuaire import synthetic
    from annuaire.lookup import Annuaire
    from mssante.db import make_engine

    engine = make_engine(url)
    addresses = [f[1] for f, bad in synthetic.rows(min(rows, 20_000)) if not bad]
    annuaire = Annuaire(engine, refresh_interval=1.0)

    started = time.perf_counter()
    for a in addresses:  # each one a cache miss: answered by the database
        annuaire.bal(a)
    cold = len(addresses) / (time.perf_counter() - started)

    hot = addresses[:1000]
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 2.0:
        for a in hot:
            annuaire.is_active(a)
        n += len(hot)
    warm = n / (time.perf_counter() - started)

    unknown = [f"nobody.{i}@medecin.mssante.fr" for i in range(1000)]
    for a in unknown:
        annuaire.bal(a)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < 1.0:
        for a in unknown:
            annuaire.is_active(a)
        n += len(unknown)
    negative = n / (time.perf_counter() - started)
    engine.dispose()
    return {
        "warm_lookups_per_s": round(warm),
        "unknown_address_lookups_per_s": round(negative),
        "baseline_cold_lookups_per_s": round(cold),
        "database_rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--pg-url", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from annuaire import synthetic

    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {
        "benchmark": "annuaire_import",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for size in args.sizes:
            gen = synthetic.generate(Path(tmp) / f"extraction-{size}.zip", size, zipped=True)
            files[size] = gen.path
        backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
        for backend in backends:
            runs = []
            pg_url = args.pg_url if backend == "postgresql" else ""
            with contextlib.ExitStack() as databases:  # the last one is kept for the look-ups
                for size in args.sizes:
                    url = databases.enter_context(database(pg_url, Path(tmp) / f"bench-{size}.db"))
                    queue = ctx.Queue()
                    child = ctx.Process(target=_import_child, args=(url, str(files[size]), size, queue))
                    child.start()
                    runs.append(queue.get())
                    child.join()
                    print(f"{backend} {size}: {runs[-1]}", file=sys.stderr)
                lookups = _lookups(url, files[args.sizes[-1]], args.sizes[-1])
            results["backends"][backend] = {"imports": runs, "lookups": lookups}
    out = json.dumps(results, indent=2)
    print(out)
    if args.out:
        args.out.write_text(out + "\n")


if __name__ == "__main__":
    main()
