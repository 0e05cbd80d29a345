"""Login latency benchmark: how long SMTP AUTH and IMAP LOGIN take, alone and in a storm.

Usage:
    .venv/bin/python bench/logins.py [--protocol imap smtp] [--sequential 200] [--concurrent 20]
                                     [--per-client 10] [--source DIR] [--no-cache] [--out FILE]

Starts a real ``mssante serve --demo`` (SQLite, temporary directory; ``--source DIR`` runs the
server from another checkout, e.g. ``--source /work/main`` for the code before a change), then
for each protocol:

- *sequential*: ``--sequential`` logins one after another, each on a new TLS connection
  (IMAPS: ``LOGIN``; submissions: ``AUTH PLAIN``), the demo doctors in turn;
- *concurrent*: ``--concurrent`` clients (threads) at once, each making ``--per-client`` such
  logins back to back.

Only the login command is timed (from sending it to its answer), not the TLS handshake, which
is reported apart. Output: JSON with p50/p99/mean/max in milliseconds per run, the load
average before and after. ``--no-cache`` turns the verified-credential cache off
(``auth.credential_cache.ttl_seconds = 0``, so every login pays argon2); it needs a server
that knows the key. It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import platform
import smtplib
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit
from tests.demo_server import DemoServer, start_demo

Login = Callable[[str, str], tuple[float, float]]  # (login, password) → (handshake s, login s)


def imap_login(demo: DemoServer, ctx: ssl.SSLContext) -> Login:
    port = demo.port("imaps")

    def run(login: str, password: str) -> tuple[float, float]:
        started = time.perf_counter()
        imap = imaplib.IMAP4_SSL("localhost", port, ssl_context=ctx, timeout=120)
        connected = time.perf_counter()
        typ, _ = imap.login(login, password)
        done = time.perf_counter()
        assert typ == "OK"
        imap.logout()
        return connected - started, done - connected

    return run


def smtp_login(demo: DemoServer, ctx: ssl.SSLContext) -> Login:
    port = demo.port("submissions")

    def run(login: str, password: str) -> tuple[float, float]:
        started = time.perf_counter()
        smtp = smtplib.SMTP_SSL("localhost", port, context=ctx, timeout=120)
        smtp.ehlo()
        connected = time.perf_counter()
        code, _ = smtp.login(login, password)
        done = time.perf_counter()
        assert code == 235
        smtp.quit()
        return connected - started, done - connected

    return run


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(ms[-1], 2),
    }


def measure(login: Login, accounts: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    login(*accounts[0])  # warm-up: first connection, imports, caches of the server
    seq = [login(*accounts[i % len(accounts)]) for i in range(args.sequential)]

    def client(index: int) -> list[tuple[float, float]]:
        return [login(*accounts[(index + k) % len(accounts)]) for k in range(args.per_client)]

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrent) as pool:
        conc = [s for batch in pool.map(client, range(args.concurrent)) for s in batch]
    elapsed = time.perf_counter() - started
    return {
        "sequential": {"login": summary([s[1] for s in seq]), "tls_handshake": summary([s[0] for s in seq])},
        "concurrent": {
            "clients": args.concurrent,
            "login": summary([s[1] for s in conc]),
            "tls_handshake": summary([s[0] for s in conc]),
            "logins_per_s": round(len(conc) / elapsed, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", nargs="+", choices=["imap", "smtp"], default=["imap", "smtp"])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--source", type=Path, help="run the server from this checkout")
    parser.add_argument("--no-cache", action="store_true", help="credential cache off (every login hashes)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    env: dict[str, str] = {}
    if args.source is not None:
        # ``python -m`` puts the working directory first on sys.path: the server runs that code.
        env["PYTHONPATH"] = str(args.source.resolve())
        os.chdir(args.source)
    if args.no_cache:
        env["MSSANTE_AUTH__CREDENTIAL_CACHE__TTL_SECONDS"] = "0"
    result: dict[str, Any] = {
        "bench": "logins",
        "source": str((args.source or Path(__file__).parents[1]).resolve()),
        "credential_cache": not args.no_cache,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-logins-") as tmp:
        demo = start_demo(Path(tmp) / "data", env=env, timeout=180)
        try:
            ctx = ssl.create_default_context(cafile=demo.ca_cert)
            accounts = [
                (a["login"], a["password"])
                for a in demo.doc["accounts"]
                if a["password"] and a["kind"] in ("professional", "secretary", "pharmacy", "patient")
            ]
            for protocol in args.protocol:
                login = imap_login(demo, ctx) if protocol == "imap" else smtp_login(demo, ctx)
                result[protocol] = measure(login, accounts, args)
        finally:
            demo.stop()
    result["loadavg_after"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
