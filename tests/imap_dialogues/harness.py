"""Test harness for the IMAP server: a throw-away CA, an in-memory gate, a running server,
and the runner of scripted dialogues (``*.dialogue`` files in this directory).

Dialogue format, one directive per line:

``C: text``      the client sends ``text`` + CRLF (``C2:`` for a second connection)
``S: pattern``   the next server line must match ``pattern`` (``S2:`` on connection 2);
                 ``{*}`` matches any text, ``{N}`` a number; a literal the server sends is
                 shown inline with its CR LF written ``\\r\\n``
``# ...``        a comment; blank lines are ignored
``@starttls``    (connection 1) upgrade to TLS after the server's OK to STARTTLS
``@plain``       (first line only) connect without TLS instead of implicit TLS
``@settle``      wait 50 ms: the change feed reaches other sessions just after the author
                 hears its OK, so a step that depends on another session's change waits
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mssante.imap.gate import Principal, Refusal, Respond, decode_plain
from mssante.imap.server import ImapServer, Limits
from mssante.store.store import MessageStore
from mssante.tls import TLSInfo

DIALOGUES = Path(__file__).parent
USERS = {
    "alice": ("wonderland", "alice@demo.mssante.fr"),
    "bob": ("builder", "bob@demo.mssante.fr"),
}


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_tls(directory: Path) -> TLSFiles:
    """A CA and a localhost server certificate, made fresh for the test run."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mssante IMAP test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = directory / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(chain)
    client = ssl.create_default_context(cafile=str(ca_file))
    return TLSFiles(ca_file, server, client)


class DictGate:
    """PLAIN against a fixed table: login → (password, BAL). Stands in for ``mssante.auth``."""

    def __init__(self, users: dict[str, tuple[str, str]] | None = None) -> None:
        self.users = users or USERS

    def mechanisms(self, *, tls: TLSInfo) -> list[str]:
        return ["PLAIN"] if tls.active else []

    async def authenticate(
        self, mechanism: str, initial: str | None, respond: Respond, *, tls: TLSInfo, peer: str
    ) -> Principal | Refusal:
        if mechanism != "PLAIN":
            return Refusal("Unsupported mechanism", "CANNOT")
        text = initial if initial is not None else await respond("")
        decoded = decode_plain(text)
        if decoded is None:
            return Refusal("Malformed PLAIN response", None, status="BAD")
        authzid, login, password = decoded
        known = self.users.get(login)
        if known is None or known[0] != password or authzid not in ("", login):
            return Refusal("Invalid credentials")
        return Principal(actor=login, bal=known[1])


@dataclass
class Running:
    server: ImapServer
    tls: TLSFiles
    plain_port: int
    tls_port: int


@contextlib.asynccontextmanager
async def running_server(
    store: MessageStore, directory: Path, *, limits: Limits | None = None
) -> AsyncIterator[Running]:
    tls = make_tls(directory)
    server = ImapServer(store, DictGate(), tls_context=tls.server, limits=limits)
    plain = await server.start("127.0.0.1", 0)
    implicit = await server.start("127.0.0.1", 0, implicit_tls=True)
    try:
        yield Running(server, tls, plain.sockets[0].getsockname()[1], implicit.sockets[0].getsockname()[1])
    finally:
        for listener in (plain, implicit):
            listener.close()
        await server.close_connections()
        for listener in (plain, implicit):
            await listener.wait_closed()


# --- dialogues ------------------------------------------------------------------------------------


class Client:
    """A raw line-level IMAP client for dialogues (reads literals whole)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, running: Running, *, tls: bool = True) -> Client:
        if tls:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", running.tls_port, ssl=running.tls.client, server_hostname="localhost"
            )
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.plain_port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> str:
        """One logical response line, literals inline with CR LF shown as ``\\r\\n``."""
        out = b""
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"server closed the connection (after {out!r})")
            raw = raw.rstrip(b"\r\n")
            found = re.search(rb"\{(\d+)\}$", raw)
            if not found:
                return (out + raw).decode("utf-8", "replace")
            literal = await asyncio.wait_for(self.reader.readexactly(int(found.group(1))), timeout)
            out += raw + b"\\r\\n" + literal.replace(b"\r\n", b"\\r\\n")

    async def start_tls(self, running: Running) -> None:
        await self.writer.start_tls(running.tls.client, server_hostname="localhost")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\*\}|\{N\})", expected)
    regex = "".join(".*" if p == "{*}" else r"\d+" if p == "{N}" else re.escape(p) for p in parts)
    return re.compile(regex, re.DOTALL)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def run_dialogue(running: Running, path: Path) -> None:
    """Play a dialogue file; raise AssertionError at the first server line that does not match."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tls = not (lines and lines[0].strip() == "@plain")
    clients: dict[str, Client] = {}

    async def client(name: str) -> Client:
        if name not in clients:
            clients[name] = await Client.connect(running, tls=tls)
        return clients[name]

    try:
        for number, text in enumerate(lines, 1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#") or stripped == "@plain":
                continue
            if stripped == "@settle":
                await asyncio.sleep(0.05)
                continue
            if stripped == "@starttls":
                await (await client("")).start_tls(running)
                continue
            found = re.match(r"([CS])(\d*): ?(.*)$", text)
            if not found:
                raise AssertionError(f"{path.name}:{number}: cannot read {text!r}")
            kind, conn, body = found.groups()
            c = await client(conn)
            if kind == "C":
                await c.send(body.encode("utf-8").replace(b"\\r\\n", b"\r\n") + b"\r\n")
                continue
            try:
                got = await c.line()
            except TimeoutError:
                raise AssertionError(
                    f"{path.name}:{number}: expected {body!r}, server sent nothing"
                ) from None
            if not pattern(body).fullmatch(got):
                raise AssertionError(f"{path.name}:{number}: expected {body!r}\n{' ' * 20}got {got!r}")
    finally:
        for c in clients.values():
            await c.close()
