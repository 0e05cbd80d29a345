"""Hostile HTTP requests against ``mssante serve --demo`` over TLS: bodies are limited while
they are read (``http.max_body_bytes``, 1 MiB by default), a DMP route without a valid token is
refused before its body is read, and errors never echo what was sent."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.demo_server import DemoServer

MARTIN_IDNAT = "810100000011"
LIMIT = 1024 * 1024


@pytest.fixture
def https(demo: DemoServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"https://localhost:{demo.port('http')}",
        verify=ssl.create_default_context(cafile=demo.ca_cert),
        timeout=30,
    ) as client:
        yield client


def patient_ins(demo: DemoServer) -> str:
    return str(next(a for a in demo.doc["accounts"] if a["kind"] == "patient")["address"]).split("@", 1)[0]


def head_only(demo: DemoServer, request: str) -> tuple[bytes, float]:
    """Send a request's head and none of the body it announces; the server's answer and how
    long it took (it cannot have waited for a body that never comes)."""
    ctx = ssl.create_default_context(cafile=demo.ca_cert)
    with (
        socket.create_connection(("127.0.0.1", demo.port("http")), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        started = time.monotonic()
        tls.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := tls.recv(4096)):
            answer += chunk
        return answer, time.monotonic() - started


def test_announced_oversized_body_is_refused_before_reading(demo: DemoServer) -> None:
    head = (
        f"PUT /dmp/patients/{patient_ins(demo)}/opposition HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n"
    )
    answer, elapsed = head_only(demo, head)
    assert answer.startswith(b"HTTP/1.1 413 ") and elapsed < 5


def test_no_token_is_refused_before_the_body(demo: DemoServer) -> None:
    for auth in ("", "Authorization: Basic YTpi\r\n", "Authorization: Bearer not-a-token\r\n"):
        head = (
            f"PUT /dmp/patients/{patient_ins(demo)}/opposition HTTP/1.1\r\nHost: localhost\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        answer, elapsed = head_only(demo, head)
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer") and elapsed < 5


def test_streamed_body_is_cut_at_the_limit(demo: DemoServer, https: httpx.Client) -> None:
    """No Content-Length (chunked): the limit is applied to the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        for _ in range(128):  # 8 MiB offered
            yield b" " * 65536

    token = demo.token(MARTIN_IDNAT)
    response = https.put(
        f"/dmp/patients/{patient_ins(demo)}/opposition",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        content=chunks(),
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {LIMIT} bytes"}
    # A body just under the limit is read, and judged by the DMP rules (a doctor may not set a
    # patient's opposition).
    response = https.put(
        f"/dmp/patients/{patient_ins(demo)}/opposition",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        content=b" " * (LIMIT - 100) + b'{"value": false}',
    )
    assert response.status_code == 403 and response.json()["code"] == 906, response.text


def test_validation_errors_do_not_echo_the_request(demo: DemoServer, https: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {demo.token(MARTIN_IDNAT)}"}
    url = f"/dmp/patients/{patient_ins(demo)}/opposition"
    for body in ({"value": "SECRET-ECHO-1"}, ["SECRET-ECHO-2"], {"other": "SECRET-ECHO-3"}):
        response = https.put(url, headers=headers, json=body)
        assert response.status_code == 422
        assert "SECRET-ECHO" not in response.text and "input" not in response.json()["detail"][0]
    response = https.put(
        url, headers={**headers, "Content-Type": "application/json"}, content=b'{"SECRET-ECHO'
    )
    assert response.status_code == 422 and "SECRET-ECHO" not in response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
