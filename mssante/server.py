"""``mssante serve``: one asyncio event loop running every configured listener.

Listeners are started in order and stopped in reverse order on SIGINT/SIGTERM: stop
accepting, let in-flight work finish (bounded by ``server.shutdown_grace_seconds``), close
the store (which drains the writer, so every acknowledged message is committed), exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from mssante import collector, memory
from mssante.config import Settings
from mssante.lifecycle import set_ready
from mssante.listening import ListenerStarter, RunningListener
from mssante.proxy_protocol import ProxySettings, create_server
from mssante.runtime import Runtime, WorkerSlot, initialise, open_runtime

log = logging.getLogger("mssante")


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("session", "peer", "listener"):
            if getattr(record, key, "-") != "-":
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _SessionField(logging.Filter):
    """Every line names its session ("-" outside one), so one conversation can be followed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = "-"
        return True


def configure_logging(settings: Settings) -> None:
    # No line shows the caller's file and line, thread or process: don't look them up for
    # every record (the logging HOWTO's "Optimization"; a line per accepted message, a
    # fifth of its cost was finding its caller).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionField())
    if settings.log.format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        text = "%(asctime)s %(levelname)s %(name)s [%(session)s] %(message)s"
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level)
    # aiosmtpd logs every command line at INFO (addresses included): keep that for DEBUG.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the server process, not uvicorn, owns the signals."""

    proxy: ProxySettings | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Behind balancers, uvicorn's protocols are served by our PROXY-protocol listener:
        uvicorn builds its server with ``loop.create_server``, answered here for its start."""
        if self.proxy is None:
            return await super().startup(sockets)
        loop = asyncio.get_running_loop()
        proxy = self.proxy

        async def create(factory: Any, host: str, port: int, *, ssl: Any = None, **_: Any) -> Any:
            return await create_server(factory, host, port, ssl=ssl, ssl_handshake_timeout=60.0, proxy=proxy)

        loop.create_server = create  # type: ignore[method-assign,assignment]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # the loop's own method again


async def start_http(runtime: Runtime) -> list[RunningListener]:
    from mssante.http import uvicorn_config

    settings = runtime.settings
    if not settings.http.enabled:
        return []
    tls_files = settings.tls.cert_file and settings.tls.key_file
    if not tls_files and not _is_loopback(settings.http.host):
        raise OSError(
            "refusing to serve HTTP without TLS on a non-loopback address: set tls.cert_file/key_file"
        )
    config = uvicorn_config(runtime, tls=bool(tls_files))
    server = _EmbeddedUvicorn(config)
    server.proxy = ProxySettings.of(settings.http)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # re-raise the bind error
            raise OSError("HTTP listener stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    async def close() -> None:
        server.should_exit = True
        await task

    return [
        RunningListener("http", "http", settings.http.host, port, "implicit" if tls_files else "none", close)
    ]


def queue_delivery_starters() -> list[ListenerStarter]:
    """What the submission queue's delivery process runs: no port, the store's feeds (its
    commits wake the serving workers' IDLE sessions), the outbound queue (its messages for
    other operators leave at once) and the queue's delivery itself."""
    from mssante.annuaire_watch import start_annuaire_watch
    from mssante.metrics_workers import start_metrics_peer
    from mssante.smtp.queue_delivery import start_queue_delivery
    from mssante.smtp.relay import start_relay
    from mssante.store.pgfeed import start_cluster_feed
    from mssante.store.siblingfeed import start_sibling_feed

    return [
        start_annuaire_watch,
        start_cluster_feed,
        start_sibling_feed,
        start_relay,
        start_queue_delivery,
        start_metrics_peer,
    ]


def listener_starters(*, primary: bool = True) -> list[ListenerStarter]:
    """Front doors, in start order (imported here, when serving: they import the whole stack).

    With several worker processes, the ones after the first (not ``primary``) serve the mail
    ports and the outbound queue only: the web, directory updates and the node's identity are
    the primary's."""
    from mssante.annuaire_watch import start_annuaire_watch
    from mssante.directory_updates import start_directory_updates
    from mssante.imap.listeners import start_imap
    from mssante.metrics_workers import start_metrics_peer
    from mssante.nodes import start_node_identity
    from mssante.smtp.listeners import start_smtp
    from mssante.smtp.relay import start_relay
    from mssante.store.pgfeed import start_cluster_feed
    from mssante.store.siblingfeed import start_sibling_feed

    if not primary:
        return [
            start_annuaire_watch,
            start_cluster_feed,
            start_sibling_feed,
            start_smtp,
            start_imap,
            start_relay,
            start_metrics_peer,
        ]
    return [
        start_node_identity,
        start_annuaire_watch,
        start_cluster_feed,
        start_sibling_feed,
        start_http,
        start_smtp,
        start_imap,
        start_relay,
        start_directory_updates,
    ]


async def serve_forever(
    runtime: Runtime, ready: Callable[[list[RunningListener]], None] | None = None
) -> None:
    """Start every listener, wait for SIGINT/SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    running: list[RunningListener] = []
    primary = runtime.worker is None or runtime.worker.primary
    try:
        starters = queue_delivery_starters() if runtime.delivers_queue else listener_starters(primary=primary)
        for starter in starters:
            running.extend(await starter(runtime))
        runtime.listeners[:] = [item for item in running if item.public]
        for item in running:
            log.info(
                "listening: %s %s://%s:%d (tls: %s)", item.name, item.protocol, item.host, item.port, item.tls
            )
        if ready is not None and primary:
            ready(running)
        if runtime.worker is not None:
            runtime.worker.serving()
        set_ready(runtime, True)
        await stop.wait()
        log.info("shutting down")
    finally:
        set_ready(runtime, False)  # /health/ready answers 503: balancers stop sending traffic
        grace = runtime.settings.server.shutdown_grace_seconds
        for item in reversed(running):
            try:
                await asyncio.wait_for(item.close(), grace)
            except (TimeoutError, Exception):
                log.exception("listener %s did not stop cleanly", item.name)
        # Background work on accepted messages (notifications, DMP deposits) finishes too.
        try:
            await asyncio.wait_for(runtime.delivery_hooks.drain(), grace)
        except TimeoutError:
            log.warning("delivery hooks still running after %.0f s; stopping anyway", grace)


def run(settings: Settings, *, demo: bool = False) -> None:
    configure_logging(settings)
    ready: Callable[[list[RunningListener]], None] | None = None
    if demo:
        from mssante import demo as demo_mode

        for line in [*demo_mode.demo_settings(settings), *initialise(settings)]:
            log.info(line)
        document = demo_mode.setup(settings)

        def ready(listeners: list[RunningListener]) -> None:
            path = demo_mode.write_demo_json(settings, document, listeners)
            log.info("demo ready: accounts, passwords and ports in %s", path)

    # A queued server delivers in a process of its own: it runs under the supervisor, whose
    # workers are the serving ones and, after them, the queue's delivery process.
    if settings.server.workers > 1 or settings.smtp.acknowledge == "queued":
        from mssante.workers import run_workers

        def serve_one(worker_settings: Settings, slot: WorkerSlot) -> None:
            serve(worker_settings, ready, slot)

        if run_workers(settings, serve_one):
            raise OSError("a worker process could not start (see the log above)")
        return
    serve(settings, ready)


def serve(
    settings: Settings,
    ready: Callable[[list[RunningListener]], None] | None = None,
    worker: WorkerSlot | None = None,
) -> None:
    """Serve in this process (the whole server, or one of its workers) until stopped."""
    memory.tune()  # again in a worker process: glibc arenas, TLS buffers
    runtime = open_runtime(settings)
    runtime.worker = worker
    collector.settle()  # what was just loaded stays for good: out of every full collection
    try:
        asyncio.run(serve_forever(runtime, ready))
    finally:
        runtime.close()
        log.info("stopped; every acknowledged message is committed")
