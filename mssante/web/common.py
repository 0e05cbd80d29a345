"""What both spaces share: the current user, form checks (CSRF, origin, size), logins.

Logins go through the product's :class:`~mssante.auth.authenticator.Authenticator` — the same
password and TOTP checks, brute-force counters (``mssante.auth.throttle``) and audit records as
SMTP and IMAP; a failure waits the throttle's delay before the page answers.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from mssante.auth import accounts
from mssante.auth.authenticator import Authenticator, AuthFailure, AuthSuccess, FailureKind
from mssante.auth.identity import Identity, IdentityKind
from mssante.tls import TLSInfo
from mssante.web import second_factor, security, sessions
from mssante.web.render import page, redirect
from mssante.web.uploads import Upload, read_upload

SPACE_KINDS = {
    "patient": (IdentityKind.PATIENT,),
    "pro": (IdentityKind.PROFESSIONAL, IdentityKind.STAFF),
    "admin": (IdentityKind.STAFF,),
}
# Spaces whose logins always need the second factor.
TWO_FACTOR_SPACES = ("patient", "admin")
FORM_OVERHEAD = 64 * 1024


class FormRefused(Exception):
    """A form that is not acted upon, with the French reason and the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def runtime(request: Request) -> Any:
    return request.app.state.runtime


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "0.0.0.0"


def source(request: Request) -> str:
    return f"web:{client_ip(request)}"


async def current(request: Request, space: str) -> sessions.WebUser | None:
    rt = runtime(request)
    return await run_in_threadpool(
        sessions.load_session,
        rt.engine,
        rt.writer_engine,
        request.cookies.get(sessions.COOKIES[space]),
        space,
        rt.settings.web.session_minutes,
    )


async def form(request: Request, user: sessions.WebUser | None, *, uploads: bool = False) -> FormData:
    """The posted form, once its size, origin and CSRF token are checked."""
    limit = runtime(request).settings.web.max_upload_bytes if uploads else 0
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise FormRefused("La taille du formulaire doit être annoncée.", 411)
    if int(length) > limit + FORM_OVERHEAD:
        raise FormRefused(
            f"Le fichier dépasse la taille autorisée ({limit // (1024 * 1024)} Mo au plus)."
            if uploads
            else "Formulaire trop volumineux.",
            413,
        )
    if not security.same_origin(request):
        raise FormRefused("Requête refusée : elle ne vient pas de ce site.", 403)
    data = await request.form(max_files=1 if uploads else 0, max_fields=40)
    expected = user.csrf if user is not None else request.cookies.get(security.LOGIN_CSRF_COOKIE)
    if not security.same(expected, str(data.get("csrf") or "")):
        raise FormRefused(
            "Votre session a expiré ou le formulaire n'est plus valable : rechargez la page.", 403
        )
    return data


async def form_file(
    request: Request, user: sessions.WebUser, kinds: tuple[str, ...]
) -> tuple[FormData, Upload]:
    """A posted form and its one file (field ``file``, of one of ``kinds``), both checked;
    :class:`FormRefused` or :class:`~mssante.web.uploads.UploadRefused` otherwise."""
    data = await form(request, user, uploads=True)
    upload = await read_upload(data.get("file"), kinds, runtime(request).settings.web.max_upload_bytes)
    return data, upload


def text(data: FormData, name: str, limit: int = 500) -> str:
    value = data.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


def login_page(request: Request, template: str, status_code: int = 200, **ctx: Any) -> Response:
    """A page with a form posted before any session (a login, the demo IdP's consent): its CSRF
    token is also set in a cookie of its own, which :func:`form` compares when no user is known."""
    token = security.new_token()
    response = page(request, template, status_code, csrf=token, **ctx)
    security.set_cookie(response, security.LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


def _authenticator(request: Request) -> Authenticator:
    found = runtime(request).authenticator
    if not isinstance(found, Authenticator):
        raise FormRefused("L'authentification n'est pas configurée sur ce serveur.", 503)
    return found


def _failure_message(failure: AuthFailure) -> str:
    if failure.kind is FailureKind.LOCKED:
        return "Trop de tentatives échouées : votre accès est suspendu un moment. Réessayez plus tard."
    if failure.kind is FailureKind.TEMPORARY:
        return "Le service d'authentification est momentanément indisponible. Réessayez plus tard."
    return "Identifiant, mot de passe ou code incorrect."


def _second_factor(request: Request, login: str) -> str:
    """How this login's second factor is checked: ``sasl`` (the account's own TOTP, checked by
    the authenticator), ``web`` (the web's TOTP, :mod:`mssante.web.second_factor`), or ``none``."""
    from sqlalchemy.orm import Session

    with Session(runtime(request).engine) as s:
        account = accounts.get(s, login)
        if account is not None and account.totp_secret:
            return "sasl"
        return "web" if account is None or second_factor.enrolled(s, login) else "none"


async def form_login(request: Request, space: str) -> Identity:
    """The identity a login form of the patient space or of the DMP web names: a pasted access
    token of the space's identity provider, or login, password and one-time code."""
    data = await form(request, None)
    token = text(data, "token", 8192)
    if token:
        return await token_login(request, space, token)
    return await password_login(
        request,
        space,
        text(data, "login", 320),
        text(data, "password", 200),
        text(data, "code", 12).replace(" ", ""),
    )


async def password_login(request: Request, space: str, login: str, password: str, code: str) -> Identity:
    """The identity of a login, password (+ TOTP code); :class:`FormRefused` otherwise. The
    patient space always needs the second factor."""
    if not login or not password:
        raise FormRefused("Saisissez votre identifiant et votre mot de passe.")
    rt = runtime(request)
    factor = await run_in_threadpool(_second_factor, request, login)
    if space in TWO_FACTOR_SPACES and factor == "none":
        raise FormRefused(
            "La connexion à cet espace demande un second facteur (code à usage unique), "
            "qui n'est pas activé pour ce compte.",
            403,
        )
    if space in TWO_FACTOR_SPACES and factor == "sasl" and not code:
        raise FormRefused("Saisissez le code à usage unique de votre application d'authentification.", 401)
    if factor == "web" and (space in TWO_FACTOR_SPACES or code):
        penalty = await run_in_threadpool(
            second_factor.check, rt.engine, rt.writer_engine, rt.keyring, rt.settings.auth.bruteforce,
            login, code, client_ip(request), time.time(),
        )  # fmt: skip
        if penalty is not None:
            await asyncio.sleep(penalty.delay)
            if penalty.locked_until is not None:
                raise FormRefused(_failure_message(AuthFailure(FailureKind.LOCKED, "locked")), 429)
            raise FormRefused("Identifiant, mot de passe ou code incorrect.", 401)
    secret = f"{password}:{code}" if factor == "sasl" and code else password
    initial = base64.b64encode(f"\0{login}\0{secret}".encode()).decode("ascii")
    exchange = _authenticator(request).begin(
        "PLAIN", tls=TLSInfo(active=True), client_ip=client_ip(request), listener=f"web-{space}"
    )
    result = await exchange.start(initial)
    if isinstance(result, AuthFailure):
        await asyncio.sleep(result.delay)
        raise FormRefused(_failure_message(result), 401)
    if not isinstance(result, AuthSuccess):
        raise FormRefused("Identifiant, mot de passe ou code incorrect.", 401)
    if result.identity.kind not in SPACE_KINDS[space]:
        raise FormRefused(
            "Ce compte n'est pas un compte patient."
            if space == "patient"
            else "Ce compte n'est pas celui d'un professionnel.",
            403,
        )
    return result.identity


async def token_login(request: Request, space: str, token: str) -> Identity:
    """The identity of an OIDC access token (Pro Santé Connect, or the demo identity provider)."""
    if not token:
        raise FormRefused("Collez le jeton d'accès fourni par votre fournisseur d'identité.")
    result = await run_in_threadpool(
        _authenticator(request).authenticate_bearer,
        token,
        client_ip=client_ip(request),
        listener=f"web-{space}",
    )
    if isinstance(result, AuthFailure):
        await asyncio.sleep(result.delay)
        raise FormRefused(
            _failure_message(result)
            if result.kind is not FailureKind.REFUSED
            else "Ce jeton n'est pas valable (expiré, ou émis par un fournisseur non reconnu).",
            401,
        )
    assert isinstance(result, AuthSuccess)
    if result.identity.kind not in SPACE_KINDS[space]:
        raise FormRefused(
            "Ce jeton n'est pas celui d'un patient." if space == "patient"
            else "Ce jeton n'est pas celui d'un professionnel.",
            403,
        )  # fmt: skip
    return result.identity


async def start_session(request: Request, response: Response, identity: Identity, space: str) -> Response:
    rt = runtime(request)
    token = await run_in_threadpool(
        sessions.open_session, rt.writer_engine, identity, space, rt.settings.web.session_minutes
    )
    security.set_cookie(response, sessions.COOKIES[space], token)
    response.delete_cookie(
        security.LOGIN_CSRF_COOKIE, path="/", secure=True, httponly=True, samesite="strict"
    )
    return response


async def logout(
    request: Request,
    space: str,
    login_url: str,
    refused: Callable[[sessions.WebUser, FormRefused], Response],
) -> Response:
    """The logout form of a space: its session closed (CSRF-checked), back to its login page."""
    user = await current(request, space)
    if user is None:
        return redirect(login_url)
    try:
        await form(request, user)
    except FormRefused as exc:
        return refused(user, exc)
    return await end_session(request, redirect(login_url, "deconnecte"), user, space)


async def end_session(request: Request, response: Response, user: sessions.WebUser, space: str) -> Response:
    await run_in_threadpool(sessions.close_session, runtime(request).writer_engine, user.token_hash)
    response.delete_cookie(sessions.COOKIES[space], path="/", secure=True, httponly=True, samesite="strict")
    return response
