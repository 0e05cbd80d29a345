"""SMTP ingest benchmark, measured fairly: mssante against Postfix and Postfix → Dovecot LMTP.

Usage (root: it installs Debian's ``postfix`` and ``dovecot-lmtpd`` when missing):
    .venv/bin/python bench/smtp_ingest.py [--connections 1 10 50] [--new-connections 1 10]
                                          [--seconds 10] [--rounds 2] [--processes 4]
                                          [--size 10240] [--big-mib 20] [--workers 1 2]
                                          [--acknowledge delivered queued]
                                          [--with-postfix] [--with-floor] [--out FILE]

Servers under test, all started here and all left running for the whole benchmark:

- ``mssante``: a real ``mssante serve --demo`` (SQLite store in a temporary directory), the
  submission port (STARTTLS, AUTH PLAIN as a demo doctor); ``mssante-2w`` the same with two
  worker processes sharing the port (``--workers``: one server per count given);
  ``mssante-queued`` (``--acknowledge queued``) answering ``250`` once the message is sealed in
  the node's queue database, delivered by the queue's own process (its CPU counted with the
  server's);
- ``postfix`` (``--with-postfix``): Debian's Postfix in a throw-away instance (``postfix -c``,
  its own queue, smtpd on 127.0.0.1 at a high port, STARTTLS required, TLS >= 1.2), AUTH
  required through Dovecot SASL from Debian checking **the same argon2id hash** as mssante's
  account (Dovecot's ``auth_cache`` on, as mssante's credential cache), delivering to a Maildir
  through the ``virtual`` agent;
- ``postfix+dovecot``: the same Postfix set-up delivering by LMTP to Dovecot (the real
  alternative: the message is then visible to IMAP), Dovecot's Maildir counted.
- ``aiosmtpd-floor`` (``--with-floor``): ``bench/_aiosmtpd_floor.py``, aiosmtpd with STARTTLS
  and AUTH (a plain comparison, no password hash) writing each message to a file and ``fsync``ing
  it before its ``250``, and nothing else: the floor of the protocol layer on this machine, for
  the reused-session levels (its logins cost nothing, so its new-connection levels are not an
  anchor); no big message.

Levels: ``reuse-N``: N sessions opened before the clock starts, each sending 10 KiB messages
one after another; ``new-N``: N workers each opening a new connection per message (TCP,
STARTTLS, EHLO, AUTH, MAIL/RCPT/DATA, QUIT: all inside the clock). The load comes from
``--processes`` client processes (one client process is the bottleneck long before Postfix).

Interleaving: every level runs ``--rounds`` times as mssante, anchor(s), mssante, anchor(s)…,
so that a change of the machine's load hits every server alike; each figure is reported as its
median with min and max. Acknowledged = 250 replies to DATA per second; delivered = the
messages visible in the recipient's mailbox (mssante's store, the Maildir) per second from the
start until the last one is visible. CPU = the serving processes' CPU (Postfix: its whole tree
and Dovecot's, whose auth and LMTP serve it). Memory = growth of the serving processes only
(RSS summed over them, peak during the level minus before), never the clients'. The machine's
load average is recorded before and after each level and the whole run.

Big message: the growth of the serving processes' RSS while one ``--big-mib`` MiB message is
accepted and delivered (largest single process and the sum over the tree).

It measures; it does not judge (nothing passes or fails on time).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import multiprocessing as mp
import os
import platform
import pwd
import shutil
import socket
import sqlite3
import ssl
import statistics
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

from bench._common import emit
from tests.helpers import rss_kib

SENDER = "claire.martin@demo.mssante.fr"
RECIPIENT = "paul.durand@demo.mssante.fr"
POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"
FLOOR = Path(__file__).with_name("_aiosmtpd_floor.py")  # the protocol layer alone (--with-floor)
LMTP_MODULE = "/usr/lib/dovecot/lmtp"


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


# -- processes ------------------------------------------------------------------------------


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # utime + stime, plus cutime + cstime: children that exited and were reaped (Postfix
        # recycles its daemons after max_use requests, Dovecot its logins).
        total += sum(int(value) for value in fields[11:15])
    return total / ticks


def _descendants(*roots: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    found, frontier = list(roots), list(roots)
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += children
        frontier = children
    return found


class MemorySampler:
    """Peak of the serving processes' RSS (largest one, and summed) every 20 ms, in a thread."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.before_sum, self.before_max = self._sample()
        self.peak_sum, self.peak_max = self.before_sum, self.before_max
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        values = [rss_kib(pid) for pid in self.pids()] or [0]
        return sum(values), max(values)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            total, largest = self._sample()
            self.peak_sum, self.peak_max = max(self.peak_sum, total), max(self.peak_max, largest)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {
            "rss_before_mib": round(self.before_sum / 1024, 1),
            "rss_growth_mib": round((self.peak_sum - self.before_sum) / 1024, 1),
            "largest_process_rss_growth_mib": round((self.peak_max - self.before_max) / 1024, 1),
        }


# -- the servers under test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """What a client process needs to reach a server (picklable)."""

    port: int
    cafile: str
    login: tuple[str, str]


@dataclass
class Target:
    name: str
    client: Client
    delivered: Callable[[], int]
    pids: Callable[[], list[int]]


def start_mssante(
    base: Path, workers: int = 1, acknowledge: str = "delivered"
) -> tuple[Callable[[], None], Target, str]:
    """The demo server with ``workers`` processes and ``smtp.acknowledge``; returns its stop,
    its target and the sender's argon2id hash."""
    from tests.demo_server import start_demo

    name = ("mssante" if workers == 1 else f"mssante-{workers}w") + (
        "-queued" if acknowledge == "queued" else ""
    )
    demo = start_demo(
        base / name,
        {
            "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "1000",
            "MSSANTE_RELAY__ENABLED": "false",
            "MSSANTE_SERVER__WORKERS": str(workers),
            "MSSANTE_SMTP__ACKNOWLEDGE": acknowledge,
        },
    )
    deadline = time.monotonic() + 60  # demo.json comes with the first worker: wait for all
    while demo.log().count("listening: submission ") < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    account = demo.account(SENDER)
    database = demo.data_dir / "mssante.db"
    if not database.exists():
        database = next(demo.data_dir.glob("*.db"))

    def query(sql: str, *params: Any) -> Any:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql, params).fetchone()[0]

    def delivered() -> int:
        return int(
            query(
                "SELECT count(*) FROM messages m JOIN folders f ON f.id = m.folder_id "
                "WHERE f.bal = ? AND f.name = 'INBOX'",
                RECIPIENT,
            )
        )

    password_hash = str(query("SELECT password_hash FROM auth_accounts WHERE login = ?", account["login"]))
    target = Target(
        name,
        Client(demo.port("submission"), demo.ca_cert, (account["login"], account["password"])),
        delivered,
        lambda: _descendants(demo.process.pid),
    )
    return lambda: demo.stop(), target, password_hash


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


def start_floor(base: Path, login: tuple[str, str]) -> tuple[Callable[[], None], Target]:
    """``bench/_aiosmtpd_floor.py`` on a port of its own, with a throw-away certificate."""
    root = base / "floor"
    cert, queue = _self_signed(root / "tls"), root / "queue"
    queue.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(FLOOR), str(cert), str(root / "tls" / "key.pem"), str(port), str(queue), *login],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("the aiosmtpd floor server did not start")

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    target = Target(
        "aiosmtpd-floor",
        Client(port, str(cert), login),
        delivered=lambda: len(os.listdir(queue)),
        pids=lambda: [process.pid],
    )
    return stop, target


def ensure_packages() -> None:
    """Install Debian's postfix ("No configuration": the machine's mail system is never set up)
    and Dovecot's LMTP server, if missing."""
    missing = [
        package
        for package, path in (("postfix", POSTFIX), ("dovecot-lmtpd", LMTP_MODULE))
        if not Path(path).exists()
    ]
    if not missing:
        return
    print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port}") from None
            time.sleep(0.1)


def _written_pid(pid_file: Path, stop: list[str], what: str) -> int:
    """The process number a daemon writes in ``pid_file`` (the file exists before the number is
    in it); a daemon that writes none within 20 s is stopped with ``stop``, not left running."""
    deadline = time.monotonic() + 20
    while True:
        written = pid_file.read_text().split() if pid_file.exists() else []
        if written:
            return int(written[0])
        if time.monotonic() > deadline:
            subprocess.run(stop, capture_output=True)
            raise RuntimeError(f"{what} wrote no process number in {pid_file}")
        time.sleep(0.1)


@dataclass
class Dovecot:
    root: Path
    auth_port: int
    lmtp_port: int
    master_pid: int
    maildir: Path

    def delivered(self) -> int:
        return sum(
            len(os.listdir(self.maildir / sub)) for sub in ("new", "cur") if (self.maildir / sub).exists()
        )

    def stop(self) -> None:
        subprocess.run([DOVECOT, "-c", str(self.root / "dovecot.conf"), "stop"], capture_output=True)


def start_dovecot(base: Path, login: str, password_hash: str) -> Dovecot:
    """Dovecot from Debian: SASL for Postfix (the sender's argon2id hash, auth cache on) and LMTP
    delivery to the recipient's Maildir."""
    root = base / "dovecot"
    (root / "run").mkdir(parents=True)
    os.chmod(root, 0o755)
    nobody = pwd.getpwnam("nobody")
    home = root / "home" / "paul"
    home.mkdir(parents=True)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    ids = f"{nobody.pw_uid}:{nobody.pw_gid}"
    (root / "users").write_text(
        f"{login}:{{ARGON2ID}}{password_hash}:{ids}::{root / 'home' / 'claire'}::\n"
        f"{RECIPIENT}::{ids}::{home}::\n"
    )
    auth_port, lmtp_port = _free_port(), _free_port()
    (root / "dovecot.conf").write_text(
        f"""
base_dir = {root / "run"}
state_dir = {root / "state"}
log_path = {root / "dovecot.log"}
protocols = lmtp
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
first_valid_uid = 100
auth_cache_size = 10M
auth_cache_ttl = 1 hour
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {root / "users"}
}}
userdb {{
  driver = passwd-file
  args = {root / "users"}
}}
service auth {{
  inet_listener {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
  process_min_avail = 1
}}
protocol lmtp {{
  postmaster_address = postmaster@bench.invalid
}}
"""
    )
    # Dovecot daemonises: its output goes to a file (a pipe would stay open for its lifetime).
    with open(root / "start.log", "w") as start_log:
        started = subprocess.run(
            [DOVECOT, "-c", str(root / "dovecot.conf")], stdout=start_log, stderr=start_log
        )
    if started.returncode != 0:
        raise RuntimeError(f"dovecot failed to start: {(root / 'start.log').read_text()}")
    _wait_listening(auth_port, "dovecot auth")
    _wait_listening(lmtp_port, "dovecot lmtp")
    stop = [DOVECOT, "-c", str(root / "dovecot.conf"), "stop"]
    master_pid = _written_pid(root / "run" / "master.pid", stop, "dovecot")
    return Dovecot(root, auth_port, lmtp_port, master_pid, home / "Maildir")


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


def start_postfix(
    base: Path, name: str, dovecot: Dovecot, login: tuple[str, str], lmtp: bool
) -> tuple[Callable[[], None], Target]:
    """A throw-away Postfix with SASL through ``dovecot``; delivering to a Maildir of its own
    (virtual agent) or, with ``lmtp``, to Dovecot."""
    root = base / name
    etc, mail = root / "etc", root / "mail"
    etc.mkdir(parents=True)
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
    settings: dict[str, Any] = {
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
        # Submission as on mssante: AUTH required (after STARTTLS), checked by Dovecot.
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": f"inet:127.0.0.1:{dovecot.auth_port}",
        "smtpd_tls_auth_only": "yes",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_peername_lookup": "no",
        "smtpd_client_connection_count_limit": "0",
        "smtpd_client_connection_rate_limit": "0",
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
    if lmtp:
        settings["virtual_transport"] = f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}"
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    (etc / "master.cf").write_text(_master_cf(port))
    run = [POSTFIX, "-c", str(etc)]
    started = subprocess.run([*run, "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = root / "postfix.log"
        detail = log.read_text() if log.exists() else "(postfix logs its early errors to syslog only)"
        raise RuntimeError(f"postfix -c {etc} start failed:\n{started.stdout}{started.stderr}{detail}")
    _wait_listening(port, "postfix")
    master_pid = _written_pid(root / "queue" / "pid" / "master.pid", [*run, "stop"], "postfix")
    maildir = mail / "durand"

    def maildir_count() -> int:
        return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).exists())

    target = Target(
        name,
        Client(port, str(cert), login),
        dovecot.delivered if lmtp else maildir_count,
        lambda: _descendants(master_pid, dovecot.master_pid),
    )
    return lambda: subprocess.run([*run, "stop"], capture_output=True), target


# -- load (client processes) -------------------------------------------------------------------


def _tls(client: Client) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=client.cafile)


async def _open(client: Client, tls: ssl.SSLContext) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=client.port, start_tls=True, tls_context=tls, timeout=300
    )
    await smtp.connect()
    await smtp.login(*client.login)
    return smtp


async def _client_load(
    client: Client, workers: int, seconds: float, fresh: bool, size: int, label: str, ready: Any, go: Any
) -> dict[str, Any]:
    tls = _tls(client)
    template = make_message(size, "0" * 40)
    sessions = [] if fresh else await asyncio.gather(*(_open(client, tls) for _ in range(workers)))
    ready.put(True)
    await asyncio.to_thread(go.wait)
    start = time.monotonic()
    deadline = start + seconds
    counts, errors = [0] * workers, 0
    last_ack = start

    async def worker(n: int) -> None:
        nonlocal last_ack, errors
        while time.monotonic() < deadline:
            body = template.replace(b"0" * 40, f"{label}-{n:03d}-{counts[n]:08d}".ljust(40, "x").encode(), 1)
            try:
                if fresh:
                    smtp = await _open(client, tls)
                    await smtp.sendmail(SENDER, [RECIPIENT], body)
                    await smtp.quit()
                else:
                    await sessions[n].sendmail(SENDER, [RECIPIENT], body)
            except aiosmtplib.SMTPException:
                errors += 1
                if not fresh:
                    raise
                continue
            counts[n] += 1
            last_ack = time.monotonic()

    await asyncio.gather(*(worker(n) for n in range(workers)))
    for smtp in sessions:
        await smtp.quit()
    usage = os.times()
    return {"acked": sum(counts), "last_ack": last_ack, "errors": errors, "cpu": usage.user + usage.system}


def _client_process(
    client: Client,
    workers: int,
    seconds: float,
    fresh: bool,
    size: int,
    label: str,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    try:
        out.put(asyncio.run(_client_load(client, workers, seconds, fresh, size, label, ready, go)))
    except BaseException as exc:  # reported to the parent, which fails loudly
        ready.put(False)
        out.put({"error": repr(exc)})


def run_level(
    target: Target, workers: int, fresh: bool, seconds: float, size: int, processes: int
) -> dict[str, Any]:
    """One timed level: ``workers`` sessions (or new-connection workers) spread over client processes."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [
        workers // processes + (1 if i < workers % processes else 0) for i in range(min(processes, workers))
    ]
    label = uuid.uuid4().hex[:8]
    procs = [
        ctx.Process(
            target=_client_process,
            args=(target.client, n, seconds, fresh, size, f"{label}{i}", ready, go, out),
        )
        for i, n in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    if not all(ready.get(timeout=300) for _ in procs):
        go.set()
        raise RuntimeError(f"{target.name}: a client process failed: {[out.get() for _ in procs]}")
    before = target.delivered()
    load_before = os.getloadavg()[0]
    memory = MemorySampler(target.pids)
    cpu_before = _cpu_seconds(target.pids())
    start = time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + 600) for _ in procs]
    for proc in procs:
        proc.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"{target.name}: client failed: {failed}")
    acked = sum(r["acked"] for r in results)
    last_ack = max(r["last_ack"] for r in results)
    while target.delivered() - before < acked and time.monotonic() - last_ack < 120:
        time.sleep(0.01)
    visible = time.monotonic()
    delivered = target.delivered() - before
    cpu = _cpu_seconds(target.pids()) - cpu_before
    return {
        "acknowledged": acked,
        "delivered": delivered,
        "errors": sum(r["errors"] for r in results),
        "acknowledged_per_s": round(acked / (last_ack - start), 1),
        "delivered_per_s": round(delivered / (visible - start), 1),
        "delivery_lag_s": round(visible - last_ack, 3),
        "server_cpu_ms_per_message": round(1000 * cpu / max(acked, 1), 2),
        "server_cpu_share_of_two_cores": round(cpu / (2 * (visible - start)), 2),
        "client_cpu_s": round(sum(r["cpu"] for r in results), 2),
        **memory.stop(),
        "loadavg_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def big_message(target: Target, mib: int) -> dict[str, Any]:
    """Growth of the serving processes' memory while one ``mib`` MiB message is accepted and
    delivered (largest process and the sum over the tree)."""
    message = make_message(mib * 1024 * 1024, f"big-{uuid.uuid4().hex}")

    async def send() -> tuple[float, float]:
        smtp = await _open(target.client, _tls(target.client))
        before = target.delivered()
        await asyncio.sleep(0.5)  # the sampler's baseline is taken with the session open
        memory_ready.set()
        start = time.perf_counter()
        await smtp.sendmail(SENDER, [RECIPIENT], message)
        acked = time.perf_counter() - start
        while target.delivered() == before and time.perf_counter() - start < 120:
            await asyncio.sleep(0.01)
        visible = time.perf_counter() - start
        await asyncio.sleep(0.3)
        await smtp.quit()
        return acked, visible

    memory_ready = threading.Event()
    holder: dict[str, MemorySampler] = {}

    def sampler() -> None:
        memory_ready.wait()
        holder["m"] = MemorySampler(target.pids)

    thread = threading.Thread(target=sampler)
    thread.start()
    acked, visible = asyncio.run(send())
    thread.join()
    return {
        "message_mib": mib,
        "acknowledged_s": round(acked, 3),
        "delivered_s": round(visible, 3),
        **holder["m"].stop(),
        "processes": len(target.pids()),
    }


# -- the run -------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


FIGURES = ("acknowledged_per_s", "delivered_per_s", "server_cpu_ms_per_message", "rss_growth_mib")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 10, 50], help="reused sessions")
    parser.add_argument(
        "--new-connections", type=int, nargs="*", default=[1, 10], help="connection per message"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="sending time per level and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of each level")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--size", type=int, default=10 * 1024, help="message size in bytes")
    parser.add_argument("--big-mib", type=int, default=20, help="size of the large message (0: skip)")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2], help="mssante servers by worker processes"
    )
    parser.add_argument(
        "--acknowledge",
        nargs="*",
        choices=["delivered", "queued"],
        default=["delivered"],
        help="mssante servers by smtp.acknowledge (queued: 250 once in the queue)",
    )
    parser.add_argument("--with-postfix", action="store_true")
    parser.add_argument("--with-floor", action="store_true", help="also bench/_aiosmtpd_floor.py")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    result: dict[str, Any] = {
        "benchmark": "smtp_ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg(),
        },
        "message_size": args.size,
        "seconds_per_level": args.seconds,
        "rounds": args.rounds,
        "client_processes": args.processes,
    }
    base = Path(tempfile.mkdtemp(prefix="mssante-smtp-bench-"))
    stops: list[Callable[[], Any]] = []
    try:
        ours_all: list[Target] = []
        for acknowledge in args.acknowledge:
            for count in args.workers:
                stop, ours, password_hash = start_mssante(base, count, acknowledge)
                stops.append(stop)
                ours_all.append(ours)
        targets = list(ours_all)
        if args.with_postfix:
            ensure_packages()
            dovecot = start_dovecot(base, ours.client.login[0], password_hash)
            stops.append(dovecot.stop)
            for name, lmtp in (("postfix", False), ("postfix+dovecot", True)):
                stop, target = start_postfix(base, name, dovecot, ours.client.login, lmtp)
                stops.append(stop)
                targets.append(target)
            result["versions"] = {
                "postfix": subprocess.run(
                    ["/usr/sbin/postconf", "-dh", "mail_version"], capture_output=True, text=True
                ).stdout.strip(),
                "dovecot": subprocess.run(
                    [DOVECOT, "--version"], capture_output=True, text=True
                ).stdout.strip(),
            }
        if args.with_floor:
            stop, floor = start_floor(base, ours.client.login)
            stops.append(stop)
            targets.append(floor)
        for target in targets:  # warm-up: code paths, caches, the store's files, Postfix's daemons
            run_level(target, 2, False, 1.0, args.size, 1)
        levels = [(f"reuse-{n}", n, False) for n in args.connections] + [
            (f"new-{n}", n, True) for n in args.new_connections
        ]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            t.name: {lv: [] for lv, _, _ in levels} for t in targets
        }
        for level, workers, fresh in levels:
            for _ in range(args.rounds):
                for target in targets:
                    row = run_level(target, workers, fresh, args.seconds, args.size, args.processes)
                    print(json.dumps({target.name: {level: row}}), file=sys.stderr)
                    runs[target.name][level].append(row)
        for target in targets:
            result[target.name] = {
                "levels": {
                    level: {
                        **{figure: _summary([r[figure] for r in rows]) for figure in FIGURES},
                        "runs": rows,
                    }
                    for level, rows in runs[target.name].items()
                }
            }
            if args.big_mib and target.name != "aiosmtpd-floor":  # (it holds a message whole)
                result[target.name]["big_message"] = big_message(target, args.big_mib)
        for ours in ours_all:
            for anchor in targets[len(ours_all) :]:
                result[f"ratio_{ours.name}_over_{anchor.name}"] = {
                    level: {
                        figure: round(
                            result[ours.name]["levels"][level][figure]["median"]
                            / max(result[anchor.name]["levels"][level][figure]["median"], 0.01),
                            2,
                        )
                        for figure in FIGURES[:3]
                    }
                    for level, _, _ in levels
                }
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(base, ignore_errors=True)
    result["machine"]["loadavg_after"] = os.getloadavg()
    emit(result, args.out)


if __name__ == "__main__":
    main()
