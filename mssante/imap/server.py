"""The IMAP listeners: asyncio streams, STARTTLS (143-style) and implicit TLS (993-style).

A :class:`Connection` moves bytes: it feeds the framer, hands complete commands to the
parser and the session, answers the framer's refusals, sends ``+`` continuations for
synchronising literals, and streams large FETCH bodies from the store.

Time and memory are bounded before login as Dovecot's imap-login bounds them: small literals
(see :mod:`mssante.imap.framing`), an absolute deadline to log in, a deadline for each command
once begun (a client dripping one byte at a time does not extend it), a few invalid commands
at most, and caps on open connections in total and per client address. Once logged in, a
session without commands is logged out after ``idle_timeout`` (RFC 3501 §5.4: at least 30
minutes), and a command begun must end within that time too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from mssante import memory, metrics
from mssante.imap.access import Access
from mssante.imap.fetch import BlobSlice, Piece
from mssante.imap.framing import CommandReady, Framer, LineTooLong, NeedContinuation, Rejected
from mssante.imap.gate import Gate
from mssante.imap.parser import parse_command
from mssante.imap.reader import ParseError
from mssante.imap.session import Session
from mssante.imap.states import LOGOUT, NOT_AUTHENTICATED
from mssante.listening import ConnectionCaps
from mssante.proxy_protocol import Listening, ProxySettings, start_server
from mssante.store.spooled import SpooledMessage
from mssante.store.store import MessageStore
from mssante.tls import TLSInfo, tls_info

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024
# Queued responses leave at the end of the event-loop step, or once this much is queued (a
# long FETCH streams to the client while it is being built).
FLUSH_SIZE = 32 * 1024
# What a client hears when the node stops (RFC 3501 §7.1.5): reconnect, to another node.
DRAIN_BYE = b"* BYE [UNAVAILABLE] Server shutting down, please reconnect\r\n"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may cost (``[imap]`` settings, see config.IMAPSection)."""

    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024
    max_append: int = 25 * 1024 * 1024
    preauth_max_literal: int = 16 * 1024
    login_timeout: float = 60.0
    preauth_command_timeout: float = 15.0
    preauth_max_errors: int = 10
    idle_timeout: float = 30 * 60.0
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    # An APPEND literal larger than spool_threshold goes to a file of spool_dir (none: memory).
    spool_dir: Path | None = None
    spool_threshold: int = 0


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
        self.reading = False  # waiting for the client (between commands, in IDLE)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_scheduled = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.framer = self._preauth_framer()
        loop = asyncio.get_running_loop()
        self._login_deadline: float | None = loop.time() + server.limits.login_timeout
        self._command_deadline: float | None = None  # set when a command's first bytes arrive
        self._errors = 0  # framing and syntax errors (the session counts its own BAD answers)
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
        self.framer = self._preauth_framer()
        buffered = getattr(self.reader, "_buffer", None)
        if isinstance(buffered, bytearray):
            buffered.clear()
        assert self._login_deadline is not None  # STARTTLS is a not-authenticated command
        remaining = max(0.1, self._login_deadline - asyncio.get_running_loop().time())
        await self.writer.start_tls(self.server.tls_context, ssl_handshake_timeout=remaining)
        self.tls = True

    def _preauth_framer(self) -> Framer:
        limits = self.server.limits
        return Framer(
            max_line=limits.max_line,
            max_literal=limits.max_literal,
            max_append=limits.max_append,
            preauth_literal=limits.preauth_max_literal,
            spool=functools.partial(SpooledMessage, limits.spool_dir) if limits.spool_dir else None,
            spool_threshold=limits.spool_threshold,
        )

    # -- loop -------------------------------------------------------------------------------------
    async def _read(self) -> bytes:
        """Bytes from the client, or b"" at end of stream or past the deadline that applies:
        deadlines are fixed points in time, so bytes arriving do not push them back."""
        limits = self.server.limits
        if self._login_deadline is not None:
            deadline = self._login_deadline
            bye = f"BYE Login timeout: not logged in within {limits.login_timeout:g} s"
            if self._command_deadline is not None and self._command_deadline < deadline:
                deadline, bye = self._command_deadline, "BYE Command not completed in time"
        elif self._command_deadline is not None:
            deadline, bye = self._command_deadline, "BYE Autologout; command not completed in time"
        else:
            deadline = asyncio.get_running_loop().time() + limits.idle_timeout
            bye = "BYE Autologout; idle for too long"
        if self.server.draining:
            await self.write(DRAIN_BYE)  # the command under way has ended: now say goodbye
            return b""
        self.reading = True
        try:
            async with asyncio.timeout_at(deadline):  # no task per read, unlike wait_for
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            await self.write(f"* {bye}\r\n".encode())
            return b""
        finally:
            self.reading = False

    def drain(self) -> None:
        """The server is stopping: a client waiting for us (between commands, or in IDLE) gets
        ``* BYE`` at once and reconnects elsewhere; one with a command under way gets it once
        the command has completed."""
        if self.reading:
            self._send(DRAIN_BYE)
            self._flush()
            self.writer.close()

    def _start_command_clock(self) -> None:
        """A command is under way (its first bytes are buffered): it has this long to end."""
        if self._command_deadline is None and self.framer.buffered:
            limits = self.server.limits
            span = limits.preauth_command_timeout if self._login_deadline is not None else limits.idle_timeout
            self._command_deadline = asyncio.get_running_loop().time() + span

    def _command_done(self) -> None:
        self._command_deadline = None
        self._start_command_clock()  # a pipelined command's bytes may already be here

    def _too_many_errors(self) -> bool:
        """Before login, a client sending invalid commands (or what a refused literal held)
        is disconnected after a few: it is not an IMAP client, or not a friendly one."""
        if self._login_deadline is None:
            return False
        return self._errors + self.session.bad_answers >= self.server.limits.preauth_max_errors

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
                    self._start_command_clock()
                    continue
                if isinstance(event, NeedContinuation):
                    await self.write(b"+ Ready for literal data\r\n")
                    continue
                if isinstance(event, Rejected):
                    self._errors += 1
                    await self.write(f"{event.tag} {event.response}\r\n".encode())
                    if event.close:
                        await self.write(b"* BYE Literal too large before login\r\n")
                        return
                elif isinstance(event, CommandReady):
                    await self._command(event.data, event.spooled)
                self._command_done()
                if self._too_many_errors():
                    await self.write(b"* BYE Too many invalid commands\r\n")
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.debug("IMAP connection %s ended: %s", self.peer, exc)
        except Exception:
            log.exception("IMAP connection %s failed", self.peer)
        finally:
            self.framer.close()
            await self.session.finish()
            with contextlib.suppress(Exception):
                self._flush()
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 5)
            memory.trim_soon()  # what the session held goes back to the system

    async def _command(self, data: bytes | bytearray, spooled: dict[int, SpooledMessage]) -> None:
        try:
            command = parse_command(data, utf8=self.session.utf8, binary=True, spooled=spooled)
        except ParseError as exc:
            self._errors += 1
            await self.write(exc.response().encode("utf-8", "replace") + b"\r\n")
            return
        await metrics.imap_command(command.name, self.session.handle(command))
        if self._login_deadline is not None and self.session.state not in (NOT_AUTHENTICATED, LOGOUT):
            # Logged in: the full limits apply from the next command on.
            self._login_deadline = None
            self.framer.logged_in()


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
        proxy: ProxySettings | None = None,
        shared_ports: bool = False,
    ) -> None:
        memory.tune()  # small TLS read buffers, also when embedded (tests, benchmarks)
        self.store = store
        self.shared_ports = shared_ports  # bound by every worker process (SO_REUSEPORT)
        self.proxy = proxy  # behind balancers: the PROXY protocol names the client
        self.gate = gate
        self.access = access  # rights on BALs (delegation); None: each session's own BAL only
        self.tls_context = tls_context
        self.hostname = hostname
        metrics.watch_imap(self)  # open sessions counted by state when scraped
        self.limits = limits or Limits()
        self.caps = ConnectionCaps(self.limits.max_connections, self.limits.max_connections_per_ip)
        self._connections: set[Connection] = set()
        self.draining = False  # set on shutdown: sessions end with DRAIN_BYE

    async def start(self, host: str, port: int, *, implicit_tls: bool = False) -> Listening:
        if implicit_tls and self.tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            refusal = self.caps.admit(ip)
            if refusal is not None:
                await self._refuse(writer, ip, refusal)
                return
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
                self.caps.release(ip)

        return await start_server(
            accept,
            host,
            port,
            ssl=self.tls_context if implicit_tls else None,
            limit=READ_SIZE,
            # The TLS handshake of the implicit port counts against the time to log in.
            ssl_handshake_timeout=self.limits.login_timeout if implicit_tls else None,
            proxy=self.proxy,
            reuse_port=self.shared_ports,
        )

    async def _refuse(self, writer: asyncio.StreamWriter, ip: str, reason: str) -> None:
        """A greeting of BYE (RFC 3501 §7.1.5) and the door closed: a cap is reached."""
        log.warning("IMAP connection from %s refused: %s", ip, reason)
        metrics.connection_refused("imap")
        with contextlib.suppress(Exception):
            writer.write(f"* BYE [UNAVAILABLE] {reason}\r\n".encode())
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

    async def close_connections(self, timeout: float = 5.0) -> None:
        """Shut every connection: ``* BYE`` to those waiting for us and, after its command, to
        each busy one; let sessions finish (pending audit records), and cancel only what is
        still running after ``timeout``."""
        self.draining = True
        connections = list(self._connections)
        for connection in connections:
            connection.drain()
        tasks = [c.task for c in connections if c.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
