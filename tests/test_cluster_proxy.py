"""Behind HAProxy: the SMTP, IMAP and HTTP listeners read the PROXY protocol (v1 and v2)
from trusted balancers only, and the real client's address reaches the per-address limits,
``Received:`` and the audit trail.

Loopback addresses play the parts: 127.0.0.2 is the balancer (the only trusted address),
127.0.0.3 a client behind it, 127.0.0.1 a client connecting directly.
"""

from __future__ import annotations

import http.client
import imaplib
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from mssante.proxy_protocol import V2_SIGNATURE
from tests.demo_server import DemoServer, start_demo
from tests.helpers import make_message

BALANCER, CLIENT = "127.0.0.2", "127.0.0.3"
USER = "claire.martin@demo.mssante.fr"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {"MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "2"}
    for section in ("SMTP", "IMAP", "HTTP"):
        env[f"MSSANTE_{section}__PROXY_PROTOCOL"] = "true"
        env[f"MSSANTE_{section}__PROXY_TRUSTED"] = json.dumps([BALANCER])
    server = start_demo(tmp_path_factory.mktemp("proxied") / "data", env)
    try:
        yield server
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def haproxy(node: DemoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """HAProxy from Debian in TCP mode: TLS stays end to end, the PROXY header says who connected."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy; ./dev test installs it as root)")
    ports = {name: _free_port() for name in ("submission", "imaps", "http")}
    sends = {"submission": "send-proxy", "imaps": "send-proxy-v2", "http": "send-proxy-v2"}
    config = "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
    for name, port in ports.items():
        config += (
            f"frontend {name}\n  bind 127.0.0.1:{port}\n  default_backend {name}\n"
            f"backend {name}\n  server n1 127.0.0.1:{node.port(name)} {sends[name]} source {BALANCER}\n"
        )
    path = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    path.write_text(config)
    process = subprocess.Popen([binary, "-db", "-f", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError as exc:
                    if process.poll() is not None or time.monotonic() > deadline:
                        why = process.stderr.read() if process.stderr else ""
                        raise RuntimeError(f"haproxy did not start: {why}") from exc
                    time.sleep(0.05)
        yield ports
    finally:
        process.terminate()
        process.wait(10)


def _context(node: DemoServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=node.ca_cert)


def _password(node: DemoServer) -> str:
    return str(node.account(USER)["password"])


def _audit(node: DemoServer) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    done = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(node.data_dir), "audit", "show", "--bal", USER,
         "--json", "--limit", "500"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


class _IMAPFrom(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS, connecting from a chosen source address."""

    def __init__(self, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _raw(node: DemoServer, listener: str, source: str, header: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port(listener)), 5, source_address=(source, 0))
    if header:
        sock.sendall(header)
    return sock


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


# -- through HAProxy ----------------------------------------------------------------------------
def test_smtp_through_haproxy_sees_the_client(node: DemoServer, haproxy: dict[str, int]) -> None:
    subject = f"behind haproxy {uuid.uuid4().hex[:8]}"
    with smtplib.SMTP("127.0.0.1", haproxy["submission"], timeout=30, source_address=(CLIENT, 0)) as smtp:
        smtp.starttls(context=_context(node))
        smtp.login(USER, _password(node))
        smtp.sendmail(USER, [USER], make_message(USER, USER, subject))
    with imaplib.IMAP4_SSL("127.0.0.1", node.port("imaps"), ssl_context=_context(node)) as imap:
        imap.login(USER, _password(node))
        imap.select("INBOX")
        _, found = imap.search(None, "SUBJECT", f'"{subject}"')
        _, data = imap.fetch(found[0].split()[-1], "(BODY.PEEK[HEADER.FIELDS (RECEIVED)])")
    received = data[0][1].decode()  # type: ignore[index,union-attr]
    assert f"[{CLIENT}]" in received, received
    assert BALANCER not in received


def test_imap_through_haproxy_v2_is_traced_with_the_client(node: DemoServer, haproxy: dict[str, int]) -> None:
    with _IMAPFrom(haproxy["imaps"], CLIENT, _context(node)) as imap:
        imap.login(USER, _password(node))
        imap.select("Archive")
    selects = [r for r in _audit(node) if r["action"] == "folder.select" and r["object"] == "Archive"]
    assert selects and selects[0]["source"].startswith(f"imap:{CLIENT}:"), selects[:1]


def test_http_through_haproxy_v2_sees_the_client(node: DemoServer, haproxy: dict[str, int]) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", haproxy["http"], context=_context(node), timeout=10, source_address=(CLIENT, 0)
    )
    conn.request("GET", "/health/live")
    body = json.loads(conn.getresponse().read())
    assert body["client"] == CLIENT and body["status"] == "live"
    conn.request("GET", "/health/ready")
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert json.loads(response.read())["database"] is True


# -- PROXY headers written by hand ----------------------------------------------------------------
def test_per_address_limits_count_the_real_clients(node: DemoServer) -> None:
    """The SMTP cap is 2 connections per address: two from one client behind the balancer fill
    it, another client behind the same balancer still gets in."""

    def claim(client: str) -> tuple[socket.socket, bytes]:
        header = f"PROXY TCP4 {client} 127.0.0.1 40000 587\r\n".encode()
        sock = _raw(node, "submission", BALANCER, header)
        return sock, _line(sock)

    opened = [claim("203.0.113.7"), claim("203.0.113.7")]
    try:
        assert all(reply.startswith(b"220 ") for _, reply in opened), opened
        third, reply = claim("203.0.113.7")
        third.close()
        assert reply.startswith(b"421 4.7.0"), reply
        other, reply = claim("203.0.113.8")
        other.close()
        assert reply.startswith(b"220 "), reply
    finally:
        for sock, _ in opened:
            sock.close()


def test_v2_header_then_implicit_tls(node: DemoServer) -> None:
    """A v2 header (written from the specification) before the TLS handshake of port imaps."""
    client = "198.51.100.4"
    header = (
        V2_SIGNATURE + bytes.fromhex("2111000c") + socket.inet_aton(client) + socket.inet_aton("127.0.0.1")
    )
    header += (51000).to_bytes(2, "big") + (993).to_bytes(2, "big")
    sock = _raw(node, "imaps", BALANCER, header)
    with _context(node).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert _line(tls).startswith(b"* OK")
        tls.sendall(f'a1 LOGIN {USER} "{_password(node)}"\r\na2 SELECT Drafts\r\na3 LOGOUT\r\n'.encode())
        while b"a3 OK" not in (line := _line(tls)):
            assert line, "connection closed"
    selects = [r for r in _audit(node) if r["action"] == "folder.select" and r["object"] == "Drafts"]
    assert selects and selects[0]["source"].startswith(f"imap:{client}:51000"), selects[:1]


def test_a_trusted_balancer_without_header_is_refused(node: DemoServer) -> None:
    for listener, first in (("submission", b"EHLO x\r\n"), ("imap", b"a1 CAPABILITY\r\n")):
        sock = _raw(node, listener, BALANCER, first)
        try:
            answer = sock.recv(100)
        except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
            answer = b""
        sock.close()
        assert answer == b"", listener  # no greeting: the connection is refused


def test_an_untrusted_peer_cannot_claim_an_address(node: DemoServer) -> None:
    """A direct client (not a balancer) is served under its own address; its PROXY line is
    just a command the protocol does not know."""
    sock = _raw(node, "submission", "127.0.0.1")
    try:
        assert _line(sock).startswith(b"220 ")
        sock.sendall(b"PROXY TCP4 203.0.113.66 127.0.0.1 40000 587\r\n")
        assert _line(sock)[:1] == b"5"  # refused like any unknown command before STARTTLS
    finally:
        sock.close()
    sock = _raw(node, "imap", "127.0.0.1")
    try:
        assert _line(sock).startswith(b"* OK")
        sock.sendall(b"PROXY TCP4 203.0.113.66 127.0.0.1 40000 143\r\n")
        assert _line(sock).startswith(b"PROXY BAD"), "an IMAP command tagged PROXY, refused"
    finally:
        sock.close()
