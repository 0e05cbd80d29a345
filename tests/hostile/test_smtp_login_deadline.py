"""SMTP sessions that never log in are closed at a fixed deadline, however busy they keep the
session (the idle time-out alone restarts at every command): submission until AUTH, relay-in
until TLS. A client that logged in in time is not affected."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.demo_server import DemoServer, start_demo

DEADLINE = 3.0
DOCTOR = "claire.martin@demo.mssante.fr"


def _serving(factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> Iterator[DemoServer]:
    demo = start_demo(factory.mktemp(name) / "data", env)
    try:
        yield demo
    finally:
        assert demo.stop() == 0, demo.log()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from _serving(
        tmp_path_factory, "smtp-deadline", {"MSSANTE_SMTP__LOGIN_TIMEOUT_SECONDS": str(DEADLINE)}
    )


def _busy_until_closed(port: int) -> tuple[float, list[bytes]]:
    """EHLO, then a NOOP every 0.3 s (each answered, so never idle) until the server closes."""
    started = time.monotonic()
    lines: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        lines.append(reader.readline())
        sock.sendall(b"EHLO client.example\r\n")
        while True:
            line = reader.readline()
            lines.append(line)
            if not line or line.startswith(b"250 "):
                break
        while time.monotonic() - started < DEADLINE + 10:
            try:
                sock.sendall(b"NOOP\r\n")
            except OSError:
                break
            line = reader.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(b"421"):
                assert reader.readline() == b""  # closed after the reply
                break
            time.sleep(0.3)
    return time.monotonic() - started, lines


@pytest.mark.parametrize("listener", ["submission", "relay"])
def test_a_busy_client_that_never_logs_in_is_closed_at_the_deadline(
    server: DemoServer, listener: str
) -> None:
    elapsed, lines = _busy_until_closed(server.port(listener))
    assert lines[-1] == b"421 4.7.0 Login timeout, closing connection\r\n", lines[-3:]
    assert DEADLINE - 0.5 <= elapsed <= DEADLINE + 3, elapsed
    assert sum(line.startswith(b"250 ") for line in lines) >= 3  # it was served until then


def test_a_client_that_logged_in_in_time_keeps_its_session(server: DemoServer) -> None:
    context = ssl.create_default_context(cafile=server.ca_cert)
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as client:
        client.starttls(context=context)
        client.login(DOCTOR, server.account(DOCTOR)["password"])
        time.sleep(DEADLINE + 1)
        assert client.noop()[0] == 250


IDLE = 1.5


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    yield from _serving(tmp_path_factory, "smtp-idle", {"MSSANTE_SMTP__TIMEOUT_SECONDS": str(IDLE)})


def test_the_idle_timeout_restarts_at_every_command_and_closes_a_silent_session(
    idle_server: DemoServer,
) -> None:
    """Commands more often than the idle time-out keep the session; silence ends it (421)."""
    with socket.create_connection(("127.0.0.1", idle_server.port("submission")), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        for _ in range(6):  # 2.4 s in all, longer than the time-out
            sock.sendall(b"NOOP\r\n")
            assert reader.readline().startswith(b"250 ")
            time.sleep(0.4)
        silent = time.monotonic()
        line = reader.readline()
        waited = time.monotonic() - silent
    assert line.startswith(b"421 "), line
    assert IDLE - 0.5 <= waited <= IDLE + 2, waited
