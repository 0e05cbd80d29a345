"""Cluster benchmark: delivered messages/s through HAProxy with 1 and 2 nodes (and CPU per
message), cross-node IDLE notification latency, and the failover gap.

Usage:
    .venv/bin/python bench/cluster.py --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
                                      [--seconds 10] [--clients 4] [--idle-samples 30] [--no-failover]
                                      [--out FILE]

Nodes are real ``mssante serve --demo`` processes on one PostgreSQL database (a fresh database
made on --pg-url), behind HAProxy from Debian in TCP mode with the PROXY protocol. Each client
keeps one authenticated SMTP session and submits messages one after the other (RSET between),
so the figure is delivery, not TLS handshakes. CPU per message counts the nodes' and HAProxy's
CPU time. The baseline of the 2-node figure is the 1-node figure of the same run: on a 2-core
machine the second node mostly shows the overhead of coordination, hence CPU per message.
Failover: a PostgreSQL 15 primary and a synchronous hot standby made by the benchmark
(initdb, pg_basebackup); the gap is the time without any acknowledgement around the promotion.
It prints JSON; it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench._common import database, emit
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message
from tests.pgcluster import PrimaryStandby, missing_tools

USER = "claire.martin@demo.mssante.fr"
TO = "paul.durand@demo.mssante.fr"
BALANCER = "127.0.0.2"
RELAXED = {
    "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "500",
    "MSSANTE_AUTH__BRUTEFORCE__BASE_DELAY_SECONDS": "0.01",
    "MSSANTE_AUTH__BRUTEFORCE__MAX_DELAY_SECONDS": "0.05",
    "MSSANTE_AUTH__BRUTEFORCE__IP_LOCKOUT_FAILURES": "100000",
    "MSSANTE_LOG__LEVEL": "WARNING",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _password(node: DemoServer) -> str:
    accounts = json.loads((node.data_dir / "demo.json").read_text())["accounts"]
    return str(next(a["password"] for a in accounts if a["address"] == USER))


def _start_nodes(url: str, data: Path, count: int, proxy: bool) -> list[DemoServer]:
    nodes = []
    for i in range(count):
        env = {**RELAXED, "MSSANTE_DATABASE__URL": url, "MSSANTE_SERVER__HOSTNAME": f"node-{i}.bench"}
        if proxy:
            for section in ("SMTP", "IMAP"):
                env[f"MSSANTE_{section}__PROXY_PROTOCOL"] = "true"
                env[f"MSSANTE_{section}__PROXY_TRUSTED"] = json.dumps([BALANCER])
        nodes.append(start_demo(data, env))
    return nodes


def _haproxy(nodes: list[DemoServer], root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    servers = "".join(
        f"  server n{i} 127.0.0.1:{n.port('submission')} send-proxy-v2 source {BALANCER}\n"
        for i, n in enumerate(nodes)
    )
    config = root / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
        f"frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend smtp\n"
        f"backend smtp\n  balance roundrobin\n{servers}"
    )
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, port


def _sender(port: int, ca: str, password: str, stop: threading.Event, acks: list[float]) -> None:
    """One SMTP session submitting until told to stop; each 250's time into ``acks``."""
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.starttls(context=ssl.create_default_context(cafile=ca))
                smtp.login(USER, password)
                while not stop.is_set():
                    smtp.sendmail(USER, [TO], make_message(USER, TO, f"bench {uuid.uuid4().hex}"))
                    acks.append(time.monotonic())
        except (OSError, smtplib.SMTPException):
            time.sleep(0.1)  # a refused or broken session: start another, as an MTA would


def _load(port: int, node: DemoServer, clients: int, seconds: float) -> tuple[list[float], float, float]:
    acks: list[float] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(port, node.ca_cert, _password(node), stop, acks), daemon=True)
        for _ in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return acks, started, time.monotonic()


def throughput(url: str, nodes_count: int, clients: int, seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mssante-bench-cluster-"))
    nodes = _start_nodes(url, root / "data", nodes_count, proxy=True)
    haproxy, port = _haproxy(nodes, root)
    try:
        _load(port, nodes[0], clients, 1.0)  # warm up: sessions, caches, JIT of the pools
        pids = [n.process.pid for n in nodes] + [haproxy.pid]
        cpu0 = sum(_cpu_seconds(p) for p in pids)
        acks, t0, t1 = _load(port, nodes[0], clients, seconds)
        cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
    delivered = len(acks)
    return {
        "nodes": nodes_count,
        "clients": clients,
        "seconds": round(t1 - t0, 2),
        "delivered": delivered,
        "msgs_per_s": round(delivered / (t1 - t0), 1),
        "cpu_ms_per_msg": round(1000 * cpu / delivered, 2) if delivered else None,
    }


def idle_latency(url: str, samples: int) -> dict[str, Any]:
    """IDLE on node B, deliveries through node A: time from A's 250 to B's EXISTS."""
    root = Path(tempfile.mkdtemp(prefix="mssante-bench-idle-"))
    nodes = _start_nodes(url, root / "data", 2, proxy=False)
    a, b = nodes
    latencies: list[float] = []
    try:
        password = _password(b)
        sock = ssl.create_default_context(cafile=b.ca_cert).wrap_socket(
            socket.create_connection(("127.0.0.1", b.port("imaps")), 10), server_hostname="127.0.0.1"
        )
        sock.sendall(f'a1 LOGIN {USER} "{password}"\r\na2 SELECT INBOX\r\na3 IDLE\r\n'.encode())
        _read_until(sock, b"+ idling")
        with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as smtp:
            smtp.starttls(context=ssl.create_default_context(cafile=a.ca_cert))
            smtp.login(USER, password)
            for _ in range(samples):
                smtp.sendmail(USER, [USER], make_message(USER, USER, f"idle {uuid.uuid4().hex}"))
                acked = time.monotonic()
                _read_until(sock, b"EXISTS")
                latencies.append(time.monotonic() - acked)
                time.sleep(0.05)
        sock.close()
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
    ordered = sorted(latencies)
    return {
        "samples": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def _read_until(sock: ssl.SSLSocket, wanted: bytes) -> None:
    data = b""
    sock.settimeout(10)
    while wanted not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(data.decode(errors="replace"))
        data += chunk


def failover_gap(clients: int) -> dict[str, Any]:
    why = missing_tools()
    if why:
        return {"skipped": why}
    pg = PrimaryStandby()
    root = Path(tempfile.mkdtemp(prefix="mssante-bench-failover-"))
    nodes: list[DemoServer] = []
    try:
        pg.start()
        nodes = _start_nodes(pg.url(), root / "data", 2, proxy=False)
        acks: list[float] = []
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_sender,
                args=(n.port("submission"), n.ca_cert, _password(n), stop, acks),
                daemon=True,
            )
            for n in nodes
            for _ in range(max(1, clients // 2))
        ]
        for thread in threads:
            thread.start()
        time.sleep(3)
        failed_at = time.monotonic()
        pg.fail_over()
        promoted_at = time.monotonic()
        time.sleep(8)
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        for node in nodes:
            node.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    ordered = sorted(acks)
    before = [t for t in ordered if t <= failed_at]
    after = [t for t in ordered if t > failed_at]
    # The longest silence once the crash began: commits in flight may still land right after it.
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b > failed_at]
    return {
        "promotion_s": round(promoted_at - failed_at, 2),
        "gap_s": round(max(gaps), 2) if before and gaps else None,
        "acked_before": len(before),
        "acked_after": len(after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle-samples", type=int, default=30)
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        sys.exit("haproxy is not installed (apt-get install haproxy)")
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "throughput": [],
    }
    for count in (1, 2):
        with database(args.pg_url, Path()) as url:
            result["throughput"].append(throughput(url, count, args.clients, args.seconds))
    with database(args.pg_url, Path()) as url:
        result["idle_cross_node"] = idle_latency(url, args.idle_samples)
    if not args.no_failover:
        result["failover"] = failover_gap(args.clients)
    emit(result, args.out)


if __name__ == "__main__":
    main()
