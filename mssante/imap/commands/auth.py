"""The not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE (SASL through the gate)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from mssante.audit import AuditEvent
from mssante.imap.commands.base import Bad, Cancelled, No, Silent
from mssante.imap.commands.values import Authenticate, Command, Login
from mssante.imap.gate import Refusal, plain_initial
from mssante.imap.states import AUTHENTICATED

if TYPE_CHECKING:
    from mssante.imap.session import Session

log = logging.getLogger(__name__)


async def cmd_starttls(session: Session, command: Command) -> str:
    channel = session.channel
    if channel.tls or not session.starttls_available:
        raise Bad("TLS is not available here" if not channel.tls else "TLS is already active")
    await channel.write(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
    try:
        await channel.start_tls()
    except ssl.SSLError as exc:
        # What followed the OK was not a TLS handshake we accept (plaintext, an old protocol
        # version): the client's failure, not the server's; the connection ends, as Dovecot's.
        log.info("IMAP STARTTLS handshake failed for %s: %s", channel.peer, exc.reason or exc)
        raise ConnectionAbortedError("TLS handshake failed") from exc
    raise Silent()


async def cmd_login(session: Session, command: Command) -> str:
    assert isinstance(command.args, Login)
    if not session.channel.tls:
        raise No("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
    initial = plain_initial(command.args.user, command.args.password)
    return await _run_sasl(session, "PLAIN", initial, interactive=False)


async def cmd_authenticate(session: Session, command: Command) -> str:
    assert isinstance(command.args, Authenticate)
    if not session.channel.tls:
        raise No("Authentication is disabled before STARTTLS", "PRIVACYREQUIRED")
    mechanism = command.args.mechanism
    if mechanism not in session.gate.mechanisms(tls=session.channel.tls_info):
        raise No(f"Mechanism {mechanism} is not supported", "CANNOT")
    initial = command.args.initial.decode("ascii") if command.args.initial is not None else None
    return await _run_sasl(session, mechanism, initial, interactive=True)


async def _run_sasl(session: Session, mechanism: str, initial: str | None, *, interactive: bool) -> str:
    channel = session.channel

    async def respond(challenge: str) -> str:
        if not interactive:
            raise Cancelled()
        await channel.write(b"+ " + challenge.encode("ascii") + b"\r\n")
        line = await channel.read_line()
        if line is None:
            raise Cancelled()
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            raise Cancelled()
        return text

    try:
        result = await session.gate.authenticate(
            mechanism, initial, respond, tls=channel.tls_info, peer=channel.peer
        )
    except Cancelled:
        raise Bad("Authentication cancelled") from None
    if isinstance(result, Refusal):
        if result.delay:
            await asyncio.sleep(result.delay)
        if result.status == "BAD":
            raise Bad(result.text)
        raise No(result.text, result.code)
    session.principal = result
    session.state = AUTHENTICATED
    if result.bal is not None:
        await session.store.ensure_account(result.bal)
        session.opened.add(result.bal.lower())
        if not (await session.rights(result.bal.lower())).owner:
            # A delegate (or member) working in a BAL as in its own: traced in the BAL's trail.
            session.trace(
                AuditEvent(
                    actor=result.actor,
                    action="mailbox.open_on_behalf",
                    bal=result.bal.lower(),
                    source=session.source,
                    detail={"mechanism": mechanism, "delegated": True},
                )
            )
    return f"[CAPABILITY {' '.join(session.capabilities())}] Logged in"
