"""The HTTP listener's application: health, and the routers of each area (FHIR directory,
DMP API), served by uvicorn inside the server's event loop.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastapi import FastAPI

from mssante import __version__

# Each area exposes ``router`` (a FastAPI APIRouter) and, optionally, ``bind(app, runtime)``.
ROUTER_MODULES: tuple[str, ...] = ("annuaire.fhir", "dmp.api")


def create_app(runtime: Any) -> FastAPI:
    """Build the application for one runtime (a ``mssante.runtime.Runtime``)."""
    app = FastAPI(title="mssante", version=__version__, docs_url=None, redoc_url=None)
    app.state.runtime = runtime

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness plus what monitoring watches: outbound queue depth and oldest entry's age, and
        the age of the lists fetched on a schedule (``stale`` past their configured age)."""
        from sqlalchemy.orm import Session

        from annuaire.updates import scheduled_lists, status
        from mssante.smtp.relay import queue_stats

        with Session(runtime.engine) as session:
            queue = queue_stats(session)
        lists = status(runtime.engine, scheduled_lists(runtime.settings))
        return {"status": "ok", "version": __version__, "queue": queue, "lists": lists}

    from mssante.lifecycle import add_health_routes

    add_health_routes(app, runtime)
    for name in ROUTER_MODULES:
        module = importlib.import_module(name)
        app.include_router(module.router)
    return app
