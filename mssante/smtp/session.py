"""The SMTP protocol layer: aiosmtpd's state machine with our AUTH, limits and status codes.

aiosmtpd parses commands, handles STARTTLS (discarding pipelined clear-text input, RFC 3207
§4.2), SIZE and DATA transparency; this subclass adds what a trust-space server needs:
SASL through the shared authenticator (every mechanism of ``mssante.auth``), connection
limits (in total and per client address), a session id in every log line, and RFC 3463
enhanced status codes on every reply. Decisions stay in the handlers and the policy.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from mssante import metrics
from mssante.auth.authenticator import AuthChallenge, Authenticator, AuthFailure, AuthSuccess
from mssante.smtp.spool import Received, Spooled
from mssante.smtp.syntax import HELO_REFUSAL, command_line_problem, valid_helo
from mssante.tls import TLSInfo, tls_info

log = logging.getLogger("mssante.smtp")

_REPLY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.3.0",
    "555": "5.5.4",
}
MAX_AUTH_LINE = 64 * 1024
RFC_LINE_LIMIT = 1001  # 998 octets + CRLF (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)
END_OF_DATA = b"\r\n.\r\n"
DATA_CHUNK = 64 * 1024
_BARE_CR = re.compile(rb"\r(?!\n)")
# A lone "." line with a bare LF on either side of it (the end of data is found before).
_LONE_DOT = re.compile(rb"(?<!\r)\n\.\r?\n|\r\n\.\n")
# Tried only at line starts, so the scan stays linear whatever the line lengths.
_LONG_LINE = re.compile(rb"\n[^\r\n]{%d}" % (RFC_LINE_LIMIT - 1))
# A line too long for _LONG_LINE covers a whole block of this many octets (blocks laid from the
# first line's start): only a block without LF can be part of one.
_LINE_BLOCK = (RFC_LINE_LIMIT - 1) // 2
# The path of MAIL FROM and RCPT TO as nearly every client sends it: <dot-atom@domain>, then
# parameters after blanks (anything else goes through aiosmtpd's RFC 5322 parser).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*")


def data_problem(buffer: bytearray, start: int, end: int, line: int) -> str | None:
    """Why the complete lines ``buffer[start:end]`` of DATA are refused, or None.

    ``buffer[start - 2 : start]`` is the end of the line before (CRLF before the first one);
    ``line`` is the number of the first line, for the reply.
    """
    if (match := _BARE_CR.search(buffer, start, end)) is not None:
        at = line + buffer.count(b"\n", start, match.start())
        return f"550 5.6.0 Bare CR at line {at}: a CR must be followed by LF"
    # The regex steps through every octet; what it looks for always holds "<LF>.<LF>" or
    # "<LF>.<CR><LF>", which mail lines never do (the end of data is cut before, dots are stuffed).
    suspect = buffer.find(b"\n.\n", start - 2, end) != -1 or buffer.find(b"\n.\r\n", start - 2, end) != -1
    if suspect and (match := _LONE_DOT.search(buffer, start - 2, end)) is not None:
        at = line + buffer.count(b"\n", start, match.end() - 1)
        return (
            f"550 5.6.0 A lone '.' line next to a bare LF (line {at}) is refused as SMTP smuggling:"
            " end data with <CR><LF>.<CR><LF>"
        )
    if _has_long_line(buffer, start, end):
        return "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
    return None


def _has_long_line(buffer: bytearray, start: int, end: int) -> bool:
    """Whether ``_LONG_LINE`` matches the complete lines ``buffer[start:end]``.

    The regex alone costs a step per octet (a third of a millisecond per 10 KiB message, the
    largest CPU cost of DATA); a C search for LF per block of ``_LINE_BLOCK`` octets finds the
    only places where a too-long line can be, and the regex runs around those alone.
    """
    for block in range(start, end, _LINE_BLOCK):
        if buffer.find(b"\n", block, block + _LINE_BLOCK) != -1:
            continue
        around = max(start - 1, block - RFC_LINE_LIMIT), min(end, block + _LINE_BLOCK + RFC_LINE_LIMIT)
        if _LONG_LINE.search(buffer, *around) is not None:
            return True
    return False


def normalise_lines(buffer: bytearray, start: int, end: int) -> bytes | None:
    """The complete lines ``buffer[start:end]`` as stored (each ended by CRLF, dots unstuffed,
    RFC 5321 §4.5.2) when that changes them, else None: nearly every chunk of a message is
    stored as it came, straight from the buffer, without a copy of its own."""
    bare_lf = buffer.count(b"\n", start, end) != buffer.count(b"\r\n", start, end)
    first_dot = buffer.startswith(b".", start, end)
    stuffed = buffer.find(b"\n.", start, end) != -1
    if not bare_lf and not first_dot and not stuffed:
        return None
    lines = bytes(memoryview(buffer)[start + int(first_dot) : end])  # the first line's dot left out
    if bare_lf:
        lines = lines.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if stuffed:
        lines = lines.replace(b"\n.", b"\n")
    return lines


def ascii_fold(text: str) -> str:
    """ "Réponse refusée" → "Reponse refusee": accents dropped, anything else non-ASCII → "?"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "replace").decode()


class ConnectionLimits:
    """Counts open sessions of one listener group, in total and per client address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open: Counter[str] = Counter()
        self.sessions = 0  # open sessions in all
        metrics.watch_smtp(self)

    def acquire(self, ip: str) -> bool:
        if self.sessions >= self.total or self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        self.sessions += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        self.sessions -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


class CommandLineError(Exception):
    """A command line refused before it is parsed (bare CR or LF, control character)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


_COMMAND_LINE: Any = object()  # the default separator: a call without one is a command read


class StrictLineReader(asyncio.StreamReader):
    """The session's stream: command lines (and SASL responses) must end in CRLF.

    aiosmtpd reads every command with ``readuntil()`` (up to LF) and only strips the line end,
    so a bare LF would end a command and a bare CR would travel inside it (into the HELO name,
    then the ``Received:`` header). The check sits where command lines are cut, for every
    command at once: a call without a separator is a command read (DATA passes its own and
    keeps its own rules, ``smtp_DATA``). The refusal surfaces through ``handle_exception`` as a
    ``500 5.5.2`` reply and the session goes on with the next line.
    """

    async def readuntil(self, separator: Any = _COMMAND_LINE) -> bytes:
        if separator is not _COMMAND_LINE:
            return await super().readuntil(separator)
        line = await super().readuntil(b"\n")
        if (problem := command_line_problem(line)) is not None:
            raise CommandLineError(problem)
        return line

    def unread(self, data: bytes) -> None:
        """Put back bytes read past the end of DATA (pipelined commands) for the next read."""
        if data:
            self._buffer[0:0] = data  # type: ignore[attr-defined]


def _deny_builtin_auth(*_args: Any) -> AuthResult:
    # aiosmtpd's own AUTH is never used (smtp_AUTH is ours); it must still be configured.
    return AuthResult(success=False, handled=False)


class MSSanteSMTP(SMTP):
    """One SMTP session of a listener."""

    # The stream reader's line limit: Pro Santé Connect tokens exceed aiosmtpd's 1001 bytes. Every
    # path keeps its own check: command lines (command_size_limits), DATA lines (RFC_LINE_LIMIT),
    # SASL responses (MAX_AUTH_LINE).
    line_length_limit = MAX_AUTH_LINE

    def __init__(
        self,
        handler: Any,
        *,
        listener: str,
        authenticator: Authenticator | None,
        limits: ConnectionLimits,
        login_timeout: float = 60.0,
        cleartext_auth: bool = False,
        spool_dir: Path | None = None,
        spool_threshold: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, authenticator=_deny_builtin_auth, enable_SMTPUTF8=True, **kwargs)
        # Clients (Thunderbird among them) send OAUTHBEARER tokens on the AUTH line itself (SASL-IR).
        self.command_size_limits["AUTH"] = MAX_AUTH_LINE
        self.listener = listener
        self.auth = authenticator
        self.limits = limits
        self.cleartext_auth = cleartext_auth
        self.session_id = uuid.uuid4().hex[:12]
        self._peer_ip = ""
        self._admitted = False
        self._in_greeting = False
        self._data_reply_utf8 = False
        self.login_timeout = login_timeout
        # DATA larger than spool_threshold goes to a file in spool_dir (none: all in memory).
        self.spool_dir = spool_dir if spool_threshold > 0 else None
        self.spool_threshold = spool_threshold
        self._login_deadline: asyncio.TimerHandle | None = None
        self.transaction_over = False  # the next reply is a transaction's final one (metrics)
        self._tls: tuple[object, TLSInfo] | None = None  # (the SSL object, what it says)
        self._idle_deadline = 0.0  # (loop time) see _reset_timeout

    # -- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._admitted:
            peer = transport.get_extra_info("peername")
            self._peer_ip = str(peer[0]) if peer else "unknown"
            if not self.limits.acquire(self._peer_ip):
                log.warning(
                    "too many connections from %s, refused",
                    self._peer_ip,
                    extra={"session": self.session_id, "listener": self.listener},
                )
                metrics.connection_refused("smtp")
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted = True
            self._login_deadline = asyncio.get_running_loop().call_later(
                self.login_timeout, self._login_deadline_passed
            )
            log.info(
                "connection from %s",
                self._peer_ip,
                extra={"session": self.session_id, "listener": self.listener},
            )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._login_deadline is not None:
            self._login_deadline.cancel()
        self.limits.release(self._peer_ip)
        super().connection_lost(error)

    def _logged_in(self) -> bool:
        """Past the gate the deadline guards: AUTH on submission, TLS on relay-in (whose peers
        are known by their certificate)."""
        if self.auth is None:
            return self.tls.active
        return bool(self.session is not None and self.session.authenticated)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timeout (``[smtp] timeout_seconds``), re-armed lazily: a command
        only moves the deadline, and the one timer, should it fire before it, waits for the
        rest (a cancelled timer and a new one for every command were a fiftieth of the event
        loop's time at one SMTP session)."""
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
            return
        if self.transport is not None and not self.transport.is_closing():
            # Said before closing, as Postfix does (aiosmtpd would close without a word).
            self.transport.write(b"421 4.4.2 Idle timeout, closing connection\r\n")  # type: ignore[attr-defined]
        self._timeout_cb()  # type: ignore[no-untyped-call]

    def _login_deadline_passed(self) -> None:
        """Like Dovecot's login processes: an unauthenticated client gets a fixed time, not an
        idle time that each byte it trickles in starts again (slow-drip connections)."""
        self._login_deadline = None
        if self._logged_in() or self.transport is None or self.transport.is_closing():
            return
        log.info(
            "no login within %.0f s, closing", self.login_timeout,
            extra={"session": self.session_id, "listener": self.listener},
        )  # fmt: skip
        self.transport.write(b"421 4.7.0 Login timeout, closing connection\r\n")  # type: ignore[attr-defined]
        self.transport.close()

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # aiosmtpd builds a plain StreamReader in its constructor; the data the transport feeds
        # it is the same, only the way lines are cut is ours.
        reader.__class__ = StrictLineReader
        super()._cb_client_connected(reader, writer)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, CommandLineError):
            log.info(
                "refused command line: %s",
                error.reply,
                extra={"session": self.session_id, "listener": self.listener},
            )
            return error.reply
        # Any other failure is ours (the database away during a failover): a temporary refusal
        # the client retries, never a 5xx, and never our internals on the wire.
        log.error(
            "command failed: %s: %s",
            type(error).__name__,
            str(error).splitlines()[0] if str(error) else "",
            exc_info=error,
            extra={"session": self.session_id, "listener": self.listener},
        )
        return "451 4.3.0 Temporary local problem, try again later"

    @property
    def peer_ip(self) -> str:
        return self._peer_ip

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.transaction_over = False  # RSET, EHLO, STARTTLS end no transaction

    @property
    def tls(self) -> TLSInfo:
        """The connection's TLS (read once per TLS layer: each message's trace shows it)."""
        if self.transport is None:
            return TLSInfo.cleartext()
        ssl_object = self.transport.get_extra_info("ssl_object")
        if self._tls is None or self._tls[0] is not ssl_object:
            self._tls = (ssl_object, tls_info(ssl_object))
        return self._tls[1]

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The path of MAIL FROM or RCPT TO and the parameters after it, as aiosmtpd parses
        them; the usual ``<local@domain>`` without its RFC 5322 parser (which defines a class
        per call: a tenth of a millisecond per command)."""
        match = _SIMPLE_PATH.match(arg)
        if match is None or arg.startswith("(", match.end()):
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end() :]

    # -- replies --------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        """Every reply carries an enhanced status code (RFC 2034), except 220 and HELO/EHLO.

        A reply may quote the client (an unknown command, an address): no control character
        of it is ever written back, so a reply line stays one line."""
        utf8 = bool(self.envelope and self.envelope.smtp_utf8) or self._data_reply_utf8
        self._data_reply_utf8 = False
        if isinstance(status, str):
            status = _REPLY_CONTROL.sub("?", status)
        if isinstance(status, str) and not status.isascii() and not utf8:
            status = ascii_fold(status)  # RFC 6531: UTF-8 replies only to SMTPUTF8 transactions
        code = status[:3]
        if not self._in_greeting and not _HAS_ENHANCED.match(status) and code in _DEFAULT_ENHANCED:
            status = f"{code}{status[3:4] or ' '}{_DEFAULT_ENHANCED[code]} {status[4:]}".rstrip()
        metrics.smtp_reply(self, status)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in chunks up to the first ``<CR><LF>.<CR><LF>``, judged line by line.

        Line ends as Postfix's ``smtpd_forbid_bare_newline = normal``: lines ended by a bare LF
        are accepted and stored with CRLF (scripts sending ``msg.as_bytes()`` do that), but only
        ``<CR><LF>.<CR><LF>`` ends the data. A lone ``.`` line touching a bare LF (``<LF>.<LF>``,
        ``<LF>.<CR><LF>``, ``<CR><LF>.<LF>``: what SMTP smuggling relies on, since another
        server may take it for the end) and a bare CR anywhere refuse the message, read to its
        real end, so nothing of it is ever taken for a command. Each 64 KiB chunk is checked and
        normalised by a few passes in C, whatever its number of lines (25 MiB of empty lines
        cost what 25 MiB of text costs), and the event loop is let go between chunks. The lines
        go into one buffer (:class:`~mssante.smtp.spool.Received`) that the handlers complete
        and the store seals: the message is held once. Past ``spool_threshold`` it moves to a
        spool file (:class:`~mssante.smtp.spool.Spooled`) and is not held at all; a disk that
        cannot take it refuses the message with ``452 4.3.1`` (read to its end all the same).
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader
        assert isinstance(reader, StrictLineReader)
        content: Received | Spooled | None = Received()
        # Two bytes of the line before (the CRLF of the DATA command at first), then what is not
        # yet a complete line.
        pending = bytearray(b"\r\n")
        problem: str | None = None
        line = 1
        complete_data = False
        try:
            while True:
                chunk = await reader.read(DATA_CHUNK)
                if not chunk:
                    return  # the client went away mid-DATA: nothing was accepted
                search = max(len(pending) - len(END_OF_DATA) + 1, 0)
                pending += chunk
                end = pending.find(END_OF_DATA, search)
                if end != -1:
                    reader.unread(bytes(pending[end + len(END_OF_DATA) :]))  # pipelined commands
                    del pending[end + 2 :]  # the last line keeps its CRLF
                complete = pending.rfind(b"\n") + 1  # >= 2: the two bytes of context
                if problem is None:
                    problem = data_problem(pending, 2, complete, line)
                    if problem is None and len(pending) - complete >= RFC_LINE_LIMIT - 1:
                        problem = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
                    if problem is None and content is not None:
                        content, problem = self._keep(content, pending, complete)
                    if problem is not None and content is not None:
                        content.close()  # keep reading to the end, keep nothing
                        content = None
                line += pending.count(b"\n", 2, complete)
                del pending[: complete - 2]
                if problem is not None:
                    del pending[: -len(END_OF_DATA)]  # a refused line never ending is not kept either
                if end != -1:
                    complete_data = True
                    break
                await asyncio.sleep(0)  # one 64 KiB chunk at a time: other sessions are served
        finally:
            # Gone mid-DATA (read end, reset, cancelled): a spool file is closed now, not when
            # the cycle collector finds the session's frames.
            if content is not None and not complete_data:
                content.close()
        if problem is None and content is not None:
            try:
                content.received()
            except OSError as exc:
                problem = self._no_storage(exc)
        if problem is not None:
            self._set_post_data_state()
            await self.push(problem)
            return
        assert content is not None
        self.envelope.original_content = self.envelope.content = content  # type: ignore[assignment]
        del content
        status = await metrics.smtp_acknowledged(self, self._call_handler_hook("DATA"))
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _keep(
        self, content: Received | Spooled, pending: bytearray, complete: int
    ) -> tuple[Received | Spooled, str | None]:
        """Add the complete lines ``pending[2:complete]`` to the content, moved to a spool file
        once past the threshold; returns the content and the refusal, if any."""
        lines = normalise_lines(pending, 2, complete)
        try:
            content.extend(memoryview(pending)[2:complete] if lines is None else lines)
            if self.data_size_limit and len(content) > self.data_size_limit:
                return content, "552 5.3.4 Message too big"
            past = self.spool_dir is not None and len(content) > self.spool_threshold
            if past and isinstance(content, Received):
                assert self.spool_dir is not None
                content = content.to_file(self.spool_dir)
        except OSError as exc:
            return content, self._no_storage(exc)
        return content, None

    def _no_storage(self, error: OSError) -> str:
        """The refusal of a message the spool file could not take (a full disk)."""
        log.error("spool file: %s", error, extra={"session": self.session_id, "listener": self.listener})
        return "452 4.3.1 Insufficient system storage"

    def _set_post_data_state(self) -> None:
        # aiosmtpd resets the envelope before pushing the DATA reply: remember its SMTPUTF8.
        self._data_reply_utf8 = bool(self.envelope and self.envelope.smtp_utf8)
        self.transaction_over = True
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and not valid_helo(hostname):
            await self.push(HELO_REFUSAL)
            return
        self._in_greeting = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting = False

    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and not valid_helo(hostname):
            await self.push(HELO_REFUSAL)
            return
        self._in_greeting = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting = False

    # -- AUTH -----------------------------------------------------------------------------
    def mechanisms(self) -> list[str]:
        if self.auth is None:
            return []
        return self.auth.mechanisms(self.tls, cleartext_ok=self.cleartext_auth)

    async def smtp_AUTH(self, arg: str) -> None:
        assert self.session is not None and self.envelope is not None
        if await self.check_helo_needed("EHLO"):
            return
        if not self.session.extended_smtp:
            await self.push("500 5.5.1 AUTH needs EHLO first")
            return
        if self.auth is None:
            await self.push("502 5.5.1 AUTH is not offered on this listener")
            return
        if self.session.authenticated:
            await self.push("503 5.5.1 Already authenticated")
            return
        if self.envelope.mail_from:
            await self.push("503 5.5.1 AUTH is not allowed during a mail transaction")
            return
        if not arg:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism, _, initial = arg.strip().partition(" ")
        exchange = self.auth.begin(
            mechanism,
            tls=self.tls,
            client_ip=self.peer_ip,
            listener=self.listener,
            cleartext_ok=self.cleartext_auth,
        )
        result = await exchange.start(initial.strip() or None)
        while isinstance(result, AuthChallenge):
            await self.push(f"334 {result.challenge}".rstrip() if result.challenge else "334 ")
            try:
                line = await asyncio.wait_for(self._reader.readuntil(), self._timeout_duration)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
                await self.push("501 5.5.2 Authentication response too long or missing")
                return
            if len(line) > MAX_AUTH_LINE:
                await self.push("501 5.5.2 Authentication response too long")
                return
            result = await exchange.step(line.decode("ascii", "replace").rstrip("\r\n"))
        if isinstance(result, AuthFailure):
            if result.delay:
                await asyncio.sleep(result.delay)
            await self.push(result.smtp_reply)
            return
        assert isinstance(result, AuthSuccess)
        self.session.authenticated = True
        self.session.auth_data = result  # type: ignore[assignment]
        log.info(
            "authenticated %s with %s",
            result.identity.principal,
            result.mechanism,
            extra={"session": self.session_id, "listener": self.listener},
        )
        await self.push("235 2.7.0 Authentication successful")
