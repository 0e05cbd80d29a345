"""OpenID Connect login of the patient space (FranceConnect style), the relying party side.

Authorization code flow with PKCE (S256): ``/patient/oidc/connexion`` draws ``state``, ``nonce``
and the code verifier, keeps them in a short-lived ``__Host-`` cookie and sends the browser to
the provider; ``/patient/oidc/retour`` checks ``state`` against that cookie, exchanges the code
(with the verifier) at the token endpoint, and accepts the ID token only if it is signed by a
key of the issuer's JWKS (RS256/ES256), names the configured issuer and our client id, has not
expired and carries our nonce. The INS claim (``[web] patient_oidc_ins_claim``) maps to the
patient's account and BAL. The provider does its own second factor, so the web TOTP is not
asked, as for a pasted patient token. Every success or refusal is in the audit trail.

The cookie is ``SameSite=Lax``, not Strict like the others: the provider's redirect back is a
cross-site navigation, on which a Strict cookie would not be sent.
In demo mode (no issuer configured, ``auth.demo_idp`` on), the provider is the demo identity
provider of :mod:`mssante.web.demo_oidc` on this same listener.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from jwt import PyJWKSet
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mssante import audit
from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity
from mssante.auth.models import LocalAccount
from mssante.db import transaction
from mssante.web import common
from mssante.web.render import page
from mssante.web.security import secure

router = APIRouter(prefix="/patient/oidc", include_in_schema=False)
COOKIE = "__Host-mssante-oidc"
CALLBACK = "/patient/oidc/retour"
ALGORITHMS = ("RS256", "ES256")
DEMO_CLIENT = "mssante-demo-patient"
LEEWAY = 60


class OIDCRefused(Exception):
    """A refused OIDC login, with the French message shown and the audit reason."""

    def __init__(self, message: str, reason: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Provider:
    issuer: str
    client_id: str
    client_secret: str | None
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    scope: str
    ins_claim: str
    label: str
    demo: bool


def origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def demo_issuer(request: Request) -> str:
    return f"{origin(request)}/demo-idp"


async def provider(request: Request) -> Provider | None:
    """The configured provider (discovery read once per process), the demo one, or None."""
    settings = common.runtime(request).settings
    web = settings.web
    if not web.patient_oidc_issuer:
        if not settings.auth.demo_idp:
            return None
        issuer = demo_issuer(request)
        return Provider(
            issuer, DEMO_CLIENT, None, f"{issuer}/authorize", f"{issuer}/token", f"{issuer}/jwks",
            "openid", "sub", "FranceConnect (démo)", True,
        )  # fmt: skip
    endpoints = {
        "authorization_endpoint": web.patient_oidc_authorization_endpoint,
        "token_endpoint": web.patient_oidc_token_endpoint,
        "jwks_uri": web.patient_oidc_jwks_uri,
    }
    if not all(endpoints.values()):
        cache: dict[str, Any] = common.runtime(request).extras.setdefault("patient_oidc_discovery", {})
        if not cache:
            url = web.patient_oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.get(url)
                    response.raise_for_status()
                    cache.update(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise OIDCRefused(
                    "Le fournisseur d'identité ne répond pas. Réessayez plus tard.", f"discovery: {exc}", 503
                ) from None
        endpoints = {k: v or str(cache.get(k, "")) for k, v in endpoints.items()}
    assert web.patient_oidc_client_id is not None
    return Provider(
        web.patient_oidc_issuer, web.patient_oidc_client_id, web.patient_oidc_client_secret,
        str(endpoints["authorization_endpoint"]), str(endpoints["token_endpoint"]),
        str(endpoints["jwks_uri"]),
        web.patient_oidc_scope, web.patient_oidc_ins_claim, web.patient_oidc_label, False,
    )  # fmt: skip


def _client(request: Request, found: Provider) -> httpx.AsyncClient:
    """The demo provider is served by this very app: reach it in process (the same routes,
    without a loopback round trip through our own TLS); a real provider over HTTPS."""
    if found.demo:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=request.app), timeout=10)
    return httpx.AsyncClient(timeout=10, follow_redirects=False)


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _refused(request: Request, exc: OIDCRefused) -> Response:
    return page(request, "patient/oidc_error.html", exc.status, error=str(exc), space="patient")


@router.get("/connexion")
async def start(request: Request) -> Response:
    try:
        found = await provider(request)
    except OIDCRefused as exc:
        return _refused(request, exc)
    if found is None:
        return _refused(
            request, OIDCRefused("La connexion par fournisseur d'identité n'est pas configurée.", "off", 404)
        )
    state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    query = urlencode({
        "response_type": "code", "client_id": found.client_id, "redirect_uri": origin(request) + CALLBACK,
        "scope": found.scope, "state": state, "nonce": nonce,
        "code_challenge": challenge(verifier), "code_challenge_method": "S256",
    })  # fmt: skip
    response = RedirectResponse(f"{found.authorization_endpoint}?{query}", status_code=303)
    response.set_cookie(
        COOKIE,
        f"{state}.{nonce}.{verifier}",
        max_age=600,
        path="/",
        secure=True,
        httponly=True,
        samesite="lax",
    )
    return secure(response)


@router.get("/retour")
async def callback(request: Request) -> Response:
    try:
        found = await provider(request)
        if found is None:
            raise OIDCRefused("La connexion par fournisseur d'identité n'est pas configurée.", "off", 404)
        identity = await _finish(request, found)
    except OIDCRefused as exc:
        await run_in_threadpool(_trace, request, None, "refused", exc.reason)
        response = _refused(request, exc)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response
    await run_in_threadpool(_trace, request, identity, "ok", None)
    done = await common.start_session(
        request, RedirectResponse("/patient/", status_code=303), identity, "patient"
    )
    done.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return secure(done)


async def _finish(request: Request, found: Provider) -> Identity:
    params = request.query_params
    if params.get("error"):
        raise OIDCRefused(
            "Le fournisseur d'identité n'a pas confirmé votre identité "
            f"({params.get('error_description') or params.get('error')}). Recommencez la connexion.",
            "provider_error",
        )
    stored = (request.cookies.get(COOKIE) or "").split(".")
    if len(stored) != 3:
        raise OIDCRefused(
            "Votre demande de connexion a expiré ou n'a pas été faite depuis ce navigateur : recommencez.",
            "no_request",
        )
    state, nonce, verifier = stored
    if not secrets.compare_digest(state.encode(), (params.get("state") or "").encode()):
        raise OIDCRefused(
            "Connexion refusée : la réponse du fournisseur d'identité ne correspond pas à votre demande "
            "(paramètre « state » invalide, possible tentative de falsification). Recommencez la connexion.",
            "state",
        )
    code = params.get("code")
    if not code:
        raise OIDCRefused("Le fournisseur d'identité n'a pas renvoyé de code d'autorisation.", "no_code")
    async with _client(request, found) as client:
        form = {
            "grant_type": "authorization_code", "code": code, "redirect_uri": origin(request) + CALLBACK,
            "client_id": found.client_id, "code_verifier": verifier,
        }  # fmt: skip
        try:
            if found.client_secret:  # client_secret_basic
                answer = await client.post(
                    found.token_endpoint, data=form, auth=(found.client_id, found.client_secret)
                )
            else:
                answer = await client.post(found.token_endpoint, data=form)
            if answer.status_code != 200:
                raise OIDCRefused(
                    "Le fournisseur d'identité a refusé l'échange du code d'autorisation "
                    f"({answer.json().get('error', answer.status_code)}). Recommencez la connexion.",
                    "token_endpoint",
                )
            id_token = str(answer.json().get("id_token") or "")
            jwks = (await client.get(found.jwks_uri)).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OIDCRefused(
                "Le fournisseur d'identité ne répond pas. Réessayez plus tard.", f"unreachable: {exc}", 503
            ) from None
    claims = verify_id_token(id_token, jwks, issuer=found.issuer, client_id=found.client_id, nonce=nonce)
    return await run_in_threadpool(_patient, request, claims.get(found.ins_claim))


def verify_id_token(
    token: str, jwks: dict[str, Any], *, issuer: str, client_id: str, nonce: str
) -> dict[str, Any]:
    """The claims of an ID token signed by the issuer's JWKS, for us, alive, with our nonce."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OIDCRefused(
            "Le fournisseur d'identité a renvoyé un jeton d'identité illisible.", "malformed"
        ) from None
    if unverified.get("iss") != issuer:
        raise OIDCRefused(
            "Connexion refusée : ce jeton d'identité a été émis par un autre fournisseur d'identité "
            f"que celui configuré ({unverified.get('iss')!s}).",
            "issuer",
        )
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise OIDCRefused(
            "Connexion refusée : jeton d'identité signé d'une manière non acceptée.", "algorithm"
        )
    try:
        keys = {k.key_id: k for k in PyJWKSet.from_dict(jwks).keys if k.key_id}
    except jwt.PyJWTError:
        raise OIDCRefused("Les clés du fournisseur d'identité sont illisibles.", "jwks", 503) from None
    key = keys.get(str(header.get("kid")))
    if key is None or key.algorithm_name != alg:
        raise OIDCRefused("Connexion refusée : la signature du jeton d'identité est inconnue.", "unknown_kid")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=[alg], audience=client_id, issuer=issuer, leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )  # fmt: skip
    except jwt.ExpiredSignatureError:
        raise OIDCRefused(
            "Connexion refusée : le jeton d'identité a expiré. Recommencez.", "expired"
        ) from None
    except jwt.InvalidAudienceError:
        raise OIDCRefused(
            "Connexion refusée : ce jeton d'identité n'est pas destiné à ce service.", "audience"
        ) from None
    except jwt.PyJWTError as exc:
        raise OIDCRefused(
            "Connexion refusée : le jeton d'identité n'est pas valable.", f"invalid: {exc}"
        ) from None
    if not secrets.compare_digest(str(claims.get("nonce") or "").encode(), nonce.encode()):
        raise OIDCRefused(
            "Connexion refusée : le jeton d'identité ne correspond pas à votre demande (nonce).", "nonce"
        )
    return claims


def _patient(request: Request, ins: Any) -> Identity:
    """The patient account of an INS claim (its BAL is the account's login)."""
    try:
        identity = Identity.patient(str(ins or ""))
    except InvalidIdentity:
        raise OIDCRefused(
            "Le fournisseur d'identité n'a pas transmis d'INS valable.", "identity_claim"
        ) from None
    with Session(common.runtime(request).engine) as s:
        login = s.scalars(
            select(LocalAccount.login).where(
                LocalAccount.ins == identity.id, LocalAccount.kind == IdentityKind.PATIENT.value
            )
        ).first()
    if login is None:
        raise OIDCRefused("Aucun espace patient n'est ouvert pour cette identité.", "no_account", 403)
    return Identity.patient(identity.id, login=login)


def _trace(request: Request, identity: Identity | None, outcome: str, reason: str | None) -> None:
    with transaction(common.runtime(request).writer_engine) as s:
        audit.append(
            s,
            audit.AuditEvent(
                actor=identity.principal if identity is not None else "anonymous",
                action="auth.success" if outcome == "ok" else "auth.failure",
                outcome=outcome,
                source=common.client_ip(request),
                detail={
                    "mechanism": "WEB-OIDC",
                    "listener": "web-patient",
                    **({"reason": reason} if reason else {}),
                },
            ),
        )
