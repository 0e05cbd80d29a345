"""Security headers and CSRF checks of every web page.

Headers: a strict Content Security Policy (only our own origin, no inline script, no frames,
forms post only to us), ``nosniff``, no referrer outside our origin (browsers still send us
``Origin``), no caching of pages that hold health data, HSTS. CSRF: every form carries the
session's token (``csrf`` field), compared in constant time;
the login forms, before any session exists, use a double-submit cookie. ``SameSite=Strict``
cookies and an ``Origin`` check are further layers, not the only one.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Strict-Transport-Security": "max-age=31536000",
}
LOGIN_CSRF_COOKIE = "__Host-mssante-login"


def secure(response: Response, *, cache: bool = False) -> Response:
    """Add the security headers (and ``no-store`` unless ``cache``) to a response."""
    for name, value in HEADERS.items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "public, max-age=3600" if cache else "no-store"
    return response


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def same_origin(request: Request) -> bool:
    """A state-changing request must come from our own pages: ``Origin`` (or, failing that,
    ``Referer``) names this host when the browser sends one."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


def set_cookie(response: Response, name: str, value: str, *, max_age: int | None = None) -> None:
    """A ``__Host-`` cookie: Secure, HttpOnly, SameSite=Strict, Path=/, no Domain."""
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")
