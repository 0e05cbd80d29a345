"""Starting the SMTP front doors: submission (STARTTLS), submissions (implicit TLS), relay-in.

Each listener is an asyncio server whose protocol is an ``MSSanteSMTP`` session bound to a
handler; the TLS contexts come from ``mssante.tls`` (one TLS policy for the whole product).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import dns.resolver

from mssante.listening import RunningListener, share_of
from mssante.proxy_protocol import ProxySettings, create_server
from mssante.runtime import Runtime
from mssante.smtp import dkim
from mssante.smtp.handlers import RelayHandler, SubmissionHandler
from mssante.smtp.queue import QueueBell, SubmissionQueue
from mssante.smtp.session import ConnectionLimits, MSSanteSMTP
from mssante.store.spooled import spool_dir
from mssante.tls import ClientCertMode, server_context

log = logging.getLogger("mssante.smtp")


def dkim_resolver(records_dir: Path | None) -> Any:
    """TXT look-ups for DKIM: the configured records directory first, then DNS."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        text = name.decode().rstrip(".")
        if records_dir is not None:
            path = records_dir / f"{text}.txt"
            if path.is_file():
                return path.read_bytes().strip()
        try:
            answer = dns.resolver.resolve(text, "TXT", lifetime=timeout)
        except Exception:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


async def _serve(
    name: str,
    host: str,
    port: int,
    factory: Any,
    *,
    implicit: ssl.SSLContext | None,
    tls_mode: str,
    proxy: ProxySettings | None = None,
    shared: bool = False,
) -> RunningListener:
    server = await create_server(factory, host, port, ssl=implicit, proxy=proxy, reuse_port=shared)
    bound = server.sockets[0].getsockname()[1]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return RunningListener(name, "smtp", host, bound, tls_mode, close)


async def start_smtp(runtime: Runtime) -> list[RunningListener]:
    settings = runtime.settings
    smtp = settings.smtp
    if runtime.policy is None or runtime.authenticator is None:
        return []
    common = {
        "store": runtime.store,
        "policy": runtime.policy,
        "hostname": settings.server.hostname,
        "max_recipients": smtp.max_recipients,
        "hooks": runtime.delivery_hooks,
    }
    assert settings.dkim.keys_dir is not None
    queue = None
    if smtp.acknowledge == "queued":
        assert runtime.worker is not None, "a queued server runs its delivery in a worker process"
        queue = (SubmissionQueue(settings.data_dir, runtime.keyring), QueueBell(runtime.worker.group))
    submission = SubmissionHandler(
        signer=dkim.Signer(settings.dkim.keys_dir, settings.dkim.selector), queue=queue, **common
    )
    relay = RelayHandler(
        dkim_reject_on_fail=settings.dkim.reject_on_fail,
        dkim_dns=dkim_resolver(settings.dkim.records_dir),
        **common,
    )
    # Submission offers EXTERNAL to software, so it asks for (optional) client certificates.
    client_ctx = server_context(settings.tls, client_certs=ClientCertMode.OPTIONAL)
    relay_ctx = server_context(settings.tls, client_certs=ClientCertMode.OPTIONAL)
    workers = settings.server.workers
    limits = ConnectionLimits(
        share_of(smtp.max_connections, workers), share_of(smtp.max_connections_per_ip, workers)
    )
    proxy = ProxySettings.of(smtp)
    shared = runtime.worker is not None  # under the supervisor, whose port holders share them
    session_args: dict[str, Any] = {
        "hostname": settings.server.hostname,
        "ident": "mssante ESMTP",
        "data_size_limit": smtp.max_message_size,
        "spool_dir": spool_dir(settings.data_dir) if smtp.spool_threshold else None,
        "spool_threshold": smtp.spool_threshold,
        "timeout": smtp.timeout_seconds,
        "login_timeout": smtp.login_timeout_seconds,
        "limits": limits,
    }

    def submission_session(tls_ctx: ssl.SSLContext | None, listener: str) -> Any:
        return lambda: MSSanteSMTP(
            submission,
            listener=listener,
            authenticator=runtime.authenticator,
            tls_context=tls_ctx,
            require_starttls=tls_ctx is not None,
            auth_required=True,
            auth_require_tls=True,
            **session_args,
        )

    listeners = [
        await _serve(
            "submission",
            smtp.host,
            smtp.submission_port,
            submission_session(client_ctx, "submission"),
            implicit=None,
            tls_mode="starttls",
            proxy=proxy,
            shared=shared,
        ),
        await _serve(
            "submissions",
            smtp.host,
            smtp.submissions_port,
            submission_session(None, "submissions"),
            implicit=client_ctx,
            tls_mode="implicit",
            proxy=proxy,
            shared=shared,
        ),
        await _serve(
            "relay",
            smtp.host,
            smtp.relay_port,
            lambda: MSSanteSMTP(
                relay,
                listener="relay",
                authenticator=None,
                tls_context=relay_ctx,
                require_starttls=True,
                **session_args,
            ),
            implicit=None,
            tls_mode="starttls",
            proxy=proxy,
            shared=shared,
        ),
    ]
    drained = _drained(listeners, limits, settings.server.shutdown_grace_seconds)
    if queue is None:
        return drained
    files, bell = queue

    async def close_queue() -> None:  # (closed last: after the sessions it serves)
        bell.close()
        await asyncio.to_thread(files.close)

    return [RunningListener("smtp-queue", "sqlite", "", 0, "none", close_queue, public=False), *drained]


def _drained(
    listeners: list[RunningListener], limits: ConnectionLimits, grace: float
) -> list[RunningListener]:
    """Stopping SMTP stops the three doors together, then lets the sessions under way end on
    their own (a transaction in DATA gets its 250 once committed), for at most ``grace`` less a
    second; what is left is cut by the process's exit, with nothing acknowledged lost."""
    closes = [item.close for item in listeners]
    done = False

    async def close_all() -> None:
        nonlocal done
        if done:
            return
        done = True
        for close in closes:
            await close()
        deadline = asyncio.get_running_loop().time() + max(0.0, grace - 1.0)
        while limits.open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    for item in listeners:
        item.close = close_all
    return listeners
