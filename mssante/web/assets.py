"""Static files: our own accessible style sheet, and the Système de Design de l'État (DSFR)
when it is installed.

The DSFR is not in the repository: ``./dev`` installs ``@gouvfr/dsfr`` from the npm registry
into ``.cache/dsfr/`` (outside git). It is found at ``[web] dsfr_dir`` when set (its ``dist/``
directory), else at ``.cache/dsfr/node_modules/@gouvfr/dsfr/dist`` of the source checkout this
package runs from. Without it the pages use ``fallback.css`` alone, which keeps them readable
and accessible (contrast, focus, sizes).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from mssante.web.security import secure

OWN = Path(__file__).resolve().parent / "static"
CHECKOUT = Path(__file__).resolve().parents[2]
DSFR_DEFAULT = CHECKOUT / ".cache" / "dsfr" / "node_modules" / "@gouvfr" / "dsfr" / "dist"
DSFR_CSS = "dsfr.min.css"

router = APIRouter()


def dsfr_dir(configured: Path | None) -> Path | None:
    """The DSFR ``dist/`` directory in use, or None (fallback style only)."""
    found = configured or DSFR_DEFAULT
    return found if (found / DSFR_CSS).is_file() else None


def _safe(base: Path, path: str) -> Path:
    """A file strictly under ``base`` (no traversal, no hidden files), or 404."""
    if not path or any(part.startswith(".") or part == "" for part in path.split("/")):
        raise HTTPException(404)
    target = (base / path).resolve()
    if not target.is_relative_to(base.resolve()) or not target.is_file():
        raise HTTPException(404)
    return target


def _file(target: Path) -> FileResponse:
    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return secure(FileResponse(target, media_type=kind), cache=True)  # type: ignore[return-value]


@router.get("/static/web/{path:path}", include_in_schema=False)
def own_static(path: str) -> FileResponse:
    return _file(_safe(OWN, path))


@router.get("/static/dsfr/{path:path}", include_in_schema=False)
def dsfr_static(path: str, request: Request) -> FileResponse:
    base = dsfr_dir(request.app.state.runtime.settings.web.dsfr_dir)
    if base is None:
        raise HTTPException(404)
    return _file(_safe(base, path))
