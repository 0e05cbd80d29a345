"""Raw SMTP over a socket for hostile tests: exact bytes out, reply lines in, no client magic."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import time
from pathlib import Path

from tests.demo_server import DemoServer

# An SMTP reply line (RFC 5321 §4.2): three digits, SP or "-", printable text, CRLF.
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9]([ -][^\x00-\x1f\x7f]*)?\r\n")


class Wire:
    """One SMTP connection spoken byte by byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    @classmethod
    def open(
        cls,
        demo: DemoServer,
        listener: str = "submission",
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10,
    ) -> Wire:
        sock = socket.create_connection(("127.0.0.1", demo.port(listener)), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        wire = cls(sock)
        greeting = wire.reply()
        assert greeting and greeting[-1].startswith(b"220"), greeting
        return wire

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline(70000)

    def reply(self) -> list[bytes]:
        """One complete (possibly multi-line) reply; [] when the server closed."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line:
                return lines
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def command(self, text: str | bytes) -> list[bytes]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command("STARTTLS")[-1].startswith(b"220")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def login(self, login: str, password: str) -> None:
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        assert self.command(f"AUTH PLAIN {token}")[-1].startswith(b"235")

    def drain(self) -> tuple[list[bytes], bool]:
        """Every line until the server closes the connection (or resets it); the flag says the
        server fell silent instead (the socket's time-out)."""
        lines: list[bytes] = []
        try:
            while line := self.line():
                lines.append(line)
        except TimeoutError:
            return lines, True
        except OSError:
            pass
        return lines, False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def client_tls(demo: DemoServer, cert: tuple[str | Path, str | Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=demo.ca_cert)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def served_within(demo: DemoServer, seconds: float = 1.0) -> float:
    """Time for a fresh client to get the greeting and an EHLO answer (asserted under ``seconds``)."""
    start = time.monotonic()
    wire = Wire.open(demo, timeout=seconds)
    try:
        assert wire.command("EHLO fresh.client.test")[-1].startswith(b"250 ")
    finally:
        wire.close()
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"a fresh client waited {elapsed:.2f} s"
    return elapsed
