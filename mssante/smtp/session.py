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
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from mssante import metrics
from mssante.auth.authenticator import AuthChallenge, Authenticator, AuthFailure, AuthSuccess
from mssante.tls import TLSInfo, tls_info

log = logging.getLogger("mssante.smtp")

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


def ascii_fold(text: str) -> str:
    """ "Réponse refusée" → "Reponse refusee": accents dropped, anything else non-ASCII → "?"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "replace").decode()


class ConnectionLimits:
    """Counts open sessions of one listener group, in total and per client address."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total, self.per_ip = total, per_ip
        self.open: Counter[str] = Counter()
        metrics.watch_smtp(self)

    def acquire(self, ip: str) -> bool:
        if sum(self.open.values()) >= self.total or self.open[ip] >= self.per_ip:
            return False
        self.open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


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
        cleartext_auth: bool = False,
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
        self.transaction_over = False  # the next reply is a transaction's final one (metrics)

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
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted = True
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
        self.limits.release(self._peer_ip)
        super().connection_lost(error)

    @property
    def peer_ip(self) -> str:
        return self._peer_ip

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.transaction_over = False  # RSET, EHLO, STARTTLS end no transaction

    @property
    def tls(self) -> TLSInfo:
        if self.transport is None:
            return TLSInfo.cleartext()
        return tls_info(self.transport.get_extra_info("ssl_object"))

    # -- replies --------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        """Every reply carries an enhanced status code (RFC 2034), except 220 and HELO/EHLO."""
        utf8 = bool(self.envelope and self.envelope.smtp_utf8) or self._data_reply_utf8
        self._data_reply_utf8 = False
        if isinstance(status, str) and not status.isascii() and not utf8:
            status = ascii_fold(status)  # RFC 6531: UTF-8 replies only to SMTPUTF8 transactions
        code = status[:3]
        if not self._in_greeting and not _HAS_ENHANCED.match(status) and code in _DEFAULT_ENHANCED:
            status = f"{code}{status[3:4] or ' '}{_DEFAULT_ENHANCED[code]} {status[4:]}".rstrip()
        metrics.smtp_reply(self, status)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA into one growing buffer: a 20 MiB message costs about 20 MiB, not a list of
        line objects plus their joined copy. Dot-unstuffing, the 1001-byte line limit and the
        size limit are as RFC 5321 §4.5.2 and aiosmtpd have them; only CRLF.CRLF ends the data."""
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
        buffer = bytearray()
        limit = self.data_size_limit
        too_long = too_much = False
        size = 0
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                too_long = True
                await self._reader.read(exc.consumed)
                continue
            except asyncio.IncompleteReadError:
                return  # the client went away mid-DATA: nothing was accepted
            if line == b".\r\n":
                break
            size += len(line)
            if len(line) > RFC_LINE_LIMIT:
                too_long = True
            if limit and size > limit:
                too_much = True
            if too_long or too_much:
                buffer.clear()  # keep reading to the end, keep nothing
                continue
            buffer += line[1:] if line.startswith(b".") else line
        else:
            return
        if too_long or too_much:
            self._set_post_data_state()
            await self.push(
                "552 5.3.4 Message too big" if too_much else "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
            )
            return
        self.envelope.original_content = self.envelope.content = buffer  # type: ignore[assignment]
        del buffer
        status = await metrics.smtp_acknowledged(self, self._call_handler_hook("DATA"))
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _set_post_data_state(self) -> None:
        # aiosmtpd resets the envelope before pushing the DATA reply: remember its SMTPUTF8.
        self._data_reply_utf8 = bool(self.envelope and self.envelope.smtp_utf8)
        self.transaction_over = True
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting = False

    async def smtp_HELO(self, hostname: str) -> None:
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
                line = await asyncio.wait_for(self._reader.readuntil(b"\n"), self._timeout_duration)
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
