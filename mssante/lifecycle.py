"""A node's life as the balancer sees it: ``/health/live`` (the process answers) and
``/health/ready`` (send it traffic: database reachable, schema current, listeners up and
not draining).

``mssante serve`` marks the node ready once every listener is up and unready as soon as it
starts draining (SIGTERM), so HAProxy's ``option httpchk GET /health/ready`` takes the node
out of rotation before its doors close.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

READY = "ready"  # key in Runtime.extras: True while the node accepts traffic


def set_ready(runtime: Any, ready: bool) -> None:
    runtime.extras[READY] = ready


def readiness(runtime: Any) -> dict[str, Any]:
    """What ``/health/ready`` reports: each check and whether all passed."""
    from mssante.schema import head_revision

    checks: dict[str, Any] = {"listeners": bool(runtime.extras.get(READY))}
    try:
        with runtime.engine.connect() as conn:
            # Alembic's own reader logs at INFO on each call: a health check every second would
            # fill the log, so read its table directly.
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        checks["database"] = True
        head = head_revision()
        checks["schema"] = current == head
        if current != head:
            checks["schema_revision"] = {"database": current, "code": head}
    except Exception as exc:  # the database is down or unreachable: not ready, say why
        checks["database"] = False
        checks["error"] = type(exc).__name__
    ok = checks["listeners"] and checks["database"] and checks.get("schema", False)
    return {"status": "ready" if ok else "unavailable", "node": runtime.settings.server.hostname, **checks}


def add_health_routes(app: FastAPI, runtime: Any) -> None:
    @app.get("/health/live")
    def live(request: Request) -> dict[str, Any]:
        """The process serves requests; ``client`` is the address this node sees for the caller
        (behind a balancer with the PROXY protocol: the real client's)."""
        client = request.client.host if request.client else None
        return {"status": "live", "node": runtime.settings.server.hostname, "client": client}

    @app.get("/health/ready")
    def ready() -> JSONResponse:
        """200 when the node should get traffic, else 503 with the failing checks."""
        report = readiness(runtime)
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503)
