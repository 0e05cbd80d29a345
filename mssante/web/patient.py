"""Espace patient (``/patient/``): the patient's messages (their BAL), DMP documents, who
accessed the record, professionals, profile and notification settings.

Every action is a call of the service that decides (``dmp.service`` → ``dmp.rules``; sending →
the SMTP policy through :mod:`mssante.web.submit`); this module renders the answers in French.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from annuaire.lookup import Annuaire
from dmp.service import PROFILE_KINDS, DMPError, DMPService, DocumentMeta
from mssante.patients.conversations import ConversationBook, message_id
from mssante.web import common, sessions, words
from mssante.web.cda import render as render_cda
from mssante.web.common import FormRefused
from mssante.web.mailbox import FOLDERS, PatientMailbox
from mssante.web.render import PARIS, page, redirect
from mssante.web.sessions import WebUser
from mssante.web.space import Space
from mssante.web.submit import WebSubmitter
from mssante.web.uploads import UploadRefused

router = APIRouter(prefix="/patient", include_in_schema=False)
SPACE = "patient"
PROFILE_LABELS = {
    "contact_urgence": "Contact d'urgence",
    "personne_confiance": "Personne de confiance",
    "directives_anticipees": "Directives anticipées",
}
OWN_TYPES = {
    "DOCPAT01": "Directives anticipées",
    "DOCPAT02": "Désignation de la personne de confiance",
    "DOCPAT03": "Autre document personnel",
}


def _dmp(request: Request) -> DMPService:
    return DMPService.from_runtime(common.runtime(request))


def _annuaire(request: Request) -> Annuaire:
    return _dmp(request).annuaire


def _bal(request: Request, user: WebUser) -> str:
    return f"{user.identity.id}@{common.runtime(request).settings.server.patient_domain}".lower()


def _mailbox(request: Request, user: WebUser) -> PatientMailbox:
    return PatientMailbox(common.runtime(request).store, _bal(request, user))


def _view(request: Request, user: WebUser, template: str, status_code: int = 200, **ctx: Any) -> Response:
    return page(request, template, status_code, user=user, csrf=user.csrf, space=SPACE, **ctx)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    settings = common.runtime(request).settings
    label = settings.web.patient_oidc_label if settings.web.patient_oidc_issuer else None
    if label is None and settings.auth.demo_idp:
        label = "FranceConnect (démo)"
    return common.login_page(
        request, "patient/login.html", status_code, error=error, space=SPACE, oidc_label=label
    )


PAGES = Space(SPACE, "/patient/", _view, _login_page)
PAGES.add_login_routes(router)


# -- home -----------------------------------------------------------------------------------------
@router.get("/")
async def home(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    mails = await _mailbox(request, user).list("recus")
    service = _dmp(request)
    info = await run_in_threadpool(service.patient, user.identity.id)
    represented = await run_in_threadpool(service.represented, user.identity.id)
    return _view(
        request,
        user,
        "patient/home.html",
        unread=sum(1 for m in mails if not m.seen),
        name=f"{info.traits.first_given_name} {info.traits.birth_name}",
        represented=represented,
    )


@router.post("/dossier")
async def act_for(request: Request) -> Response:
    """A legal representative chooses whose record the DMP pages show (their own, or a minor's
    they represent); the DMP rules check the representation at every action."""
    posted = await PAGES.posted(request)
    if isinstance(posted, Response):
        return posted
    user, data = posted
    wanted = common.text(data, "ins", 15)
    service = _dmp(request)
    allowed = {p.ins for p in await run_in_threadpool(service.represented, user.identity.id)}
    if wanted != user.identity.id and wanted not in allowed:
        return _view(
            request, user, "error.html", 403, error="Vous n'êtes pas représentant légal de ce patient."
        )
    choice = None if wanted == user.identity.id else wanted
    await run_in_threadpool(sessions.act_for, common.runtime(request).writer_engine, user.token_hash, choice)
    return redirect("/patient/documents" if choice else "/patient/", "dossier")


# -- messages -------------------------------------------------------------------------------------
@router.get("/messages")
async def messages(request: Request, dossier: str = "recus") -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    folder = dossier if dossier in FOLDERS else "recus"
    mails = await _mailbox(request, user).list(folder)
    return _view(request, user, "patient/messages.html", mails=mails, folder=folder)


@router.get("/messages/{folder}/{uid}")
async def message(request: Request, folder: str, uid: int) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    mail = None
    if folder in FOLDERS:
        mail = await _mailbox(request, user).open(
            folder, uid, user.identity.principal, common.source(request)
        )
    if mail is None:
        return _view(request, user, "error.html", 404, error="Ce message n'existe pas.")
    return _view(request, user, "patient/message.html", mail=mail, state=await _state(request, user, mail))


async def _state(request: Request, user: WebUser, mail: Any) -> str:
    """Whether the patient may answer: ``open``, ``closed`` (the professional closed the
    conversation with X-MSS-MES: FIN) or ``none`` (a message outside any conversation)."""
    wanted = message_id(mail.message_id)
    if mail.folder != "recus" or wanted is None:
        return "none"
    book = ConversationBook(common.runtime(request).engine)
    found = await run_in_threadpool(book.received, _bal(request, user), [wanted])
    if not found:
        return "none"
    return "closed" if any(r.closed for r in found) else "open"


def _message(user: WebUser, bal: str, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = bal
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = datetime.now(PARIS)
    msg["Message-ID"] = make_msgid(domain=bal.partition("@")[2])
    msg.set_content(body or " ")
    return msg


async def _send(request: Request, user: WebUser, msg: EmailMessage) -> str | None:
    """Submit through the SMTP policy; the server's refusal (French part) or None."""
    sent = await run_in_threadpool(WebSubmitter.of(common.runtime(request)).send, user.identity, msg)
    if not sent.ok:
        reason = sent.reply.split(" ", 2)[-1] if sent.reply[:1].isdigit() else sent.reply
        return f"Envoi refusé : {reason.split(' / ')[0]}"
    await _mailbox(request, user).keep_sent(bytes(msg), user.identity.principal, common.source(request))
    return None


@router.post("/messages/recus/{uid}/reponse")
async def reply(request: Request, uid: int) -> Response:
    posted = await PAGES.posted(request)
    if isinstance(posted, Response):
        return posted
    user, data = posted
    mailbox = _mailbox(request, user)
    original = await mailbox.open("recus", uid, user.identity.principal, common.source(request))
    if original is None:
        return _view(request, user, "error.html", 404, error="Ce message n'existe pas.")
    body = common.text(data, "body", 20_000)
    if not body:
        return _view(
            request, user, "patient/message.html", 400, mail=original, error="Écrivez votre réponse."
        )
    subject = original.subject if original.subject.lower().startswith("re:") else f"Re: {original.subject}"
    msg = _message(user, _bal(request, user), original.sender_address, subject, body)
    if original.message_id:
        msg["In-Reply-To"] = original.message_id
        msg["References"] = f"{original.references} {original.message_id}".strip()
    problem = await _send(request, user, msg)
    if problem:
        state = await _state(request, user, original)
        return _view(request, user, "patient/message.html", 400, mail=original, state=state, error=problem)
    return redirect(f"/patient/messages/recus/{uid}", "reponse")


def _pharmacies(request: Request) -> list[tuple[str, str]]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from annuaire.models import Bal

    rt = common.runtime(request)
    annuaire = _annuaire(request)
    with Session(rt.engine) as s:
        # the pharmacies this operator hosts (the national annuaire holds every operator's BALs)
        hosted = [d.lower() for d in rt.settings.server.domains]
        addresses = list(s.scalars(select(Bal.address).where(Bal.type == "ORG", Bal.domain.in_(hosted))))
    found = []
    for address in addresses:
        bal = annuaire.bal(address)
        if bal is not None and bal.active and bal.is_pharmacy_org:
            structure = annuaire.structure(bal.structure_identifier) if bal.structure_identifier else None
            found.append((address, (structure.raison_sociale if structure else None) or address))
    return sorted(found, key=lambda p: p[1])


@router.get("/ordonnance")
async def prescription_form(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    pharmacies = await run_in_threadpool(_pharmacies, request)
    return _view(request, user, "patient/prescription.html", pharmacies=pharmacies)


@router.post("/ordonnance")
async def prescription(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    pharmacies = await run_in_threadpool(_pharmacies, request)
    try:
        data, upload = await common.form_file(request, user, ("pdf", "jpeg", "png"))
    except (FormRefused, UploadRefused) as exc:
        status = exc.status
        return _view(
            request, user, "patient/prescription.html", status, pharmacies=pharmacies, error=str(exc)
        )
    to = common.text(data, "pharmacy", 320)
    if to not in {p[0] for p in pharmacies}:
        return _view(
            request,
            user,
            "patient/prescription.html",
            400,
            pharmacies=pharmacies,
            error="Choisissez une pharmacie de la liste.",
        )
    note = common.text(data, "body", 5000) or "Veuillez trouver mon ordonnance en pièce jointe."
    msg = _message(user, _bal(request, user), to, "Ordonnance", note)
    main, _, sub = upload.mime_type.partition("/")
    msg.add_attachment(upload.content, maintype=main, subtype=sub, filename=upload.filename)
    problem = await _send(request, user, msg)
    if problem:
        return _view(request, user, "patient/prescription.html", 400, pharmacies=pharmacies, error=problem)
    return redirect("/patient/messages?dossier=envoyes", "ordonnance")


# -- documents ------------------------------------------------------------------------------------
def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@router.get("/documents")
async def documents(request: Request, type: str = "", depuis: str = "", jusqu: str = "") -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    since, until = _day(depuis), _day(jusqu)
    try:
        docs = await run_in_threadpool(
            lambda: service.list_documents(
                user.identity,
                user.ins,
                type_code=type or None,
                since=datetime.combine(since, time(0), PARIS) if since else None,
                until=datetime.combine(until + timedelta(days=1), time(0), PARIS) if until else None,
                source=common.source(request),
            )
        )
    except DMPError as exc:
        return PAGES.refused(request, user, exc)
    annuaire = service.annuaire
    authors = {d.author_idnat: _author(annuaire, d.author_idnat, user) for d in docs}
    return _view(
        request,
        user,
        "patient/documents.html",
        docs=docs,
        authors=authors,
        types=service.codes.type_codes,
        spaces=service.codes.spaces,
        own_types=OWN_TYPES,
        chosen=type,
        depuis=depuis,
        jusqu=jusqu,
    )


def _author(annuaire: Annuaire, idnat: str, user: WebUser) -> str:
    if idnat == user.identity.id:
        return "Vous"
    return words.author_name(annuaire, idnat)


async def _read(request: Request, user: WebUser, unique_id: str) -> Any:
    service = _dmp(request)
    return await run_in_threadpool(
        lambda: service.read(user.identity, unique_id, source=common.source(request))
    )


def _document_page(request: Request, user: WebUser, info: Any, content: bytes) -> Response:
    service = _dmp(request)
    return _view(
        request,
        user,
        "patient/document.html",
        doc=info,
        cda=render_cda(content) if info.format == "CDA_R2" else None,
        author=_author(service.annuaire, info.author_idnat, user),
        types=service.codes.type_codes,
        inline=info.mime_type == "application/pdf",
    )


PAGES.add_document_routes(router, _read, _document_page)


async def _act(request: Request, user: WebUser, call: Any, back: str, ok: str) -> Response:
    """A form that calls the DMP service: CSRF first, then the call, then back with a notice."""
    try:
        data = await common.form(request, user)
        await run_in_threadpool(call, data)
    except (FormRefused, DMPError) as exc:
        return PAGES.refused(request, user, exc, back)
    return redirect(back, ok)


@router.post("/documents/{unique_id}/{change}")
async def hide(request: Request, unique_id: str, change: str) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    if change == "supprimer":
        return await _act(
            request,
            user,
            lambda _d: service.delete_own(user.identity, user.ins, unique_id, source=common.source(request)),
            "/patient/documents",
            "supprime",
        )
    if change not in ("masquer", "afficher"):
        return _view(request, user, "error.html", 404, error="Action inconnue.")
    hidden = change == "masquer"
    return await _act(
        request,
        user,
        lambda _d: service.hide(
            user.identity, user.ins, unique_id, hidden=hidden, source=common.source(request)
        ),
        "/patient/documents",
        "masque" if hidden else "affiche",
    )


@router.post("/documents")
async def deposit(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    try:
        data, upload = await common.form_file(request, user, ("pdf", "jpeg", "png"))
        type_code = common.text(data, "type_code", 32)
        if type_code not in OWN_TYPES:
            raise UploadRefused("Choisissez le type de votre document.")
        title = common.text(data, "title", 200) or OWN_TYPES[type_code]
        meta = DocumentMeta(
            type_code, title, format="PDF" if upload.kind == "pdf" else "OTHER", mime_type=upload.mime_type
        )
        await run_in_threadpool(
            lambda: service.deposit_own(
                user.identity, user.ins, upload.content, meta, source=common.source(request)
            )
        )
    except (FormRefused, UploadRefused, DMPError) as exc:
        return PAGES.refused(request, user, exc, "/patient/documents")
    return redirect("/patient/documents", "depose")


# -- trace ----------------------------------------------------------------------------------------
@router.get("/acces")
async def accesses(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    try:
        trace = await run_in_threadpool(service.history, user.identity, user.ins)
    except DMPError as exc:
        return PAGES.refused(request, user, exc)
    titles = await run_in_threadpool(service.document_titles, user.ins)
    rows = [_trace_row(service.annuaire, t, titles) for t in reversed(trace)]
    rows = [r for r in rows if r is not None]
    return _view(request, user, "patient/trace.html", rows=rows[:500])


def _trace_row(annuaire: Annuaire, t: Any, titles: dict[str, str]) -> dict[str, Any] | None:
    you = t.role in ("patient", "legal_representative")
    if t.action == "patient.update" or (you and t.action in words.OWN_READS):
        return None
    about = titles.get(t.document) if t.document else None
    if t.action in words.NAMED_PROFESSIONAL and t.reason and t.reason[:1].isdigit():
        about = words.professional_name(annuaire, t.reason)
    return {
        "at": t.at,
        "who": words.who(annuaire, t.actor, t.role),
        "what": words.what(t.action, t.outcome, you=you and t.role == "patient", about=about),
        "why": t.reason if t.action == "break_glass" else "",
        "refused": t.outcome != "ok",
        "emergency": t.action == "break_glass",
    }


# -- professionals --------------------------------------------------------------------------------
@router.get("/professionnels")
async def professionals(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    info = await run_in_threadpool(service.patient, user.ins)
    annuaire = service.annuaire
    name = {i: words.professional_name(annuaire, i) for i in (*info.care_team, *info.blocked)}
    if info.medecin_traitant:
        name[info.medecin_traitant] = words.professional_name(annuaire, info.medecin_traitant)
    return _view(request, user, "patient/professionals.html", info=info, name=name)


@router.post("/professionnels/{change}")
async def professionals_change(request: Request, change: str) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service, ins, src = _dmp(request), user.ins, common.source(request)
    back = "/patient/professionnels"
    calls = {
        "bloquer": (
            lambda d: service.block(
                user.identity, ins, common.text(d, "idnat", 40), blocked=True, source=src
            ),
            "bloque",
        ),
        "debloquer": (
            lambda d: service.block(
                user.identity, ins, common.text(d, "idnat", 40), blocked=False, source=src
            ),
            "debloque",
        ),
        "medecin-traitant": (
            lambda d: service.set_medecin_traitant(
                user.identity, ins, common.text(d, "idnat", 40) or None, source=src
            ),
            "medecin",
        ),
    }
    if change not in calls:
        return _view(request, user, "error.html", 404, error="Action inconnue.")
    call, ok = calls[change]
    return await _act(request, user, call, back, ok)


# -- profile and notifications --------------------------------------------------------------------
@router.get("/profil")
async def profile(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service = _dmp(request)
    entries = await run_in_threadpool(service.profile, user.identity, user.ins)
    info = await run_in_threadpool(service.patient, user.ins)
    email_configured = bool(common.runtime(request).settings.notify.smtp_host)
    return _view(
        request, user, "patient/profile.html",
        entries=entries, labels=PROFILE_LABELS, info=info, email_configured=email_configured,
    )  # fmt: skip


@router.post("/profil")
async def profile_save(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service, ins, src = _dmp(request), user.ins, common.source(request)

    def save(data: Any) -> None:
        current = service.profile(user.identity, ins)
        for kind in PROFILE_KINDS:
            value = common.text(data, kind, 5000)
            if value != current.get(kind, ""):
                service.set_profile(user.identity, ins, kind, value, source=src)

    return await _act(request, user, save, "/patient/profil", "profil")


@router.post("/notifications")
async def notifications(request: Request) -> Response:
    user = await PAGES.user(request)
    if user is None:
        return redirect(PAGES.login)
    service, ins, src = _dmp(request), user.ins, common.source(request)
    return await _act(
        request,
        user,
        lambda d: service.set_notifications(
            user.identity, ins, common.text(d, "channel", 16), common.text(d, "email", 320), source=src
        ),
        "/patient/profil",
        "notifications",
    )
