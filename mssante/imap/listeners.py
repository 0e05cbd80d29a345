"""The IMAP front doors of ``mssante serve``: STARTTLS (``imap.port``) and implicit TLS
(``imap.tls_port``), authenticated by ``mssante.auth`` and opened on the BAL the policy allows.

``start_imap`` has the signature of :data:`mssante.listening.ListenerStarter`: adding it to
``listener_starters()`` is what puts IMAP in ``mssante serve``.
"""

from __future__ import annotations

import asyncio

from delegation.grants import GrantBook
from delegation.imap import DelegationAccess
from delegation.reach import default_bal
from mssante.auth.identity import Identity, IdentityKind
from mssante.imap.auth_gate import AuthenticatorGate, ResolveBal
from mssante.imap.server import ImapServer, Limits
from mssante.listening import RunningListener, share_of
from mssante.policy import Policy
from mssante.proxy_protocol import ProxySettings
from mssante.runtime import Runtime
from mssante.store.spooled import spool_dir
from mssante.tls import ClientCertMode, server_context


def policy_bal_resolver(policy: Policy, grants: GrantBook | None = None) -> ResolveBal:
    """The BAL a session opens as its own: the SASL authorization identity if one was allowed
    (PLAIN authzid, or the ``<BAL>*<login>`` user name), else the BAL of its login, else its
    single delegated BAL (``delegation.reach.default_bal``); ``Policy`` decides every one."""

    def decide(identity: Identity, authzid: str | None) -> str | None:
        if authzid is None and grants is not None:
            return default_bal(policy, grants, identity)
        address = authzid or identity.login
        if not address:
            return None
        bal = policy.mailbox(identity, address)
        return bal.address if bal is not None else None

    async def resolve(identity: Identity, authzid: str | None) -> str | None:
        return await asyncio.to_thread(decide, identity, authzid)

    return resolve


def works_without_bal(identity: Identity) -> bool:
    """Staff (a secretary) and professionals may log in with no BAL of their own: they work in
    the shared namespace on the BALs delegated to them or whose ORG they belong to."""
    return identity.kind in (IdentityKind.STAFF, IdentityKind.PROFESSIONAL)


async def start_imap(runtime: Runtime) -> list[RunningListener]:
    settings = runtime.settings
    if runtime.policy is None or runtime.authenticator is None:
        return []
    # Client certificates are asked for (and verified) so that APP BALs can use SASL EXTERNAL.
    context = server_context(settings.tls, client_certs=ClientCertMode.OPTIONAL)
    gate = AuthenticatorGate(
        runtime.authenticator,
        policy_bal_resolver(runtime.policy, runtime.grants),
        without_bal=works_without_bal,
    )
    access = None
    if runtime.grants is not None:
        access = DelegationAccess(
            runtime.policy, runtime.grants, runtime.writer_engine, read=runtime.store.rows
        )
    imap = settings.imap
    limits = Limits(
        max_append=settings.smtp.max_message_size,
        spool_dir=spool_dir(settings.data_dir) if settings.smtp.spool_threshold else None,
        spool_threshold=settings.smtp.spool_threshold,
        preauth_max_literal=imap.preauth_max_literal,
        login_timeout=imap.login_timeout_seconds,
        preauth_command_timeout=imap.preauth_command_timeout_seconds,
        preauth_max_errors=imap.preauth_max_errors,
        idle_timeout=imap.idle_timeout_seconds,
        # With several worker processes each applies its share of the caps.
        max_connections=share_of(imap.max_connections, settings.server.workers),
        max_connections_per_ip=share_of(imap.max_connections_per_ip, settings.server.workers),
    )
    server = ImapServer(
        runtime.store,
        gate,
        tls_context=context,
        hostname=settings.server.hostname,
        limits=limits,
        access=access,
        proxy=ProxySettings.of(imap),
        shared_ports=runtime.worker is not None,  # under the supervisor: its holders share them
    )
    starttls = await server.start(imap.host, imap.port)
    implicit = await server.start(imap.host, imap.tls_port, implicit_tls=True)
    closed = False

    async def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        for listener in (starttls, implicit):
            listener.close()
        await server.close_connections()
        for listener in (starttls, implicit):
            await listener.wait_closed()

    return [
        RunningListener("imap", "imap", imap.host, starttls.sockets[0].getsockname()[1], "starttls", close),
        RunningListener("imaps", "imap", imap.host, implicit.sockets[0].getsockname()[1], "implicit", close),
    ]
