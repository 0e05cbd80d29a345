"""The IMAP listeners: asyncio streams, STARTTLS (143-style) and implicit TLS (993-style).

A :class:`Connection` moves bytes: it feeds the framer, hands complete commands to the
parser and the session, answers the framer's refusals, sends ``+`` continuations for
synchronising literals, and streams large FETCH bodies from the store. Idle clients are
logged out (RFC 3501 §5.4: at least 30 minutes once authenticated; one minute before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass

from mssante.imap.access import Access
from mssante.imap.fetch import BlobSlice, Piece
from mssante.imap.framing import CommandReady, Framer, LineTooLong, NeedContinuation, Rejected
from mssante.imap.gate import Gate
from mssante.imap.parser import ParseError, parse_command
from mssante.imap.session import Session
from mssante.imap.states import LOGOUT, NOT_AUTHENTICATED
from mssante.store.store import MessageStore
from mssante.tls import TLSInfo, tls_info

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024
# Queued responses leave at the end of the event-loop step, or once this much is queued (a
# long FETCH streams to the client while it is being built).
FLUSH_SIZE = 32 * 1024


@dataclass(frozen=True)
class Limits:
    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024
    max_append: int = 25 * 1024 * 1024
    preauth_timeout: float = 60.0
    idle_timeout: float = 30 * 60.0


class Connection:
    """One client connection; implements the session's :class:`~mssante.imap.session.Channel`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        server: ImapServer,
        *,
        tls: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server
        self.tls = tls
        self.task: asyncio.Task[object] | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_scheduled = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        limits = server.limits
        self.framer = Framer(
            max_line=limits.max_line, max_literal=limits.max_literal, max_append=limits.max_append
        )
        self.session = Session(
            self,
            server.store,
            server.gate,
            starttls_available=server.tls_context is not None,
            hostname=server.hostname,
            access=server.access,
        )

    # -- Channel ---------------------------------------------------------------------------------
    @property
    def tls_info(self) -> TLSInfo:
        return tls_info(self.writer.get_extra_info("ssl_object")) if self.tls else TLSInfo.cleartext()

    async def write(self, data: bytes) -> None:
        self._send(data)
        # The transport sends at once when it can; wait only when the client reads slowly.
        if self._pending_size >= FLUSH_SIZE:
            self._flush()
        if self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await self.writer.drain()

    async def write_pieces(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            if isinstance(piece, BlobSlice):
                self._flush()
                async for chunk in self.server.store.stream(piece.blob_id, piece.start, piece.end):
                    self.writer.write(chunk)
                    await self.writer.drain()
            else:
                self._send(piece)
        if self._pending_size >= FLUSH_SIZE:
            self._flush()
        if self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await self.writer.drain()

    def _send(self, data: bytes) -> None:
        """Queue bytes; they leave at the end of the current event-loop step, so what a command
        writes without waiting (its untagged responses, then its tagged one) goes out as one
        TLS record and one system call instead of several. Nothing waits longer than that step."""
        self._pending.append(data)
        self._pending_size += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if not self.writer.is_closing():
            self.writer.write(data)

    async def read_line(self) -> bytes | None:
        while True:
            try:
                line = self.framer.next_line()
            except LineTooLong:
                return b""
            if line is not None:
                return line
            data = await self._read()
            if not data:
                return None
            self.framer.feed(data)

    async def start_tls(self) -> None:
        assert self.server.tls_context is not None
        self._flush()
        await self.writer.drain()
        # Nothing the client sent before the handshake may be taken as a command after it
        # (STARTTLS command injection, CVE-2011-0411): drop what the framer holds and what
        # the stream reader buffered. No await separates this from start_tls, which stops
        # reading plaintext before it yields.
        self.framer = Framer(
            max_line=self.server.limits.max_line,
            max_literal=self.server.limits.max_literal,
            max_append=self.server.limits.max_append,
        )
        buffered = getattr(self.reader, "_buffer", None)
        if isinstance(buffered, bytearray):
            buffered.clear()
        await self.writer.start_tls(self.server.tls_context)
        self.tls = True

    # -- loop -------------------------------------------------------------------------------------
    async def _read(self) -> bytes:
        timeout = (
            self.server.limits.preauth_timeout
            if self.session.state == NOT_AUTHENTICATED
            else self.server.limits.idle_timeout
        )
        try:
            async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            await self.write(b"* BYE Autologout; idle for too long\r\n")
            return b""

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            await self.session.greet()
            while self.session.state != LOGOUT:
                event = self.framer.next_event()
                if event is None:
                    data = await self._read()
                    if not data:
                        return
                    self.framer.feed(data)
                    continue
                if isinstance(event, NeedContinuation):
                    await self.write(b"+ Ready for literal data\r\n")
                elif isinstance(event, Rejected):
                    await self.write(f"{event.tag} {event.response}\r\n".encode())
                elif isinstance(event, CommandReady):
                    await self._command(event.data)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.debug("IMAP connection %s ended: %s", self.peer, exc)
        except Exception:
            log.exception("IMAP connection %s failed", self.peer)
        finally:
            await self.session.finish()
            with contextlib.suppress(Exception):
                self._flush()
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 5)

    async def _command(self, data: bytes) -> None:
        try:
            command = parse_command(data, binary=True)
        except ParseError as exc:
            await self.write(exc.response().encode("utf-8", "replace") + b"\r\n")
            return
        await self.session.handle(command)


class ImapServer:
    """IMAP over the message store; ``start`` opens a listener (several may share one server)."""

    def __init__(
        self,
        store: MessageStore,
        gate: Gate,
        *,
        tls_context: ssl.SSLContext | None = None,
        hostname: str = "localhost",
        limits: Limits | None = None,
        access: Access | None = None,
    ) -> None:
        self.store = store
        self.gate = gate
        self.access = access  # rights on BALs (delegation); None: each session's own BAL only
        self.tls_context = tls_context
        self.hostname = hostname
        self.limits = limits or Limits()
        self._connections: set[Connection] = set()

    async def start(self, host: str, port: int, *, implicit_tls: bool = False) -> asyncio.Server:
        if implicit_tls and self.tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = Connection(reader, writer, self, tls=implicit_tls)
            self._connections.add(connection)
            try:
                await connection.run()
            except asyncio.CancelledError:
                # Forced shutdown: run()'s cleanup closed the socket; ending the handler
                # normally keeps asyncio from logging the cancellation as an error.
                pass
            finally:
                self._connections.discard(connection)

        return await asyncio.start_server(
            accept, host, port, ssl=self.tls_context if implicit_tls else None, limit=READ_SIZE
        )

    async def close_connections(self, timeout: float = 5.0) -> None:
        """Shut every connection: close its socket, let its session finish (pending audit
        records), and cancel only what is still running after ``timeout``."""
        connections = list(self._connections)
        for connection in connections:
            connection.writer.close()
        tasks = [c.task for c in connections if c.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
