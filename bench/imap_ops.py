"""IMAP operations benchmark: our server, and Dovecot in the same run, on an N-message mailbox.

Usage:
    .venv/bin/python bench/imap_ops.py [--messages 10000] [--size 10240] [--fetches 1000]
                                       [--clients 10] [--seconds 10] [--repeat 5] [--with-dovecot]
                                       [--pg-url postgresql+psycopg://...] [--out FILE]

Our server runs in its own process (SQLite store in a temporary directory, or a fresh database
on the PostgreSQL server of ``--pg-url``; implicit TLS on loopback with a throw-away
certificate); the mailbox is filled through ``MessageStore.deliver`` before the listener opens.
With ``--with-dovecot``, a throw-away Dovecot from Debian's ``dovecot-imapd`` (installed with
apt-get when missing) runs beside it: its own config, base and state directories, log and
Maildir in the temporary directory, implicit TLS with the same certificate, a passwd-file
user, a free port on 127.0.0.1; the same messages are written as Maildir files. The
machine's own mail setup is never read or touched, and Dovecot is stopped at the end.

The same workload runs against each server, one after the other, measured with imaplib. On one
connection: SELECT (first, then again), ``UID FETCH 1:* (FLAGS)``, ``FETCH 1:* (ENVELOPE)``
(cold, then warm), ``UID SEARCH TEXT <rare word>`` (medians of ``--repeat`` runs, except the
first SELECT and the cold ENVELOPE), and random single-message ``BODY.PEEK[]`` fetches; then
operations per second with concurrent clients on a mixed workload; then our server's peak RSS.
Prints JSON, with each ratio (ours / Dovecot for times, Dovecot / ours for rates: above 1 means
we are slower). It measures; it does not judge.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import multiprocessing
import os
import platform
import pwd
import random
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, make_url, text

from mssante.config import load_settings
from mssante.imap.server import ImapServer
from mssante.runtime import initialise, open_runtime
from tests.helpers import make_message
from tests.imap_dialogues.harness import DictGate, make_tls

BAL = "alice@demo.mssante.fr"
USER, PASSWORD = "alice", "wonderland"
RARE = "zygomorphique"

Connect = Callable[[], imaplib.IMAP4_SSL]


def mailbox(messages: int, size: int) -> Callable[[int], bytes]:
    """The benchmark's messages, the same bytes for both servers: 32 templates, each message
    made unique by a last line (so the store does not share one blob), one with the rare word."""
    templates = [make_message(to=BAL, subject=f"bench {i}", size=size) for i in range(32)]
    rare_at = messages // 2

    def message(seq: int) -> bytes:
        body = templates[seq % len(templates)]
        if seq == rare_at:
            body = body.replace(b"Lorem", RARE.encode(), 1)
        return body + f"X-Seq: {seq}\r\n".encode()

    return message


# -- our server ----------------------------------------------------------------------------------
async def _serve(data_dir: Path, url: str, messages: int, size: int, tls_dir: Path, ports: Any) -> None:
    settings = load_settings(None, server={"data_dir": str(data_dir)}, database={"url": url})
    initialise(settings)
    rt = open_runtime(settings)
    await rt.store.ensure_account(BAL)
    message = mailbox(messages, size)
    started = time.perf_counter()
    next_seq = iter(range(messages))

    async def producer() -> None:
        for seq in next_seq:
            await rt.store.deliver(message(seq), "bench@demo.mssante.fr", [BAL])

    await asyncio.gather(*(producer() for _ in range(50)))
    fill = time.perf_counter() - started
    tls = make_tls(tls_dir)
    server = ImapServer(rt.store, DictGate(), tls_context=tls.server)
    listener = await server.start("127.0.0.1", 0, implicit_tls=True)
    ports.put((listener.sockets[0].getsockname()[1], str(tls.ca_file), fill))
    await asyncio.Event().wait()


def _server_process(data_dir: str, url: str, messages: int, size: int, tls_dir: str, ports: Any) -> None:
    asyncio.run(_serve(Path(data_dir), url, messages, size, Path(tls_dir), ports))


def _pg_database(admin_url: str) -> tuple[str, str]:
    """A fresh database on the given PostgreSQL server, for our store (dropped at the end)."""
    name = f"mssante_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_pg(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# -- Dovecot ---------------------------------------------------------------------------------------
def _ensure_dovecot() -> str:
    found = shutil.which("dovecot") or (Path("/usr/sbin/dovecot").exists() and "/usr/sbin/dovecot")
    if found:
        return str(found)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "dovecot-imapd"], check=True, env=env
    )
    return shutil.which("dovecot") or "/usr/sbin/dovecot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """A throw-away Dovecot: everything under ``root``, stopped by :meth:`stop`."""

    def __init__(self, root: Path, cert: Path, messages: int, size: int) -> None:
        if os.geteuid() != 0:
            raise SystemExit("--with-dovecot needs root (apt-get, and Dovecot's own users)")
        self.root = root
        self.binary = _ensure_dovecot()
        self.port = _free_port()
        mail_user = pwd.getpwnam("nobody")
        root.mkdir(parents=True)
        os.chmod(root.parent, 0o755)  # the mail user must reach its home
        os.chmod(root, 0o755)
        home = root / "home" / USER
        started = time.perf_counter()
        self._write_maildir(home / "Maildir", messages, size)
        for path in (root / "home", home, *home.rglob("*")):
            os.chown(path, mail_user.pw_uid, mail_user.pw_gid)
        self.fill_seconds = round(time.perf_counter() - started, 2)
        (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        self.config = root / "dovecot.conf"
        dh = Path("/usr/share/dovecot/dh.pem")
        self.config.write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mssante-bench-{os.getpid()}
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{cert}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={root}/home/%u
}}
first_valid_uid = {mail_user.pw_uid}
first_valid_gid = {mail_user.pw_gid}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""
        )
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(self.config)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                    raise RuntimeError(f"Dovecot did not start: {log[-2000:]}") from None
                time.sleep(0.1)
        self.version = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()

    @staticmethod
    def _write_maildir(maildir: Path, messages: int, size: int) -> None:
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        message = mailbox(messages, size)
        base = int(time.time()) - messages
        for seq in range(messages):
            # Names sort in delivery order, as Dovecot gives UIDs to new files in name order.
            (maildir / "cur" / f"{base + seq}.M{seq:06d}P{os.getpid()}.bench:2,").write_bytes(message(seq))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the workload ------------------------------------------------------------------------------------
def _connector(port: int, ca_file: str) -> Connect:
    context = ssl.create_default_context(cafile=ca_file)

    def connect() -> imaplib.IMAP4_SSL:
        imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
        imap.login(USER, PASSWORD)
        return imap

    return connect


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 4)


def _median(fn: Any, repeat: int) -> float:
    return round(statistics.median(_timed(fn) for _ in range(repeat)), 4)


def _single(connect: Connect, messages: int, fetches: int, repeat: int) -> dict[str, Any]:
    """Each timing is the median of ``repeat`` runs, except the first SELECT and the first
    ENVELOPE fetch (cold: nothing of the structures rendered or cached yet), measured once."""
    imap = connect()
    out: dict[str, Any] = {}
    out["select_first_s"] = _timed(lambda: imap.select("INBOX"))
    out["select_s"] = _median(lambda: imap.select("INBOX"), repeat)
    out["uid_fetch_flags_s"] = _median(lambda: imap.uid("FETCH", "1:*", "(FLAGS)"), repeat)
    out["fetch_envelope_cold_s"] = _timed(lambda: imap.fetch("1:*", "(ENVELOPE)"))
    out["fetch_envelope_warm_s"] = _median(lambda: imap.fetch("1:*", "(ENVELOPE)"), repeat)
    found: list[Any] = []
    out["uid_search_text_rare_s"] = _median(lambda: found.append(imap.uid("SEARCH", "TEXT", RARE)), repeat)
    out["uid_search_text_hits"] = len(found[0][1][0].split())
    rng = random.Random(7)
    numbers = [rng.randint(1, messages) for _ in range(fetches)]
    elapsed = _timed(lambda: [imap.fetch(str(n), "(BODY.PEEK[])") for n in numbers])
    out["body_fetches"] = fetches
    out["body_fetches_per_s"] = round(fetches / elapsed, 1)
    imap.logout()
    return out


def _mixed(connect: Connect, messages: int, clients: int, seconds: float) -> dict[str, Any]:
    counts = [0] * clients
    errors: list[str] = []
    ready = threading.Barrier(clients + 1)
    stop = [0.0]

    def worker(index: int) -> None:
        imap = connect()
        imap.select("INBOX")
        rng = random.Random(index)
        ready.wait()
        try:
            while time.perf_counter() < stop[0]:
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
        except Exception as exc:  # reported in the JSON, not hidden
            errors.append(repr(exc))
        imap.logout()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds
    start = time.perf_counter()
    ready.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": round(elapsed, 2), "ops": sum(counts),
            "ops_per_s": round(sum(counts) / elapsed, 1), "errors": errors[:5]}  # fmt: skip


def _workload(connect: Connect, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "single_connection": _single(connect, args.messages, args.fetches, args.repeat),
        "mixed": _mixed(connect, args.messages, args.clients, args.seconds),
    }


def _ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """How many times slower we are: time ratios ours/theirs, rate ratios theirs/ours."""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    single, other = ours["single_connection"], theirs["single_connection"]
    out: dict[str, float | None] = {
        key: ratio(single[key], other[key]) for key in single if key.endswith("_s")
    }
    out["body_fetches_per_s"] = ratio(other["body_fetches_per_s"], single["body_fetches_per_s"])
    out["mixed_ops_per_s"] = ratio(theirs["mixed"]["ops_per_s"], ours["mixed"]["ops_per_s"])
    return out


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
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (median reported)")
    parser.add_argument("--with-dovecot", action="store_true", help="also measure Dovecot, same run")
    parser.add_argument("--pg-url", default="", help="our store on PostgreSQL (a database is created)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mssante-imap-bench-") as tmp:
        root = Path(tmp)
        ports: Any = multiprocessing.Queue()
        (root / "mssante").mkdir(mode=0o700)
        pg_name, url = (
            _pg_database(args.pg_url) if args.pg_url else ("", f"sqlite:///{root / 'mssante' / 'mssante.db'}")
        )
        served = (str(root / "mssante"), url, args.messages, args.size, str(root / "tls"), ports)
        proc = multiprocessing.Process(target=_server_process, args=served)
        proc.start()
        dovecot: Dovecot | None = None
        try:
            port, ca_file, fill = ports.get(timeout=3600)
            result: dict[str, Any] = {
                "benchmark": "imap_ops",
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "messages": args.messages,
                "message_size": args.size,
                "mssante": {"store": make_url(url).get_backend_name(), "fill_seconds": round(fill, 2)},
                "dovecot": None,
            }
            result["mssante"].update(_workload(_connector(port, ca_file), args))
            result["mssante"]["server_peak_rss_kib"] = _peak_rss_kib(proc.pid or 0)
            if args.with_dovecot:
                dovecot = Dovecot(root / "dovecot", root / "tls" / "server.pem", args.messages, args.size)
                theirs: dict[str, Any] = {"version": dovecot.version, "fill_seconds": dovecot.fill_seconds}
                theirs.update(_workload(_connector(dovecot.port, ca_file), args))
                result["dovecot"] = theirs
                result["ratios_ours_vs_dovecot"] = _ratios(result["mssante"], theirs)
        finally:
            if dovecot is not None:
                dovecot.stop()
            proc.terminate()
            proc.join()
            if pg_name:
                _drop_pg(args.pg_url, pg_name)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
