"""IMAP operations benchmark: our server on an N-message mailbox, measured with Python's imaplib.

Usage:
    .venv/bin/python bench/imap_ops.py [--messages 10000] [--size 10240] [--fetches 1000]
                                       [--clients 10] [--seconds 10] [--out FILE]

The server runs in its own process (SQLite store in a temporary directory, implicit TLS on
loopback with a throw-away certificate); the mailbox is filled through ``MessageStore.deliver``
before the listener opens. Timed on one connection: SELECT, ``UID FETCH 1:* (FLAGS)``,
``FETCH 1:* (ENVELOPE)`` (twice: cold, then warm), ``UID SEARCH TEXT <rare word>``, and random
single-message ``BODY.PEEK[]`` fetches; then operations per second with concurrent clients on
a mixed workload; then the server's peak RSS. Prints JSON. It measures; it does not judge.
``--with-dovecot`` is not implemented yet.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import multiprocessing
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mssante.config import load_settings
from mssante.imap.server import ImapServer
from mssante.runtime import initialise, open_runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import DictGate, make_tls

BAL = "alice@demo.mssante.fr"
RARE = "zygomorphique"


async def _serve(data_dir: Path, messages: int, size: int, ports: Any) -> None:
    settings = load_settings(
        None, server={"data_dir": str(data_dir)}, database={"url": f"sqlite:///{data_dir / 'mssante.db'}"}
    )
    initialise(settings)
    rt = open_runtime(settings)
    await rt.store.ensure_account(BAL)
    bodies = [make_message(to=BAL, subject=f"bench {i}", size=size) for i in range(32)]
    rare_at = messages // 2
    started = time.perf_counter()
    next_seq = iter(range(messages))

    async def producer() -> None:
        for seq in next_seq:
            body = bodies[seq % len(bodies)]
            if seq == rare_at:
                body = body.replace(b"Lorem", RARE.encode(), 1)
            await rt.store.deliver(body + f"X-Seq: {seq}\r\n".encode(), "bench@demo.mssante.fr", [BAL])

    await asyncio.gather(*(producer() for _ in range(50)))
    fill = time.perf_counter() - started
    tls = make_tls(data_dir / "tls")
    server = ImapServer(rt.store, DictGate(), tls_context=tls.server)
    listener = await server.start("127.0.0.1", 0, implicit_tls=True)
    ports.put((listener.sockets[0].getsockname()[1], str(tls.ca_file), fill))
    await asyncio.Event().wait()


def _server_process(data_dir: str, messages: int, size: int, ports: Any) -> None:
    asyncio.run(_serve(Path(data_dir), messages, size, ports))


def _connect(port: int, ca_file: str) -> imaplib.IMAP4_SSL:
    import ssl

    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ssl.create_default_context(cafile=ca_file))
    imap.login("alice", "wonderland")
    return imap


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 4)


def _single(port: int, ca_file: str, messages: int, fetches: int) -> dict[str, Any]:
    imap = _connect(port, ca_file)
    out: dict[str, Any] = {}
    out["select_s"] = _timed(lambda: imap.select("INBOX"))
    out["uid_fetch_flags_s"] = _timed(lambda: imap.uid("FETCH", "1:*", "(FLAGS)"))
    out["fetch_envelope_cold_s"] = _timed(lambda: imap.fetch("1:*", "(ENVELOPE)"))
    out["fetch_envelope_warm_s"] = _timed(lambda: imap.fetch("1:*", "(ENVELOPE)"))
    found: list[Any] = []
    out["uid_search_text_rare_s"] = _timed(lambda: found.append(imap.uid("SEARCH", "TEXT", RARE)))
    out["uid_search_text_hits"] = len(found[0][1][0].split())
    numbers = [random.randint(1, messages) for _ in range(fetches)]
    elapsed = _timed(lambda: [imap.fetch(str(n), "(BODY.PEEK[])") for n in numbers])
    out["body_fetches"] = fetches
    out["body_fetches_per_s"] = round(fetches / elapsed, 1)
    imap.logout()
    return out


def _mixed(port: int, ca_file: str, messages: int, clients: int, seconds: float) -> dict[str, Any]:
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(index: int) -> None:
        imap = _connect(port, ca_file)
        imap.select("INBOX")
        rng = random.Random(index)
        while time.perf_counter() < stop:
            n = rng.randint(1, messages)
            choice = rng.random()
            if choice < 0.5:
                imap.fetch(str(n), "(BODY.PEEK[])")
            elif choice < 0.7:
                imap.fetch(f"{n}:{min(n + 50, messages)}", "(FLAGS ENVELOPE)")
            elif choice < 0.9:
                imap.store(str(n), "+FLAGS", "(\\Flagged)" if rng.random() < 0.5 else "(\\Seen)")
            else:
                imap.noop()
            counts[index] += 1
        imap.logout()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": round(elapsed, 2), "ops": sum(counts),
            "ops_per_s": round(sum(counts) / elapsed, 1)}  # fmt: skip


def _peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--fetches", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mssante-imap-bench-") as tmp:
        ports: Any = multiprocessing.Queue()
        proc = multiprocessing.Process(target=_server_process, args=(tmp, args.messages, args.size, ports))
        proc.start()
        try:
            port, ca_file, fill = ports.get(timeout=3600)
            result: dict[str, Any] = {
                "benchmark": "imap_ops",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "messages": args.messages,
                "message_size": args.size,
                "fill_seconds": round(fill, 2),
                "single_connection": _single(port, ca_file, args.messages, args.fetches),
                "mixed": _mixed(port, ca_file, args.messages, args.clients, args.seconds),
                "server_peak_rss_kib": _peak_rss_kib(proc.pid or 0),
                "dovecot": None,
            }
        finally:
            proc.terminate()
            proc.join()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
