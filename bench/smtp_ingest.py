"""SMTP ingest benchmark: messages per second acknowledged and delivered over TLS, and memory.

Usage:
    .venv/bin/python bench/smtp_ingest.py [--connections 1 10 50] [--seconds 10] [--size 10240]
                                          [--big-mib 20] [--with-postfix] [--out FILE]

Against a real ``mssante serve --demo`` process (SQLite store in a temporary directory): for
each concurrency level, that many workers each open one STARTTLS session on the submission
port (certificate verified, AUTH PLAIN as a demo doctor) and then send 10 KiB messages to a
colleague, one after another on that same session, for ``--seconds``. Acknowledged = 250
replies to DATA per second; delivered = the same messages visible in the recipient's mailbox
(counted in the store), per second from the start until the last one is visible. Then the peak
RSS of the server process while it accepts one 20 MiB message.

``--with-postfix`` runs the same load, with the same client and the same bytes, against a
throw-away Postfix from Debian packages (installed with apt-get if missing, "No
configuration" so the machine's mail system is never set up): its own config and queue
directories in a temporary directory (``postfix -c``), smtpd on 127.0.0.1 at a high port with
STARTTLS required (a self-signed certificate made here; TLS >= 1.2 on both servers), no SASL
(``mynetworks = 127.0.0.0/8``), delivering to a Maildir on the same disk through the virtual
agent. Delivered = files in that Maildir. Ratios are mssante / Postfix.

Both servers and the client share the machine's cores: the client's and servers' CPU times
are reported so a reader can tell a client-bound run. It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import platform
import pwd
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosmtplib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from mssante.config import load_settings
from mssante.store.models import Folder, Message
from tests.demo_server import DemoServer, start_demo

SENDER = "claire.martin@demo.mssante.fr"
RECIPIENT = "paul.durand@demo.mssante.fr"
POSTFIX = "/usr/sbin/postfix"


def make_message(size: int, label: str) -> bytes:
    """A text/plain message of exactly ``size`` bytes (CRLF lines of 76 characters)."""
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {label}\r\n"
        f"Date: {dt.datetime.now(dt.UTC).strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
        f"Message-ID: <{label}@bench.invalid>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n"
    body = bytearray()
    while len(head) + len(body) < size:
        body += line
    message = head + bytes(body[: size - len(head) - 2]) + b"\r\n"
    assert len(message) == size
    return message


# -- the servers under test -----------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    tls: ssl.SSLContext
    login: tuple[str, str] | None
    delivered: Callable[[], int]
    pids: Callable[[], list[int]]


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # utime + stime, plus cutime + cstime: children that exited and were reaped (Postfix
        # recycles its daemons after max_use requests).
        total += sum(int(value) for value in fields[11:15])
    return total / ticks


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def start_mssante(base: Path) -> tuple[DemoServer, Target]:
    demo = start_demo(
        base / "mssante",
        {"MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "500", "MSSANTE_RELAY__ENABLED": "false"},
    )
    account = demo.account(SENDER)
    settings = load_settings(None, server={"data_dir": str(demo.data_dir)})
    engine = create_engine(settings.database_url)

    def delivered() -> int:
        with Session(engine) as session:
            count = session.scalar(
                select(func.count())
                .select_from(Message)
                .join(Folder, Folder.id == Message.folder_id)
                .where(Folder.bal == RECIPIENT, Folder.name == "INBOX")
            )
        return int(count or 0)

    target = Target(
        "mssante",
        demo.port("submission"),
        ssl.create_default_context(cafile=demo.ca_cert),
        (account["login"], account["password"]),
        delivered,
        lambda: _descendants(demo.process.pid),
    )
    return demo, target


def _self_signed(directory: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # as the demo's certificates
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(directory / "key.pem", 0o600)
    return directory / "cert.pem"


def ensure_postfix() -> None:
    """Install Debian's postfix without configuring the machine's mail system, if missing."""
    if Path(POSTFIX).exists():
        return
    print("installing postfix (apt-get, 'No configuration')", file=sys.stderr)
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postfix"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _master_cf(port: int) -> str:
    """Debian's master.cf, smtpd moved to 127.0.0.1:<port>, no chroot (the queue is private)."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{port}"
            fields[4] = "n"
            line = "  ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def start_postfix(base: Path) -> tuple[Callable[[], None], Target]:
    ensure_postfix()
    root = base / "postfix"
    etc, mail = root / "etc", root / "mail"
    for directory in (root, etc):
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # postfix and the delivery user walk through it
    os.chmod(root, 0o755)
    cert = _self_signed(root / "tls")
    nobody, owner = pwd.getpwnam("nobody"), pwd.getpwnam("postfix")
    mail.mkdir()
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    (root / "queue").mkdir(mode=0o755)  # root-owned; postfix makes its subdirectories
    (root / "data").mkdir(mode=0o700)
    os.chown(root / "data", owner.pw_uid, owner.pw_gid)
    port = _free_port()
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": root / "queue",
        "data_directory": root / "data",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "bench.invalid",
        "mydomain": "invalid",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject",
        "smtpd_peername_lookup": "no",
        "smtpd_client_connection_count_limit": "0",
        "default_process_limit": "200",
        "virtual_mailbox_domains": "demo.mssante.fr",
        "virtual_mailbox_base": mail,
        "virtual_mailbox_maps": "static:durand/",  # trailing slash: Maildir
        "virtual_uid_maps": f"static:{nobody.pw_uid}",
        "virtual_gid_maps": f"static:{nobody.pw_gid}",
        "virtual_minimum_uid": "100",
        "message_size_limit": str(64 * 1024 * 1024),
        "virtual_mailbox_limit": "0",
        "smtpd_tls_cert_file": cert,
        "smtpd_tls_key_file": cert.with_name("key.pem"),
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "maillog_file_prefixes": root,
        "maillog_file": root / "postfix.log",
    }
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    (etc / "master.cf").write_text(_master_cf(port))
    run = [POSTFIX, "-c", str(etc)]
    started = subprocess.run([*run, "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = root / "postfix.log"
        detail = log.read_text() if log.exists() else "(postfix logs its early errors to syslog only)"
        raise RuntimeError(f"postfix -c {etc} start failed:\n{started.stdout}{started.stderr}{detail}")
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not listen on {port}") from None
            time.sleep(0.1)
    master_pid = int((root / "queue" / "pid" / "master.pid").read_text().split()[0])
    maildir = mail / "durand"

    def delivered() -> int:
        return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).exists())

    def stop() -> None:
        subprocess.run([*run, "stop"], capture_output=True)

    target = Target(
        "postfix",
        port,
        ssl.create_default_context(cafile=str(cert)),
        None,
        delivered,
        lambda: _descendants(master_pid),
    )
    return stop, target


# -- load --------------------------------------------------------------------------------------


async def _session(target: Target) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=target.port, start_tls=True, tls_context=target.tls, timeout=300
    )
    await client.connect()
    if target.login is not None:
        await client.login(*target.login)
    return client


async def _load(target: Target, connections: int, seconds: float, size: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    template = make_message(size, "0" * 40)
    before = target.delivered()
    sessions = await asyncio.gather(*(_session(target) for _ in range(connections)))
    tls_info = sessions[0].get_transport_info("ssl_object")
    counts = [0] * connections
    last_ack = 0.0
    cpu_before = _cpu_seconds(target.pids())
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(n: int) -> None:
        nonlocal last_ack
        client = sessions[n]
        while time.perf_counter() < deadline:
            label = f"{run}-{n:03d}-{counts[n]:08d}".ljust(40, "x")
            await client.sendmail(SENDER, [RECIPIENT], template.replace(b"0" * 40, label.encode(), 1))
            counts[n] += 1
            last_ack = time.perf_counter()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    acked = sum(counts)
    while target.delivered() - before < acked:
        if time.perf_counter() - last_ack > 120:
            break
        await asyncio.sleep(0.01)
    visible = time.perf_counter()
    delivered = target.delivered() - before
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_after = _cpu_seconds(target.pids())
    for client in sessions:
        await client.quit()
    return {
        "connections": connections,
        "acknowledged": acked,
        "delivered": delivered,
        "acknowledged_per_s": round(acked / (last_ack - start), 1),
        "delivered_per_s": round(delivered / (visible - start), 1),
        "delivery_lag_s": round(visible - last_ack, 3),
        "server_cpu_s": round(cpu_after - cpu_before, 2),
        "server_cpu_ms_per_message": round(1000 * (cpu_after - cpu_before) / max(acked, 1), 2),
        "client_cpu_s": round(
            client_after.ru_utime + client_after.ru_stime - client_before.ru_utime - client_before.ru_stime, 2
        ),
        "tls": f"{tls_info.version()} {tls_info.cipher()[0]}" if tls_info else None,
    }


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


async def _big(target: Target, mib: int) -> dict[str, Any]:
    """Memory of the server's processes while one ``mib`` MiB message is accepted and delivered.

    Largest single process (RSS) and the whole process tree (sum of PSS, so that pages shared
    by Postfix's many processes are counted once), sampled every 10 ms.
    """
    message = make_message(mib * 1024 * 1024, f"big-{uuid.uuid4().hex}")
    client = await _session(target)
    before_rss = max(_rss_kib(pid) for pid in target.pids())
    before_pss = sum(_pss_kib(pid) for pid in target.pids())
    peaks = {"rss": before_rss, "pss": before_pss}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = target.pids()
            peaks["rss"] = max(peaks["rss"], *(_rss_kib(pid) for pid in pids))
            peaks["pss"] = max(peaks["pss"], sum(_pss_kib(pid) for pid in pids))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    before = target.delivered()
    start = time.perf_counter()
    await client.sendmail(SENDER, [RECIPIENT], message)
    acked = time.perf_counter() - start
    while target.delivered() == before and time.perf_counter() - start < 120:
        await asyncio.sleep(0.01)
    visible = time.perf_counter() - start
    await asyncio.sleep(0.2)
    stop.set()
    sampler.join()
    await client.quit()
    return {
        "message_mib": mib,
        "acknowledged_s": round(acked, 3),
        "delivered_s": round(visible, 3),
        "largest_process_rss_before_mib": round(before_rss / 1024, 1),
        "largest_process_rss_peak_mib": round(peaks["rss"] / 1024, 1),
        "largest_process_rss_growth_mib": round((peaks["rss"] - before_rss) / 1024, 1),
        "all_processes_pss_before_mib": round(before_pss / 1024, 1),
        "all_processes_pss_peak_mib": round(peaks["pss"] / 1024, 1),
        "all_processes_pss_growth_mib": round((peaks["pss"] - before_pss) / 1024, 1),
        "processes": len(target.pids()),
    }


async def measure(
    target: Target, levels: list[int], seconds: float, size: int, big_mib: int
) -> dict[str, Any]:
    await _load(target, 1, min(2.0, seconds), size)  # warm-up: caches, code paths, the store's files
    results: dict[str, Any] = {"load": []}
    for connections in levels:
        row = await _load(target, connections, seconds, size)
        print(json.dumps({target.name: row}), file=sys.stderr)
        results["load"].append(row)
    if big_mib:
        results["big_message"] = await _big(target, big_mib)
    return results


def _ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {"load": []}
    for a, b in zip(ours["load"], theirs["load"], strict=True):
        ratios["load"].append(
            {
                "connections": a["connections"],
                "acknowledged": round(a["acknowledged_per_s"] / b["acknowledged_per_s"], 2),
                "delivered": round(a["delivered_per_s"] / b["delivered_per_s"], 2),
            }
        )
    if "big_message" in ours and "big_message" in theirs:
        # Whole process trees (PSS): Postfix spreads one message over several small processes.
        key = "all_processes_pss_peak_mib"
        ratios[f"big_message_{key}"] = round(ours["big_message"][key] / theirs["big_message"][key], 2)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per level")
    parser.add_argument("--size", type=int, default=10 * 1024, help="message size in bytes")
    parser.add_argument("--big-mib", type=int, default=20, help="size of the large message (0: skip)")
    parser.add_argument("--with-postfix", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    result: dict[str, Any] = {
        "benchmark": "smtp_ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()},
        "message_size": args.size,
        "seconds_per_level": args.seconds,
    }
    base = Path(tempfile.mkdtemp(prefix="mssante-smtp-bench-"))
    try:
        demo, target = start_mssante(base)
        try:
            result["mssante"] = asyncio.run(
                measure(target, args.connections, args.seconds, args.size, args.big_mib)
            )
        finally:
            demo.stop()
        if args.with_postfix:
            stop, target = start_postfix(base)
            try:
                result["postfix"] = asyncio.run(
                    measure(target, args.connections, args.seconds, args.size, args.big_mib)
                )
                result["postfix"]["version"] = subprocess.run(
                    ["/usr/sbin/postconf", "-dh", "mail_version"], capture_output=True, text=True
                ).stdout.strip()
            finally:
                stop()
            result["ratio_mssante_over_postfix"] = _ratios(result["mssante"], result["postfix"])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["machine"]["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
