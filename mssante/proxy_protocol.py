"""The PROXY protocol (HAProxy, versions 1 and 2) on our listeners: behind a load balancer,
limits, throttling, ``Received:`` and the audit trail see the client, not the balancer.

Only a peer on the listener's trusted list (``proxy_trusted``) is asked for a header, and it
must send one, within ``HEADER_TIMEOUT`` seconds, before anything else: a trusted connection
without a valid header is closed. Anyone else is served as a direct client under its own
address and never has a header read: what it sends is protocol data (an SMTP ``PROXY``
command gets ``500``), so an untrusted peer cannot claim another address.

The header is read byte-exact from the accepted socket before asyncio builds the transport
(and before any TLS handshake, which follows the header on implicit-TLS ports); the socket
then reports the client's address as its peer, so every protocol above sees it unchanged.
``LOCAL`` connections (the balancer's own health checks) keep the balancer's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_MAX_PAYLOAD = 1024  # addresses plus TLVs; HAProxy sends far less
HEADER_TIMEOUT = 5.0

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    # The client and the address it connected to; None for LOCAL (v2) or UNKNOWN (v1).
    source: Address | None
    destination: Address | None


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0:1] == b"0"):
        raise ProxyHeaderError(f"bad port {text!r}")
    value = int(text)
    if value > 65535:
        raise ProxyHeaderError(f"port out of range: {value}")
    return value


def parse_v1(line: bytes) -> ProxyHeader:
    """``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n`` (the whole line, CRLF included)."""
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("not a PROXY v1 line")
    parts = line[len(V1_PREFIX) : -2].split(b" ")
    if parts[0] == b"UNKNOWN":
        return ProxyHeader(1, None, None)  # the rest of the line is to be ignored
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY v1 wants: TCP4|TCP6 source destination sport dport")
    kind = ipaddress.IPv4Address if parts[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        src, dst = (str(kind(p.decode("ascii"))) for p in parts[1:3])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyHeaderError(f"bad address in PROXY v1: {exc}") from None
    return ProxyHeader(1, (src, _port(parts[3])), (dst, _port(parts[4])))


def v2_length(head: bytes) -> int:
    """The payload length announced by the 16 fixed bytes of a v2 header."""
    if len(head) != 16 or not head.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("not a PROXY v2 header")
    if head[12] >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: unsupported version {head[12] >> 4}")
    (length,) = struct.unpack("!H", head[14:16])
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2: payload of {length} bytes is too long")
    return int(length)


def parse_v2(header: bytes) -> ProxyHeader:
    """A whole v2 header: 16 fixed bytes, then addresses and TLVs (TLVs are ignored)."""
    length = v2_length(header[:16])
    payload = header[16:]
    if len(payload) != length:
        raise ProxyHeaderError("PROXY v2: truncated header")
    command, family = header[12] & 0x0F, header[13]
    if command == 0x0:  # LOCAL: the balancer speaking for itself (health checks)
        return ProxyHeader(2, None, None)
    if command != 0x1:
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    if family == 0x00:  # UNSPEC: the balancer does not know the source
        return ProxyHeader(2, None, None)
    if family == 0x11 and length >= 12:  # TCP over IPv4
        src, dst = (str(ipaddress.IPv4Address(payload[i : i + 4])) for i in (0, 4))
        sport, dport = struct.unpack("!HH", payload[8:12])
    elif family == 0x21 and length >= 36:  # TCP over IPv6
        src, dst = (str(ipaddress.IPv6Address(payload[i : i + 16])) for i in (0, 16))
        sport, dport = struct.unpack("!HH", payload[32:36])
    else:
        raise ProxyHeaderError(f"PROXY v2: unsupported address family 0x{family:02x} or short block")
    return ProxyHeader(2, (src, sport), (dst, dport))


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length, or None while more bytes are needed."""
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        end = 16 + v2_length(data[:16])
        return (parse_v2(data[:end]), end) if len(data) >= end else None
    if V1_PREFIX.startswith(data[:6]):
        end = data.find(b"\n")
        if end < 0:
            if len(data) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 line too long")
            return None
        return parse_v1(data[: end + 1]), end + 1  # a bare LF makes it invalid
    raise ProxyHeaderError("no PROXY protocol header")


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_header(sock: socket.socket) -> ProxyHeader:
    """Read exactly the header from a non-blocking socket: what follows stays in the kernel for
    the protocol (or the TLS handshake) to read."""
    loop = asyncio.get_running_loop()
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(16 + V2_MAX_PAYLOAD, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peeked:
            raise ProxyHeaderError("connection closed before the PROXY header")
        found = parse(peeked)
        if found is not None:
            header, length = found
            sock.recv(length)  # the bytes peeked are there: consume exactly the header
            return header
        # An incomplete header: wait for more (the caller bounds the time).
        await asyncio.sleep(0.005)


class _ClientSocket(socket.socket):
    """An accepted socket that names the balancer's client as its peer."""

    client: Address

    def getpeername(self) -> Any:
        return self.client


def as_client(sock: socket.socket, client: Address) -> socket.socket:
    proxied = _ClientSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    proxied.client = client
    proxied.setblocking(False)
    return proxied


class TrustedBalancers:
    """The addresses (or networks) whose PROXY headers a listener believes."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __contains__(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


class ProxiedServer:
    """What ``loop.create_server`` gives, for a listener behind balancers: accept, read the
    trusted peer's header, then hand the socket (TLS first, if implicit) to the protocol."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        trusted: TrustedBalancers,
        *,
        ssl_context: ssl.SSLContext | None,
        ssl_handshake_timeout: float | None,
        header_timeout: float,
    ) -> None:
        self._factory = factory
        self._sock = sock
        self._trusted = trusted
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._header_timeout = header_timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept_loop(), name="proxy-accept")

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._sock]

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            task = asyncio.create_task(self._admit(conn, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _admit(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        balancer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        try:
            if balancer in self._trusted:
                async with asyncio.timeout(self._header_timeout):
                    header = await read_header(conn)
                if header.source is not None:
                    conn = as_client(conn, header.source)
            await loop.connect_accepted_socket(
                self._factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl else None,
            )
        except (ProxyHeaderError, TimeoutError) as exc:
            log.warning("connection from balancer %s refused: %s", balancer, exc or "no PROXY header in time")
            conn.close()
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection from %s failed before the protocol: %s", balancer, exc)
            conn.close()

    def close(self) -> None:
        self._accepting.cancel()
        self._sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting


# What a listener starter holds: asyncio's server, or ours behind balancers.
Listening = asyncio.Server | ProxiedServer


@dataclass(frozen=True)
class ProxySettings:
    """A listener's ``proxy_protocol`` and ``proxy_trusted`` settings."""

    trusted: TrustedBalancers
    header_timeout: float = HEADER_TIMEOUT

    @classmethod
    def of(cls, section: Any) -> ProxySettings | None:
        """From a listener section of the configuration; None when the protocol is off."""
        if not getattr(section, "proxy_protocol", False):
            return None
        return cls(TrustedBalancers(section.proxy_trusted))


def _listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    sock.listen(socket.SOMAXCONN)
    sock.setblocking(False)
    return sock


async def create_server(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    ssl: ssl.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
    proxy: ProxySettings | None = None,
    reuse_port: bool = False,
) -> Listening:
    """``loop.create_server``, or a :class:`ProxiedServer` when the listener is behind balancers.

    ``reuse_port``: the port is shared with the other worker processes (``server.workers``)."""
    loop = asyncio.get_running_loop()
    if proxy is None:
        return await loop.create_server(
            factory,
            host,
            port,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout if ssl else None,
            reuse_port=reuse_port or None,
        )
    return ProxiedServer(
        factory,
        _listening_socket(host, port, reuse_port=reuse_port),
        proxy.trusted,
        ssl_context=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout,
        header_timeout=proxy.header_timeout,
    )


async def start_server(
    client_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    host: str,
    port: int,
    *,
    limit: int,
    ssl: ssl.SSLContext | None = None,
    ssl_handshake_timeout: float | None = None,
    proxy: ProxySettings | None = None,
    reuse_port: bool = False,
) -> Listening:
    """``asyncio.start_server`` (streams), behind balancers when ``proxy`` is set."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected, loop=loop)

    return await create_server(
        factory,
        host,
        port,
        ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout,
        proxy=proxy,
        reuse_port=reuse_port,
    )
