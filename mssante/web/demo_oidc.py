"""The demo identity provider as a minimal OpenID Connect provider, on our HTTP listener.

Only in demo mode (``auth.demo_idp``, set by ``serve --demo``): it stands in for FranceConnect
so that the patient space's OIDC login (:mod:`mssante.web.oidc`) can be tried and tested end to
end. ``/demo-idp/.well-known/openid-configuration``, ``/demo-idp/jwks``, ``/demo-idp/authorize``
(a plain page, marked as a demonstration, where one picks a demo patient — no identity is
checked) and ``/demo-idp/token`` (code → ID token, single use, one minute, PKCE S256 checked).
The ID token is signed by the demo IdP's key (:class:`mssante.auth.testidp.LocalIdP`).
Codes live in the process's memory: the demo runs as one process.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mssante.auth.identity import IdentityKind
from mssante.auth.models import LocalAccount
from mssante.auth.testidp import LocalIdP
from mssante.web import common
from mssante.web.common import FormRefused
from mssante.web.oidc import CALLBACK, DEMO_CLIENT, challenge, demo_issuer, origin
from mssante.web.render import page
from mssante.web.security import secure

router = APIRouter(prefix="/demo-idp", include_in_schema=False)
CODE_SECONDS = 60
PARAMS = ("client_id", "redirect_uri", "state", "nonce", "code_challenge")


def _on(request: Request) -> bool:
    return bool(common.runtime(request).settings.auth.demo_idp)


def _idp(request: Request) -> LocalIdP:
    return LocalIdP.for_settings(common.runtime(request).settings)


def _codes(request: Request) -> dict[str, dict[str, Any]]:
    codes: dict[str, dict[str, Any]] = common.runtime(request).extras.setdefault("demo_oidc_codes", {})
    now = time.time()
    for code in [c for c, v in codes.items() if v["expires"] < now]:
        del codes[code]
    return codes


def _not_found() -> Response:
    return JSONResponse({"error": "not_found"}, status_code=404)


def _bad_request(request: Request, message: str) -> Response:
    return page(request, "patient/oidc_error.html", 400, error=message)


@router.get("/.well-known/openid-configuration")
async def discovery(request: Request) -> Response:
    if not _on(request):
        return _not_found()
    issuer = demo_issuer(request)
    return JSONResponse({
        "issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks",
        "response_types_supported": ["code"], "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"], "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"], "scopes_supported": ["openid"],
    })  # fmt: skip


@router.get("/jwks")
async def jwks(request: Request) -> Response:
    if not _on(request):
        return _not_found()
    return JSONResponse(json.loads(_idp(request).jwks_file.read_text()))


def _check(request: Request, params: Any) -> str | None:
    """Why an authorization request is refused, or None."""
    if params.get("response_type", "code") != "code":
        return "Seul le flux « code » est proposé."
    if params.get("client_id") != DEMO_CLIENT:
        return "Client inconnu du fournisseur d'identité de démonstration."
    if params.get("redirect_uri") != origin(request) + CALLBACK:
        return "Adresse de retour non enregistrée pour ce client."
    if params.get("code_challenge_method", "S256") != "S256" or not params.get("code_challenge"):
        return "PKCE (S256) est obligatoire."
    if not params.get("state") or not params.get("nonce"):
        return "Les paramètres state et nonce sont obligatoires."
    return None


def _patients(request: Request) -> list[dict[str, str]]:
    with Session(common.runtime(request).engine) as s:
        rows = s.execute(
            select(LocalAccount.ins, LocalAccount.display_name)
            .where(LocalAccount.kind == IdentityKind.PATIENT.value, LocalAccount.ins.is_not(None))
            .order_by(LocalAccount.display_name)
        ).all()
    return [{"ins": str(ins), "name": name or str(ins)} for ins, name in rows]


@router.get("/authorize")
async def authorize_form(request: Request) -> Response:
    if not _on(request):
        return _not_found()
    params = request.query_params
    refused = _check(request, params)
    if refused:
        return _bad_request(request, refused)
    return common.login_page(
        request, "demo_idp/authorize.html",
        params={name: params[name] for name in PARAMS}, patients=await run_in_threadpool(_patients, request),
    )  # fmt: skip


@router.post("/authorize")
async def authorize(request: Request) -> Response:
    if not _on(request):
        return _not_found()
    try:
        data = await common.form(request, None)
    except FormRefused as exc:
        return page(request, "patient/oidc_error.html", exc.status, error=str(exc))
    params = {name: common.text(data, name, 500) for name in PARAMS}
    refused = _check(request, params)
    ins = common.text(data, "ins", 15)
    if refused is None and ins not in {p["ins"] for p in await run_in_threadpool(_patients, request)}:
        refused = "Choisissez un patient de démonstration."
    if refused:
        return _bad_request(request, refused)
    code = secrets.token_urlsafe(32)
    _codes(request)[code] = {**params, "ins": ins, "expires": time.time() + CODE_SECONDS}
    query = urlencode({"code": code, "state": params["state"]})
    return secure(RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=303))


@router.post("/token")
async def token(request: Request) -> Response:
    if not _on(request):
        return _not_found()
    data = await request.form(max_files=0, max_fields=10)
    grant = _codes(request).pop(str(data.get("code") or ""), None)  # single use, even when refused

    def error(what: str, description: str) -> Response:
        return JSONResponse({"error": what, "error_description": description}, status_code=400)

    if data.get("grant_type") != "authorization_code":
        return error("unsupported_grant_type", "authorization_code only")
    if grant is None:
        return error("invalid_grant", "unknown, used or expired code")
    if data.get("client_id") != grant["client_id"] or data.get("redirect_uri") != grant["redirect_uri"]:
        return error("invalid_grant", "client_id or redirect_uri differ from the authorization request")
    if challenge(str(data.get("code_verifier") or "")) != grant["code_challenge"]:
        return error("invalid_grant", "PKCE code_verifier does not match")
    idp = _idp(request)
    ins = grant["ins"]
    id_token = idp.token(
        ins, IdentityKind.PATIENT, ttl=300, audience=grant["client_id"],
        iss=demo_issuer(request), sub=ins, nonce=grant["nonce"], acr="eidas2",
    )  # fmt: skip
    access = idp.token(ins, IdentityKind.PATIENT, ttl=300)
    return JSONResponse(
        {"access_token": access, "token_type": "Bearer", "expires_in": 300, "id_token": id_token},
        headers={"Cache-Control": "no-store"},
    )
