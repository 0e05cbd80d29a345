"""What the two spaces of logged-in pages with a DMP (``/patient/`` and ``/pro/``) do alike: their
login and logout routes, the user a request carries, the error page a refusal answers with, and a
DMP document read under the rules then shown (page, inline PDF preview or download).

Each space keeps its own templates and its own view of a page (:class:`Space` is handed them);
the checks themselves (session, CSRF, origin, logins) are those of :mod:`mssante.web.common`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from dmp.service import DMPError
from mssante.web import common, words
from mssante.web.common import FormRefused
from mssante.web.render import redirect
from mssante.web.security import secure
from mssante.web.sessions import WebUser
from mssante.web.uploads import UploadRefused

Refusal = FormRefused | UploadRefused | DMPError
# A document's reading (``info``, ``content``) for the logged-in user, and its page.
Read = Callable[[Request, WebUser, str], Awaitable[tuple[Any, bytes]]]
Show = Callable[[Request, WebUser, Any, bytes], Response]


class View(Protocol):
    """A space's page for its logged-in user."""

    def __call__(
        self, request: Request, user: WebUser, template: str, status_code: int = 200, **ctx: Any
    ) -> Response: ...


class Space:
    """One space of pages: its name (session cookie, templates' ``space``), its home URL, how it
    renders a page for its user, and its login page (with an error and status after a failure)."""

    def __init__(
        self, name: str, home: str, view: View, login_page: Callable[[Request, str | None, int], Response]
    ) -> None:
        self.name = name
        self.home = home
        self.login = f"{home}connexion"
        self.view = view
        self.login_page = login_page

    def add_login_routes(self, router: APIRouter) -> None:
        """``connexion`` (the form, then a token or password login that opens the session) and
        ``deconnexion`` (the session closed, CSRF-checked)."""

        async def login_form(request: Request) -> Response:
            return self.login_page(request, None, 200)

        async def login(request: Request) -> Response:
            try:
                identity = await common.form_login(request, self.name)
            except FormRefused as exc:
                return self.login_page(request, str(exc), exc.status)
            return await common.start_session(request, redirect(self.home), identity, self.name)

        async def logout(request: Request) -> Response:
            return await common.logout(
                request, self.name, self.login, lambda user, exc: self.refused(request, user, exc)
            )

        router.get("/connexion")(login_form)
        router.post("/connexion")(login)
        router.post("/deconnexion")(logout)

    async def user(self, request: Request) -> WebUser | None:
        return await common.current(request, self.name)

    async def posted(self, request: Request) -> tuple[WebUser, FormData] | Response:
        """The logged-in user and their posted form (size, origin and CSRF checked), or the
        answer instead: the login page to go to, or the error page of a refused form."""
        user = await self.user(request)
        if user is None:
            return redirect(self.login)
        try:
            return user, await common.form(request, user)
        except FormRefused as exc:
            return self.refused(request, user, exc)

    def refused(self, request: Request, user: WebUser, exc: Refusal, back: str | None = None) -> Response:
        """The error page of a refused form, file or DMP action, in French, with its status."""
        if isinstance(exc, DMPError):
            status, error = exc.http_status, words.refusal(str(exc))
        else:
            status, error = exc.status, str(exc)
        return self.view(request, user, "error.html", status, error=error, back=back)

    def add_document_routes(self, router: APIRouter, read: Read, show: Show, back: str | None = None) -> None:
        """``documents/{unique_id}``: a document of the logged-in user, read by ``read`` (under
        the DMP's rules, and traced), on its page (``show``), framed PDF preview included;
        ``…/apercu``: that PDF inline; ``…/telecharger``: the file. A refusal is the error page,
        back to ``back``."""

        async def document(request: Request, unique_id: str) -> Response:
            return await self._document(
                request,
                unique_id,
                read,
                lambda user, info, content: framing_pdf(show(request, user, info, content), info),
                back,
            )

        async def document_preview(request: Request, unique_id: str) -> Response:
            return await self._document(
                request, unique_id, read, lambda _user, info, content: inline_pdf(info, content), back
            )

        async def document_file(request: Request, unique_id: str) -> Response:
            return await self._document(
                request, unique_id, read, lambda _user, info, content: download(info, content), back
            )

        router.get("/documents/{unique_id}")(document)
        router.get("/documents/{unique_id}/apercu")(document_preview)
        router.get("/documents/{unique_id}/telecharger")(document_file)

    async def _document(
        self,
        request: Request,
        unique_id: str,
        read: Read,
        render: Callable[[WebUser, Any, bytes], Response],
        back: str | None,
    ) -> Response:
        user = await self.user(request)
        if user is None:
            return redirect(self.login)
        try:
            info, content = await read(request, user, unique_id)
        except DMPError as exc:
            return self.refused(request, user, exc, back)
        return render(user, info, content)


def framing_pdf(response: Response, info: Any) -> Response:
    """A document's page that shows a PDF: this page alone may frame our own PDF preview."""
    if info.mime_type == "application/pdf":
        response.headers["Content-Security-Policy"] += "; frame-src 'self'"
    return response


def download(info: Any, content: bytes) -> Response:
    """A document only ever leaves as a download, typed by what it is, never rendered."""
    extension = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}.get(info.mime_type, "xml")
    kind = info.mime_type if extension != "xml" else "application/xml"
    response = Response(content, media_type="application/octet-stream" if kind == "application/xml" else kind)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="document-{info.sha256[:12]}.{extension}"'
    )
    secure(response)
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def inline_pdf(info: Any, content: bytes) -> Response:
    """A PDF shown in a frame of our own document page: ``inline``, but under a CSP sandbox
    (unique origin, no scripts, no forms, no plugins it could reach us with), framable only by
    our own pages; anything but a PDF is never shown inline."""
    if info.mime_type != "application/pdf" or not content.startswith(b"%PDF-"):
        return secure(Response("Aperçu indisponible.", status_code=404, media_type="text/plain"))
    response = Response(content, media_type="application/pdf")
    response.headers["Content-Disposition"] = f'inline; filename="document-{info.sha256[:12]}.pdf"'
    secure(response)
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'; frame-ancestors 'self'"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
