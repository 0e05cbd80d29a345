"""The web pages' router, mounted by :mod:`mssante.http`: static files, the patient space and
the professionals' DMP web."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from mssante.web import admin, assets, demo_oidc, oidc, patient, pro
from mssante.web.common import FORM_OVERHEAD
from mssante.web.submit import WebSubmitter

router = APIRouter()
router.include_router(assets.router)
router.include_router(oidc.router)
router.include_router(patient.router)
router.include_router(demo_oidc.router)
router.include_router(pro.router)
router.include_router(admin.router)


def bind(app: FastAPI, runtime: Any) -> None:
    """Prepare what the pages need once per process (the submission issuer)."""
    WebSubmitter.of(runtime)


def upload_limits(settings: Any) -> dict[str, int]:
    """The HTTP body limit of the pages that take files (``[web] max_upload_bytes`` and the form
    around it, a byte more than the pages' own check so that they answer in French)."""
    limit = settings.web.max_upload_bytes + FORM_OVERHEAD + 1
    return {"/patient/": limit, "/pro/": limit}
