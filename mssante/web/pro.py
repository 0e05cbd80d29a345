"""DMP web for professionals (``/pro/``): search a patient by INS or traits, the documents the
matrix allows, open one, break-glass with a mandatory reason, deposit a document (PDF or CDA,
type code from JDV_J07), mask, unmask and delete one's own. Decisions: ``dmp.rules``.

Break-glass holds for the rest of the web session on that patient (kept in the session row):
every later list or read is made, and traced, as break-glass with the same reason, which the
patient reads in their history.
"""

from __future__ import annotations

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
from mssante.web.patient import PROFILE_LABELS
from mssante.web.render import page, redirect
from mssante.web.sessions import WebUser
from mssante.web.space import Space
from mssante.web.uploads import UploadRefused

router = APIRouter(prefix="/pro", include_in_schema=False)
SPACE = "pro"


def _dmp(request: Request) -> DMPService:
    return DMPService.from_runtime(common.runtime(request))


def _emergency(user: WebUser, ins: str) -> str | None:
    return user.emergency.get(ins)


def _view(request: Request, user: WebUser, template: str, status_code: int = 200, **ctx: Any) -> Response:
    name = user.identity.id
    if user.identity.kind.value == "professional":
        name = words.professional_name(_dmp(request).annuaire, user.identity.id)
    return page(request, template, status_code, user=user, csrf=user.csrf, space=SPACE, who=name, **ctx)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    return common.login_page(request, "pro/login.html", status_code, error=error, space=SPACE)


PAGES = Space(SPACE, "/pro/", _view, _login_page)
PAGES.add_login_routes(router)


@router.get("/")
async def search(
    request: Request, ins: str = "", nom: str = "", prenom: str = "", naissance: str = ""
) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
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
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
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
            return PAGES.refused(request, user, exc, "/pro/")
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
    posted = await PAGES.posted(request)
    if isinstance(posted, Response):
        return posted
    user, data = posted
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
        return PAGES.refused(request, user, exc, f"/pro/patients/{ins}")
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


def _document_page(request: Request, user: WebUser, info: Any, content: bytes) -> Response:
    service = _dmp(request)
    return _view(
        request,
        user,
        "pro/document.html",
        doc=info,
        cda=render_cda(content) if info.format == "CDA_R2" else None,
        author=words.author_name(service.annuaire, info.author_idnat),
        types=service.codes.type_codes,
        me=user.identity.id,
        inline=info.mime_type == "application/pdf",
    )


PAGES.add_document_routes(router, _read, _document_page, back="/pro/")


@router.post("/documents/{unique_id}/{change}")
async def manage(request: Request, unique_id: str, change: str) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
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
    except (FormRefused, DMPError) as exc:
        return PAGES.refused(request, user, exc, back)
    return redirect(
        back, {"masquer": "masque_ps", "demasquer": "demasque_ps", "supprimer": "supprime"}[change]
    )


@router.post("/patients/{ins}/documents")
async def deposit(request: Request, ins: str) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    back = f"/pro/patients/{ins}"
    try:
        data, upload = await common.form_file(request, user, ("pdf", "cda"))
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
    except (FormRefused, UploadRefused, DMPError) as exc:
        return PAGES.refused(request, user, exc, back)
    return redirect(back, "depose")
