"""DMP web for professionals (``/pro/``): search a patient by INS or traits, the documents the
matrix allows, open one, break-glass with a mandatory reason, deposit a document (PDF or CDA,
type code from JDV_J07), mask, unmask and delete one's own. Decisions: ``dmp.rules``.

Break-glass holds for the rest of the web session on that patient (kept in the session row):
every later list or read is made, and traced, as break-glass with the same reason, which the
patient reads in their history.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from dmp import rules
from dmp.service import DMPError, DMPService, DocumentMeta, PatientInfo
from mssante.auth.identity import InvalidIdentity, check_ins
from mssante.web import common, sessions, words
from mssante.web.cda import patient_ins as cda_patient
from mssante.web.cda import render as render_cda
from mssante.web.common import FormRefused
from mssante.web.patient import PROFILE_LABELS, download, inline_pdf
from mssante.web.render import page, redirect
from mssante.web.security import new_token
from mssante.web.sessions import WebUser
from mssante.web.uploads import UploadRefused, read_upload

router = APIRouter(prefix="/pro", include_in_schema=False)
SPACE = "pro"
LOGIN = "/pro/connexion"


def _dmp(request: Request) -> DMPService:
    return DMPService.from_runtime(common.runtime(request))


def _emergency(user: WebUser, ins: str) -> str | None:
    return user.emergency.get(ins)


async def _user(request: Request) -> WebUser | None:
    return await common.current(request, SPACE)


def _view(request: Request, user: WebUser, template: str, status_code: int = 200, **ctx: Any) -> Response:
    name = user.identity.id
    if user.identity.kind.value == "professional":
        name = words.professional_name(_dmp(request).annuaire, user.identity.id)
    return page(request, template, status_code, user=user, csrf=user.csrf, space=SPACE, who=name, **ctx)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    token = new_token()
    response = page(request, "pro/login.html", status_code, csrf=token, error=error, space=SPACE)
    return common.login_csrf(response, token)


@router.get("/connexion")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/connexion")
async def login(request: Request) -> Response:
    try:
        identity = await common.form_login(request, SPACE)
    except FormRefused as exc:
        return _login_page(request, str(exc), exc.status)
    return await common.start_session(request, redirect("/pro/"), identity, SPACE)


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    return await common.logout(
        request,
        SPACE,
        LOGIN,
        lambda user, exc: _view(request, user, "error.html", exc.status, error=str(exc)),
    )


@router.get("/")
async def search(
    request: Request, ins: str = "", nom: str = "", prenom: str = "", naissance: str = ""
) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    service = _dmp(request)
    found: list[PatientInfo] = []
    error = None
    searched = bool(ins or nom)
    try:
        if ins:
            found = [
                await run_in_threadpool(
                    lambda: service.search_patient(
                        user.identity, check_ins(ins), source=common.source(request)
                    )
                )
            ]
        elif nom:
            born = date.fromisoformat(naissance) if naissance else None
            found = await run_in_threadpool(
                lambda: service.find_patients(
                    user.identity,
                    birth_name=nom,
                    given_name=prenom,
                    birth_date=born,
                    source=common.source(request),
                )
            )
    except InvalidIdentity:
        error = "Cet INS n'est pas valide (15 caractères, clé comprise)."
    except ValueError:
        error = "La date de naissance n'est pas valide."
    except DMPError as exc:
        error = words.refusal(str(exc))
    return _view(
        request,
        user,
        "pro/search.html",
        found=found,
        error=error,
        searched=searched,
        q={"ins": ins, "nom": nom, "prenom": prenom, "naissance": naissance},
    )


@router.get("/patients/{ins}")
async def patient(request: Request, ins: str, type: str = "") -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    service = _dmp(request)
    reason = _emergency(user, ins)
    error = None
    docs = []
    profile: dict[str, str] = {}
    try:
        info = await run_in_threadpool(service.patient, ins)
        docs = await run_in_threadpool(
            lambda: service.list_documents(
                user.identity,
                ins,
                type_code=type or None,
                break_glass=reason is not None,
                reason=reason,
                source=common.source(request),
            )
        )
        if reason is None:  # the profile entries the matrix lets this profession read
            profile = await run_in_threadpool(
                lambda: service.profile(user.identity, ins, source=common.source(request))
            )
    except DMPError as exc:
        if exc.http_status == 404:
            return _view(request, user, "error.html", 404, error=words.refusal(str(exc)), back="/pro/")
        error = words.refusal(str(exc))
    blocked = user.identity.id in info.blocked
    authors = {d.author_idnat: words.author_name(service.annuaire, d.author_idnat) for d in docs}
    return _view(
        request,
        user,
        "pro/patient.html",
        info=info,
        docs=docs,
        error=error,
        emergency=reason,
        offer_break_glass=error is not None and not blocked and info.emergency_access and not info.opposition,
        authors=authors,
        profile=profile,
        profile_labels=PROFILE_LABELS,
        types=service.codes.type_codes,
        chosen=type,
        me=user.identity.id,
        deposit_types=sorted(service.codes.type_codes.values(), key=lambda t: t.libelle),
    )


@router.post("/patients/{ins}/bris-de-glace")
async def break_glass(request: Request, ins: str) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    try:
        data = await common.form(request, user)
    except FormRefused as exc:
        return _view(request, user, "error.html", exc.status, error=str(exc))
    reason = common.text(data, "reason", 500)
    if len(reason) < 5:
        return _view(
            request,
            user,
            "error.html",
            400,
            back=f"/pro/patients/{ins}",
            error="L'accès d'urgence demande une raison (quelques mots), qui sera montrée au patient.",
        )
    service = _dmp(request)
    try:
        await run_in_threadpool(
            lambda: service.list_documents(
                user.identity, ins, break_glass=True, reason=reason, source=common.source(request)
            )
        )
    except DMPError as exc:
        return _view(
            request,
            user,
            "error.html",
            exc.http_status,
            error=words.refusal(str(exc)),
            back=f"/pro/patients/{ins}",
        )
    await run_in_threadpool(
        sessions.break_glass, common.runtime(request).writer_engine, user.token_hash, ins, reason
    )
    return redirect(f"/pro/patients/{ins}", "bris")


async def _read(request: Request, user: WebUser, unique_id: str) -> Any:
    service = _dmp(request)
    ins = await run_in_threadpool(service.patient_of, unique_id)
    reason = _emergency(user, ins) if ins else None
    return await run_in_threadpool(
        lambda: service.read(
            user.identity,
            unique_id,
            break_glass=reason is not None,
            reason=reason,
            source=common.source(request),
        )
    )


@router.get("/documents/{unique_id}")
async def document(request: Request, unique_id: str) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    service = _dmp(request)
    try:
        info, content = await _read(request, user, unique_id)
    except DMPError as exc:
        return _view(
            request, user, "error.html", exc.http_status, error=words.refusal(str(exc)), back="/pro/"
        )
    rendered = render_cda(content) if info.format == "CDA_R2" else None
    author = words.author_name(service.annuaire, info.author_idnat)
    response = _view(
        request,
        user,
        "pro/document.html",
        doc=info,
        cda=rendered,
        author=author,
        types=service.codes.type_codes,
        me=user.identity.id,
        inline=info.mime_type == "application/pdf",
    )
    if info.mime_type == "application/pdf":  # this page alone may frame our own PDF preview
        response.headers["Content-Security-Policy"] += "; frame-src 'self'"
    return response


async def _document(request: Request, unique_id: str, render: Callable[[Any, bytes], Response]) -> Response:
    """One document read under the matrix (and traced), then shown by ``render``: inline for
    the PDF preview, as an attachment for the download."""
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    try:
        info, content = await _read(request, user, unique_id)
    except DMPError as exc:
        return _view(
            request, user, "error.html", exc.http_status, error=words.refusal(str(exc)), back="/pro/"
        )
    return render(info, content)


@router.get("/documents/{unique_id}/apercu")
async def document_preview(request: Request, unique_id: str) -> Response:
    return await _document(request, unique_id, inline_pdf)


@router.get("/documents/{unique_id}/telecharger")
async def document_file(request: Request, unique_id: str) -> Response:
    return await _document(request, unique_id, download)


@router.post("/documents/{unique_id}/{change}")
async def manage(request: Request, unique_id: str, change: str) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    service = _dmp(request)
    ins = await run_in_threadpool(service.patient_of, unique_id)
    back = f"/pro/patients/{ins}" if ins else "/pro/"
    try:
        await common.form(request, user)
        src = common.source(request)
        if change == "masquer":
            await run_in_threadpool(
                lambda: service.set_visibility(
                    user.identity, unique_id, [rules.MASQUE_PS], on=True, source=src
                )
            )
        elif change == "demasquer":
            await run_in_threadpool(
                lambda: service.set_visibility(
                    user.identity, unique_id, [rules.MASQUE_PS], on=False, source=src
                )
            )
        elif change == "supprimer":
            await run_in_threadpool(lambda: service.delete(user.identity, unique_id, source=src))
        else:
            return _view(request, user, "error.html", 404, error="Action inconnue.")
    except FormRefused as exc:
        return _view(request, user, "error.html", exc.status, error=str(exc), back=back)
    except DMPError as exc:
        return _view(request, user, "error.html", exc.http_status, error=words.refusal(str(exc)), back=back)
    return redirect(
        back, {"masquer": "masque_ps", "demasquer": "demasque_ps", "supprimer": "supprime"}[change]
    )


@router.post("/patients/{ins}/documents")
async def deposit(request: Request, ins: str) -> Response:
    user = await _user(request)
    if user is None:
        return redirect(LOGIN)
    service = _dmp(request)
    back = f"/pro/patients/{ins}"
    try:
        data = await common.form(request, user, uploads=True)
        upload = await read_upload(
            data.get("file"), ("pdf", "cda"), common.runtime(request).settings.web.max_upload_bytes
        )
        type_code = common.text(data, "type_code", 32)
        if type_code not in service.codes.type_codes:
            raise UploadRefused("Choisissez le type du document dans la liste (JDV_J07).")
        named = cda_patient(upload.content) if upload.kind == "cda" else None
        if named is not None and named != ins:
            raise UploadRefused(f"Ce document CDA concerne un autre patient (INS {named}) : dépôt refusé.")
        title = common.text(data, "title", 200) or service.codes.type_codes[type_code].libelle
        meta = DocumentMeta(
            type_code, title, format="CDA_R2" if upload.kind == "cda" else "PDF", mime_type=upload.mime_type
        )
        await run_in_threadpool(
            lambda: service.feed(user.identity, ins, upload.content, meta, source=common.source(request))
        )
    except FormRefused as exc:
        return _view(request, user, "error.html", exc.status, error=str(exc), back=back)
    except UploadRefused as exc:
        return _view(request, user, "error.html", exc.status, error=str(exc), back=back)
    except DMPError as exc:
        return _view(request, user, "error.html", exc.http_status, error=words.refusal(str(exc)), back=back)
    return redirect(back, "depose")
