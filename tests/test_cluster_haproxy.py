"""The whole cluster: two ``mssante serve`` nodes on one PostgreSQL database behind an HAProxy
started by the test (TCP mode, PROXY protocol v2, health checks on ``/health/ready``).

Clients connect to HAProxy only: an IDLE session on one node hears of a message submitted
through the other, the audit trail names the real client address, and a node killed with
SIGKILL under load loses no acknowledged message (HAProxy takes it out; clients retry).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL, _create_pg_database, _drop_pg_database
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message
from tests.mailbox import StoredMail

BALANCER, CLIENT = "127.0.0.2", "127.0.0.3"
USER = "claire.martin@demo.mssante.fr"
TO = "paul.durand@demo.mssante.fr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(nodes: list[DemoServer], ports: dict[str, int]) -> str:
    """The configuration the README shows, on loopback ports: TCP mode, PROXY v2 to the nodes,
    round robin, and a connection refused by a dead node tried again on the other one."""
    text = (
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
        "  option redispatch\n  retries 3\n"
    )
    for name, port in ports.items():
        text += f"frontend {name}\n  bind 127.0.0.1:{port}\n  default_backend {name}\n"
        text += f"backend {name}\n  balance roundrobin\n"
        for i, node in enumerate(nodes):
            text += f"  server n{i} 127.0.0.1:{node.port(name)} send-proxy-v2 source {BALANCER}\n"
    return text


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[DemoServer], dict[str, int], str]]:
    if not PG_URL:
        pytest.skip("MSSANTE_TEST_PG_URL is not set: a cluster needs PostgreSQL")
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; ./dev test installs it as root)")
    name, url = _create_pg_database()
    data = tmp_path_factory.mktemp("cluster") / "data"
    nodes: list[DemoServer] = []
    process = None
    try:
        for node in ("a", "b"):
            env = {
                "MSSANTE_DATABASE__URL": url,
                "MSSANTE_SERVER__HOSTNAME": f"node-{node}.demo.mssante.fr",
                "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "200",
            }
            for section in ("SMTP", "IMAP", "HTTP"):
                env[f"MSSANTE_{section}__PROXY_PROTOCOL"] = "true"
                env[f"MSSANTE_{section}__PROXY_TRUSTED"] = json.dumps([BALANCER])
            nodes.append(start_demo(data, env))
        ports = {listener: _free_port() for listener in ("submission", "imaps")}
        config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
        config.write_text(haproxy_config(nodes, ports))
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stderr=(config.parent / "haproxy.log").open("w")
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["imaps"]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (config.parent / "haproxy.log").read_text()
                time.sleep(0.05)
        yield nodes, ports, url
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        for node in nodes:
            node.stop()
        _drop_pg_database(name)


def _password(node: DemoServer) -> str:
    accounts = json.loads((node.data_dir / "demo.json").read_text())["accounts"]
    return str(next(a["password"] for a in accounts if a["address"] == USER))


def _idle(node: DemoServer, port: int) -> ssl.SSLSocket:
    """An IMAP session from the client's address, through HAProxy, idling on INBOX."""
    sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(CLIENT, 0))
    tls = ssl.create_default_context(cafile=node.ca_cert).wrap_socket(sock, server_hostname="127.0.0.1")
    tls.sendall(f'a1 LOGIN {USER} "{_password(node)}"\r\na2 SELECT INBOX\r\na3 IDLE\r\n'.encode())
    _until(tls, b"+ idling")
    return tls


def _until(sock: ssl.SSLSocket, wanted: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while wanted not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def _submit(node: DemoServer, port: int, subject: str, to: str = TO) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(CLIENT, 0)) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=node.ca_cert))
        smtp.login(USER, _password(node))
        smtp.sendmail(USER, [to], make_message(USER, to, subject))


def test_idle_across_nodes_through_haproxy_with_real_addresses(
    cluster: tuple[list[DemoServer], dict[str, int], str],
) -> None:
    nodes, ports, url = cluster
    # Round robin: two sessions in a row land on the two nodes; both idle, one hears of the
    # message through the node it is not on.
    sessions = [_idle(nodes[0], ports["imaps"]), _idle(nodes[0], ports["imaps"])]
    try:
        _submit(nodes[0], ports["submission"], f"via haproxy {uuid.uuid4().hex[:6]}", to=USER)
        acked = time.monotonic()
        for session in sessions:
            _until(session, b"EXISTS", timeout=2)
            assert time.monotonic() - acked < 1.0
    finally:
        for session in sessions:
            session.close()
    done = subprocess.run(
        [*_cli(nodes[0]), "audit", "show", "--bal", USER, "--json", "--limit", "50"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "MSSANTE_DATABASE__URL": url},
    )  # fmt: skip
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    selects = [r["source"] for r in records if r["action"] == "folder.select"]
    assert len(selects) >= 2 and all(s.startswith(f"imap:{CLIENT}:") for s in selects[:2]), selects
    assert not any(BALANCER in (r["source"] or "") for r in records), records


def _cli(node: DemoServer) -> list[str]:
    import sys

    return [sys.executable, "-m", "mssante", "--data-dir", str(node.data_dir)]


def test_sigkill_of_a_node_under_load_loses_no_acknowledged_message(
    cluster: tuple[list[DemoServer], dict[str, int], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, ports, url = cluster
    acked: list[str] = []
    uncertain: Counter[str] = Counter()
    killed = False
    deadline = time.monotonic() + 25
    while len(acked) < 24 and time.monotonic() < deadline:
        subject = f"sigkill {uuid.uuid4().hex}"
        for _attempt in range(20):
            try:
                _submit(nodes[1], ports["submission"], subject)
                acked.append(subject)
                break
            except (OSError, smtplib.SMTPException) as exc:
                code = getattr(exc, "smtp_code", 0)
                assert not 500 <= code < 600, f"a 5xx while a node died: {exc}"
                uncertain[subject] += 1
                time.sleep(0.3)
        if len(acked) == 8 and not killed:
            nodes[0].process.send_signal(signal.SIGKILL)  # no drain, no goodbye
            nodes[0].process.wait()
            killed = True
    assert killed and len(acked) >= 16, (len(acked), dict(uncertain))
    monkeypatch.setenv("MSSANTE_DATABASE__URL", url)
    view = StoredMail(Path(nodes[1].data_dir))
    try:
        stored = Counter(
            line.split(b":", 1)[1].strip().decode()
            for raw in view.messages(TO)
            for line in raw.split(b"\r\n")
            if line.startswith(b"Subject: sigkill ")
        )
    finally:
        view.close()
    assert all(stored[s] >= 1 for s in acked), [s for s in acked if not stored[s]]
    assert all(stored[s] <= 1 + uncertain[s] for s in acked), stored
