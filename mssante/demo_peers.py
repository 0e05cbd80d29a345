"""``mssante demo peers``: two operators of the trust space on one machine.

The demo operator (``demo.mssante.fr``, the data directory given) and a peer operator
(``autre.mssante.fr`` by default, its own data directory) run as two ``mssante serve --demo``
processes under this one. They share the development CA (each has its own server
certificate, also used as its client certificate when relaying), publish their DKIM keys
where the other looks them up, put each other on their liste blanche and reach each other by
static routes, so mail between them goes over mutual TLS exactly as between two operators.

Both ``demo.json`` files gain ``peers``: the other operator's domain, data directory, process
id, listeners and accounts. Stopping the peer's process (its ``pid``) shows the queue at work:
``mssante queue list`` lists the retries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from mssante.auth.devpki import DevCA, ensure_dev_pki
from mssante.config import Settings, load_settings
from mssante.db import make_engine
from mssante.demo import operator_domain
from mssante.runtime import initialise
from mssante.smtp.dkim import generate_key, key_path, txt_record

PEER_DOMAIN = "autre.mssante.fr"
ACTOR = "demo-peers"
# What the peer inherits of this process's MSSANTE_* environment (retry pace, logging, auth
# throttling); nothing that would make it share the demo operator's ports, database or keys.
INHERITED = ("MSSANTE_RELAY__", "MSSANTE_LOG__", "MSSANTE_AUTH__BRUTEFORCE__")
PORT_KEYS = ("SUBMISSION_PORT", "SUBMISSIONS_PORT", "RELAY_PORT")


@dataclass
class Operator:
    domain: str
    data_dir: Path
    args: list[str]  # global options of its `mssante … serve --demo`
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def demo_json(self) -> Path:
        return self.data_dir / "demo.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(ca_dir: Path, certs: Path, hostname: str, domain: str) -> tuple[Path, Path]:
    """A server (and relay client) certificate naming the operator's domain, from the shared CA."""
    ca = DevCA.load(ca_dir)
    certs.mkdir(parents=True, exist_ok=True, mode=0o700)
    issued = ca.issue_server(certs, [hostname, domain, "localhost", "127.0.0.1"])
    return issued.cert_file, issued.key_file


def _share_ca(ca_dir: Path, peer_certs: Path) -> None:
    """The peer's demo PKI is the same CA (its APP certificates are then trusted by both)."""
    peer_certs.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in ("ca.pem", "ca.key"):
        shutil.copy2(ca_dir / name, peer_certs / name)
    os.chmod(peer_certs / "ca.key", 0o600)


def _publish_dkim(settings: Settings, domain: str, records: Path) -> None:
    assert settings.dkim.keys_dir is not None
    selector = settings.dkim.selector
    generate_key(settings.dkim.keys_dir, domain, selector)
    record = txt_record(key_path(settings.dkim.keys_dir, domain, selector), domain, selector)
    (records / f"{selector}._domainkey.{domain}.txt").write_text(record.split(" IN TXT ", 1)[1].strip('"'))


def _whitelist(settings: Settings, domains: list[str]) -> None:
    engine = make_engine(settings.database_url, writer=True)
    try:
        with Session(engine) as session, session.begin():
            for domain in domains:
                annuaire_service.add_operator_domain(session, domain=domain, actor=ACTOR)
    finally:
        engine.dispose()


def prepare(main: Settings, global_args: list[str], peer_dir: Path, peer_domain: str) -> list[Operator]:
    """Set up both operators (idempotent) and say how each is to be started."""
    domain = operator_domain(main)
    if peer_domain == domain:
        raise ValueError(f"the peer needs a domain of its own, not {domain}")
    peer_hostname = f"mx.{peer_domain}"
    peer = load_settings(
        None,
        server={"data_dir": str(peer_dir), "domains": [peer_domain], "hostname": peer_hostname},
    )
    initialise(main)
    initialise(peer)
    ca_dir = main.data_dir / "certs"
    ensure_dev_pki(ca_dir, main.server.hostname)
    _share_ca(ca_dir, peer_dir / "certs")
    main_cert = _certificates(ca_dir, main.data_dir / "certs" / "relay", main.server.hostname, domain)
    # The peer's own server.pem (kept by its demo set-up since it exists) names its domain.
    peer_cert = _certificates(ca_dir, peer_dir / "certs", peer_hostname, peer_domain)
    records = main.data_dir / "dkim-records"
    records.mkdir(exist_ok=True)
    _publish_dkim(main, domain, records)
    _publish_dkim(peer, peer_domain, records)
    for settings in (main, peer):
        _whitelist(settings, [domain, peer_domain])

    main_relay = main.smtp.relay_port or _free_port()
    peer_relay = _free_port()
    common = {"MSSANTE_DKIM__RECORDS_DIR": str(records), "MSSANTE_TLS__CA_FILE": str(ca_dir / "ca.pem")}
    main_env = {
        **os.environ,
        **common,
        "MSSANTE_TLS__CERT_FILE": str(main_cert[0]),
        "MSSANTE_TLS__KEY_FILE": str(main_cert[1]),
        "MSSANTE_SMTP__RELAY_PORT": str(main_relay),
        "MSSANTE_RELAY__ROUTES": json.dumps({peer_domain: f"127.0.0.1:{peer_relay}"}),
    }
    peer_env = {
        k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_") or k.startswith(INHERITED)
    }
    peer_env.update(common)
    peer_env.update({f"MSSANTE_SMTP__{key}": "0" for key in PORT_KEYS})
    peer_env.update({"MSSANTE_IMAP__PORT": "0", "MSSANTE_IMAP__TLS_PORT": "0", "MSSANTE_HTTP__PORT": "0"})
    peer_env.update(
        {
            "MSSANTE_SERVER__DOMAINS": json.dumps([peer_domain]),
            "MSSANTE_SERVER__HOSTNAME": peer_hostname,
            "MSSANTE_TLS__CERT_FILE": str(peer_cert[0]),
            "MSSANTE_TLS__KEY_FILE": str(peer_cert[1]),
            "MSSANTE_SMTP__RELAY_PORT": str(peer_relay),
            "MSSANTE_RELAY__ROUTES": json.dumps({domain: f"127.0.0.1:{main_relay}"}),
        }
    )
    return [
        Operator(domain, main.data_dir, global_args, main_env),
        Operator(peer_domain, peer_dir, ["--data-dir", str(peer_dir)], peer_env),
    ]


def _start(op: Operator, timeout: float = 120) -> dict[str, Any]:
    if op.demo_json.exists():
        op.demo_json.unlink()  # rewritten once its listeners are up
    op.process = subprocess.Popen([sys.executable, "-m", "mssante", *op.args, "serve", "--demo"], env=op.env)
    deadline = time.monotonic() + timeout
    while not op.demo_json.exists():
        if op.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the operator {op.domain} did not start (exit {op.process.poll()})")
        time.sleep(0.1)
    return dict(json.loads(op.demo_json.read_text()))


def _running(op: Operator) -> bool:
    return op.process is not None and op.process.poll() is None


def _describe(op: Operator, doc: dict[str, Any]) -> dict[str, Any]:
    assert op.process is not None
    return {
        "domain": op.domain,
        "data_dir": str(op.data_dir.resolve()),
        "pid": op.process.pid,
        "ca_cert": doc.get("ca_cert"),
        "listeners": doc.get("listeners", []),
        "accounts": doc.get("accounts", []),
    }


def _add_peers(op: Operator, doc: dict[str, Any], peers: list[dict[str, Any]]) -> None:
    doc["peers"] = peers
    tmp = op.demo_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    os.chmod(tmp, 0o600)
    tmp.replace(op.demo_json)


def run(operators: list[Operator], say: Any = print) -> int:
    """Start both operators, cross-reference them in demo.json, run until SIGINT/SIGTERM."""
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        docs = [_start(op) for op in operators]
        described = [_describe(op, doc) for op, doc in zip(operators, docs, strict=True)]
        for i, (op, doc) in enumerate(zip(operators, docs, strict=True)):
            _add_peers(op, doc, [d for j, d in enumerate(described) if j != i])
        for d in described:
            say(f"operator {d['domain']}: pid {d['pid']}, data {d['data_dir']}/demo.json")
        say("ready: mail between the two operators goes over mutual TLS; Ctrl-C stops both")
        # Each is polled (and reaped) every time: one operator may be stopped alone.
        while not stopping and any(
            [op.process is not None and op.process.poll() is None for op in operators]
        ):
            time.sleep(0.2)
    finally:
        for op in operators:
            if op.process is not None and op.process.poll() is None:
                op.process.send_signal(signal.SIGTERM)
        for op in operators:
            if op.process is not None:
                try:
                    op.process.wait(60)
                except subprocess.TimeoutExpired:
                    op.process.kill()
    return 0
