"""The HTTP listener's application: health, and the routers of each area (FHIR directory,
DMP API, client autoconfiguration), served by uvicorn inside the server's event loop, with the
TLS policy of ``mssante.tls`` (uvicorn's own context would ignore ``tls.*``).

Hostile requests are turned away before they cost memory (issue 13, item 7):

- a body larger than ``http.max_body_bytes`` gets ``413`` — at once when ``Content-Length``
  announces it, otherwise as soon as the streamed chunks pass the limit (an ASGI middleware
  counts them as the application reads, nothing is buffered beyond the limit);
- on the routes of an area that declares ``BEARER_LISTENER`` (the DMP API), a request without a
  valid bearer token gets ``401`` before its body is read; the identity checked here is the
  one the routes use (``request.state.identity``), counted and audited once;
- a validation error names the fields and the problem, never echoes what was sent (FastAPI's
  default 422 copies the offending ``input`` back, which may be health data or a token).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from mssante import __version__, metrics
from mssante.tls import ClientCertMode, server_context

# Each area exposes ``router`` (a FastAPI APIRouter), and ``BEARER_LISTENER`` (the listener name
# its logins are audited under) when every one of its routes needs a bearer token, and,
# optionally, ``bind(app, runtime)`` and ``upload_limits(settings)``.
ROUTER_MODULES: tuple[str, ...] = ("annuaire.fhir", "dmp.api", "mssante.clientconfig.http", "mssante.web.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _reply(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"request body larger than {limit} bytes")


class BodyLimit:
    """``413`` for a body over ``limit`` bytes, decided while reading, never after buffering."""

    def __init__(self, app: ASGIApp, limit: int, uploads: dict[str, int] | None = None) -> None:
        # ``uploads``: path prefix → a larger limit for the routes that take files (web forms).
        self.app, self.default, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = max([v for p, v in self.uploads.items() if path.startswith(p)], default=self.default)
        lengths = [v for k, v in scope["headers"] if k.lower() == b"content-length"]
        try:
            announced = int(lengths[0]) if lengths else None
        except ValueError:
            await _reply(send, 400, {"detail": "invalid Content-Length"}, [])
            return
        if announced is not None and announced > limit:
            await _reply(send, 413, {"detail": f"request body larger than {limit} bytes"}, [])
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:
            if started:
                raise
            await _reply(send, 413, {"detail": exc.detail}, [])


class BearerGate:
    """Routes under ``prefixes`` need a valid bearer token, checked before the body is read."""

    def __init__(self, app: ASGIApp, runtime: Any, prefixes: dict[str, str]) -> None:
        self.app, self.runtime, self.prefixes = app, runtime, prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = self._listener(scope)
        if listener is None:
            await self.app(scope, receive, send)
            return
        from mssante.auth.authenticator import Authenticator, AuthSuccess

        challenge = [(b"www-authenticate", b'Bearer realm="mssante", error="invalid_token"')]
        authorization = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _reply(send, 401, {"detail": "a bearer token is required"}, challenge)
            return
        authenticator = getattr(self.runtime, "authenticator", None)
        if not isinstance(authenticator, Authenticator):
            await _reply(send, 503, {"detail": "authentication is not configured on this server"}, [])
            return
        client = scope.get("client")
        client_ip = client[0] if client else "0.0.0.0"
        result = await asyncio.to_thread(
            authenticator.authenticate_bearer, token, client_ip=client_ip, listener=listener
        )
        if not isinstance(result, AuthSuccess):
            await _reply(send, 401, {"detail": getattr(result, "reason", "authentication failed")}, challenge)
            return
        scope.setdefault("state", {})["identity"] = result.identity
        await self.app(scope, receive, send)

    def _listener(self, scope: Scope) -> str | None:
        if scope["type"] != "http":
            return None
        path = scope.get("path", "")
        for prefix, listener in self.prefixes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return listener
        return None


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each field and problem, without the ``input`` FastAPI would echo."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(runtime: Any) -> FastAPI:
    """Build the application for one runtime (a ``mssante.runtime.Runtime``)."""
    app = FastAPI(title="mssante", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(metrics.router(runtime))  # /metrics, for the configured scrapers only

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness plus what monitoring watches: outbound queue depth and oldest entry's age (and
        the submission queue's with ``smtp.acknowledge = "queued"``), and the age of the lists
        fetched on a schedule (``stale`` past their configured age). With
        several workers, each one and whether it serves: ``degraded`` while one does not (it is
        being started again, or is stuck)."""
        from sqlalchemy.orm import Session

        from annuaire.updates import scheduled_lists, status
        from mssante.smtp.relay import queue_stats

        with Session(runtime.engine) as session:
            queue = queue_stats(session)
        lists = status(runtime.engine, scheduled_lists(runtime.settings))
        report: dict[str, Any] = {"status": "ok", "version": __version__, "queue": queue, "lists": lists}
        if runtime.settings.smtp.acknowledge == "queued":
            from mssante.smtp.queue import queue_stats as submission_stats

            report["submission_queue"] = submission_stats(runtime.settings.data_dir)
        if runtime.worker is not None and runtime.worker.count > 1:
            from mssante.metrics_workers import health as workers_health

            report["workers"] = workers_health(runtime)
            if not all(worker["serving"] for worker in report["workers"]):
                report["status"] = "degraded"
        return report

    from mssante.lifecycle import add_health_routes

    add_health_routes(app, runtime)
    protected: dict[str, str] = {}
    uploads: dict[str, int] = {}
    for name in ROUTER_MODULES:
        module = importlib.import_module(name)
        app.include_router(module.router)
        if hasattr(module, "bind"):
            module.bind(app, runtime)
        if hasattr(module, "upload_limits"):
            # Not getattr(…, dict)(settings): Settings has a `keys` section, so dict() takes it
            # for a mapping and calls settings.keys().
            uploads.update(module.upload_limits(runtime.settings))
        listener = getattr(module, "BEARER_LISTENER", None)
        if listener:
            protected[module.router.prefix] = listener
    # Outermost first: the size limit applies to everything, the token check before any body.
    app.add_middleware(BearerGate, runtime=runtime, prefixes=protected)
    app.add_middleware(BodyLimit, limit=runtime.settings.http.max_body_bytes, uploads=uploads)
    return app


class _PolicyConfig(uvicorn.Config):
    """uvicorn with the listener's ``SSLContext`` built by ``mssante.tls`` (its own would apply
    neither ``tls.ciphers`` nor ``tls.min_version``)."""

    def __init__(self, app: Any, *, ssl_context: ssl.SSLContext | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.policy_ssl = ssl_context

    def load(self) -> None:
        super().load()
        self.ssl = self.policy_ssl


def uvicorn_config(runtime: Any, *, tls: bool) -> uvicorn.Config:
    settings = runtime.settings
    context = (
        server_context(settings.tls, client_certs=ClientCertMode.NONE, alpn=["http/1.1"]) if tls else None
    )
    return _PolicyConfig(
        create_app(runtime),
        ssl_context=context,
        host=settings.http.host,
        port=settings.http.port,
        log_level="warning",
        lifespan="off",
    )
