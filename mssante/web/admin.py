"""The admin console (/admin/): the operator's staff watch and handle the server from a browser.

Built on the pages of :mod:`mssante.web` (sessions, CSRF, security headers, DSFR templates).
A staff login (local ``staff`` account, password and TOTP code) with a role
(:mod:`mssante.web.staff`) opens it; each page asks :func:`staff.may` before it shows or acts,
and every action is recorded in the audit trail as ``admin.<action>`` with the staff member as
actor — on top of what the action itself records (``delegation.grant``, ``annuaire.bal``, the
queue's DSN…). The console calls the same functions as the CLI: nothing here decides rights.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from mssante import audit
from mssante.db import transaction
from mssante.web import common, staff
from mssante.web.common import FormRefused
from mssante.web.render import page, redirect
from mssante.web.sessions import WebUser

SPACE = "admin"
LOGIN = "/admin/connexion"
router = APIRouter(prefix="/admin")


def _role(request: Request, user: WebUser) -> str | None:
    with Session(common.runtime(request).engine) as s:
        return staff.role_of(s, user.identity.login)


async def _staff(request: Request, action: str = "view") -> tuple[WebUser, str]:
    """The logged-in staff member allowed ``action``, or :class:`FormRefused`."""
    user = await common.current(request, SPACE)
    if user is None:
        raise FormRefused("", 401)
    role = await run_in_threadpool(_role, request, user)
    if not staff.may(role, action):
        raise FormRefused("Votre rôle ne permet pas cette action.", 403)
    assert role is not None
    return user, role


def _view(
    request: Request, user: WebUser, role: str, template: str, status: int = 200, **ctx: Any
) -> Response:
    return page(
        request, template, status, user=user, csrf=user.csrf, space=SPACE,
        who=f"{user.identity.login} ({role})", role=role, may=lambda a: staff.may(role, a), **ctx,
    )  # fmt: skip


def _record(request: Request, user: WebUser, action: str, obj: str | None, **detail: Any) -> None:
    """The console's own trace of an action (who, from where, on what, why)."""
    with transaction(common.runtime(request).writer_engine) as s:
        audit.append(
            s,
            audit.AuditEvent(
                actor=user.identity.principal,
                action=f"admin.{action}",
                bal=detail.pop("bal", None),
                object=obj,
                source=common.source(request),
                detail=detail or None,
            ),
        )


def _refused(request: Request, exc: FormRefused) -> Response:
    if exc.status == 401:
        return redirect(LOGIN)
    return page(request, "error.html", exc.status, error=str(exc), space=SPACE)


# -- login --------------------------------------------------------------------------------------
def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    return common.login_page(request, "admin/login.html", status_code, error=error, space=SPACE)


@router.get("/connexion")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/connexion")
async def login(request: Request) -> Response:
    try:
        data = await common.form(request, None)
        identity = await common.password_login(
            request,
            SPACE,
            common.text(data, "login"),
            common.text(data, "password"),
            common.text(data, "code"),
        )
        with Session(common.runtime(request).engine) as s:
            role = staff.role_of(s, identity.login)
        if role is None:
            raise FormRefused("Ce compte n'a pas de rôle dans la console d'administration.", 403)
    except FormRefused as exc:
        return _login_page(request, str(exc), exc.status)
    return await common.start_session(request, redirect("/admin/"), identity, SPACE)


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    return await common.logout(request, SPACE, LOGIN, lambda _user, exc: _refused(request, exc))


# -- overview: queue, lists, certificates -------------------------------------------------------
def _queue(request: Request) -> list[dict[str, Any]]:
    from mssante.sqlfast import utc
    from mssante.store.models import OutboundEntry

    now = datetime.now(UTC)
    with Session(common.runtime(request).engine) as s:
        rows = s.scalars(select(OutboundEntry).order_by(OutboundEntry.created_at).limit(200)).all()
        return [
            {
                "id": r.id,
                "domain": r.domain,
                "mail_from": r.mail_from,
                "recipients": ", ".join(json.loads(r.recipients)),
                "age": round((now - utc(r.created_at)).total_seconds() / 60),
                "attempts": r.attempts,
                "last_error": r.last_error or "",
            }
            for r in rows
        ]


def _certificates(request: Request) -> list[dict[str, Any]]:
    """Every certificate and DKIM key the server uses, with what is left of it."""
    from mssante.metrics import ServerState

    rt = common.runtime(request)
    found: list[dict[str, Any]] = []
    for family in ServerState(rt).certificate_families():
        for sample in family.samples:
            found.append({"kind": sample.labels["source"], "name": sample.labels["subject"],
                          "days": round(sample.value)})  # fmt: skip
    keys_dir = rt.settings.dkim.keys_dir
    for key in sorted(Path(keys_dir).glob("*.key")) if keys_dir and Path(keys_dir).is_dir() else ():
        made = datetime.fromtimestamp(key.stat().st_mtime, UTC)
        found.append({"kind": "dkim", "name": key.stem, "days": None, "since": made})
    return found


@router.get("/")
async def home(request: Request) -> Response:
    from annuaire.updates import scheduled_lists, status

    try:
        user, role = await _staff(request)
    except FormRefused as exc:
        return _refused(request, exc)
    rt = common.runtime(request)
    queue = await run_in_threadpool(_queue, request)
    lists = await run_in_threadpool(status, rt.engine, scheduled_lists(rt.settings))
    certificates = await run_in_threadpool(_certificates, request)
    return _view(request, user, role, "admin/home.html", queue=queue, lists=lists, certificates=certificates)


# -- BALs ---------------------------------------------------------------------------------------
@router.get("/bal")
async def bal_search(request: Request, q: str = "") -> Response:
    from annuaire.search import search

    try:
        user, role = await _staff(request)
    except FormRefused as exc:
        return _refused(request, exc)
    found = await run_in_threadpool(search, common.runtime(request).engine, q[:100], 50) if q.strip() else []
    return _view(request, user, role, "admin/search.html", q=q, found=found)


def _bal_detail(request: Request, address: str) -> dict[str, Any] | None:
    from annuaire.search import show
    from delegation.grants import GrantBook, label
    from delegation.rights import format_rights
    from mssante.store.models import MailAccount

    rt = common.runtime(request)
    record = show(rt.engine, address)
    if record is None:
        return None
    key = record.address.lower()
    grants = GrantBook(rt.engine).on_bal(key)
    with Session(rt.engine) as s:
        usage = s.scalar(select(MailAccount).where(MailAccount.bal == key))
        trail = list(audit.for_bal(s, key, limit=50))
        shown = [
            {"grantee": label(s, g.grantee), "principal": g.grantee, "role": g.role,
             "rights": format_rights(g.rights), "by": g.granted_by, "until": g.expires_at, "reason": g.reason}
            for g in grants
        ]  # fmt: skip
        last = trail[0].at if trail else None
    return {
        "record": record,
        "grants": [g for g in shown if g["role"] != "member"],
        "members": [g for g in shown if g["role"] == "member"],
        "used": usage.used_bytes if usage is not None else 0,
        "quota": getattr(usage, "quota_bytes", None) if usage is not None else None,
        "trail": trail,
        "last_activity": last,
    }


@router.post("/bal")
async def bal_create(request: Request) -> Response:
    """A local BAL (PER/CAB of a professional, ORG/APP of a structure), as `annuaire add bal`."""
    from annuaire.service import AnnuaireError, add_bal

    user = await common.current(request, SPACE)
    try:
        data = await common.form(request, user)
        user, _role = await _staff(request, "bal.create")
        address = common.text(data, "address", 320)
        fields = {
            name: common.text(data, name, 300) or None
            for name in ("professional", "structure", "responsible", "service")
        }
        reason = common.text(data, "reason")
        if not address or not reason:
            raise FormRefused("Indiquez l'adresse de la BAL et la raison de sa création.")

        def create() -> str:
            try:
                with transaction(common.runtime(request).writer_engine) as s:
                    saved = add_bal(
                        s, address=address, type=common.text(data, "type", 8), actor=user.identity.principal,
                        professional=fields["professional"], structure=fields["structure"],
                        responsible=fields["responsible"], service=fields["service"],
                    )  # fmt: skip
                    created = saved.row.address
            except AnnuaireError as exc:
                raise FormRefused(f"Création refusée : {exc}") from exc
            common.runtime(request).annuaire.invalidate()
            _record(request, user, "bal.create", created, bal=created.lower(), reason=reason, **fields)
            return created

        created = await run_in_threadpool(create)
    except FormRefused as exc:
        return _refused(request, exc)
    return redirect(f"/admin/bal/{created}")


@router.get("/bal/{address}")
async def bal(request: Request, address: str) -> Response:
    try:
        user, role = await _staff(request)
    except FormRefused as exc:
        return _refused(request, exc)
    detail = await run_in_threadpool(_bal_detail, request, address)
    if detail is None:
        return page(request, "error.html", 404, error=f"Aucune BAL <{address}> dans l'annuaire.", space=SPACE)
    verified = request.query_params.get("chaine")
    return _view(request, user, role, "admin/bal.html", verified=verified, **detail)


@router.post("/bal/{address}/etat")
async def bal_state(request: Request, address: str) -> Response:
    from annuaire.service import AnnuaireError, set_bal_active

    user = await common.current(request, SPACE)
    try:
        data = await common.form(request, user)
        active = common.text(data, "active") == "1"
        user, _role = await _staff(request, "bal.enable" if active else "bal.disable")
        reason = common.text(data, "reason")
        if not reason:
            raise FormRefused("Indiquez la raison de ce changement.")

        def change() -> None:
            with transaction(common.runtime(request).writer_engine) as s:
                set_bal_active(s, address=address, active=active, actor=user.identity.principal)
            _record(request, user, "bal.enable" if active else "bal.disable", address, bal=address.lower(),
                    reason=reason)  # fmt: skip

        await run_in_threadpool(change)
    except FormRefused as exc:
        return _refused(request, exc)
    except AnnuaireError as exc:
        return _refused(request, FormRefused(str(exc), 404))
    return redirect(f"/admin/bal/{address}")


@router.post("/bal/{address}/delegations")
async def delegation(request: Request, address: str) -> Response:
    """Grant (``rights`` given) or revoke (``revoke`` given) a delegation, or an ORG BAL's
    membership (``member``), as the operator."""
    from annuaire.lookup import Annuaire
    from delegation import grants as service
    from delegation.rights import InvalidRights, parse_rights
    from delegation.rules import Refused

    user = await common.current(request, SPACE)
    try:
        data = await common.form(request, user)
        revoking = bool(common.text(data, "revoke"))
        user, _role = await _staff(request, "delegation.revoke" if revoking else "delegation.grant")
        grantee, reason = common.text(data, "grantee", 320), common.text(data, "reason")
        role = "member" if common.text(data, "member") else "delegate"
        if not grantee or not reason:
            raise FormRefused("Indiquez le bénéficiaire et la raison.")
        rt = common.runtime(request)
        info = Annuaire(rt.engine).bal(address)
        if info is None:
            raise FormRefused(f"Aucune BAL <{address}> dans l'annuaire.", 404)
        operator = f"{user.identity.principal} (console)"

        def act() -> None:
            with transaction(rt.writer_engine) as s:
                who = service.resolve_grantee(s, grantee)
                if revoking:
                    service.revoke(s, bal=info, grantee=who.principal, actor=None, operator=operator,
                                   reason=reason, role=role, source="admin")  # fmt: skip
                else:
                    rights = parse_rights(common.text(data, "rights"))
                    service.grant(s, bal=info, grantee=who, rights=rights, actor=None, operator=operator,
                                  reason=reason, role=role, source="admin")  # fmt: skip
            _record(request, user, "delegation.revoke" if revoking else "delegation.grant", grantee,
                    bal=info.key, reason=reason, role=role)  # fmt: skip

        await run_in_threadpool(act)
    except FormRefused as exc:
        return _refused(request, exc)
    except (Refused, InvalidRights) as exc:
        return _refused(request, FormRefused(str(exc), 400))
    return redirect(f"/admin/bal/{address}")


@router.post("/audit/verifier")
async def verify_chain(request: Request) -> Response:
    """Check the whole audit chain (the trail of one BAL is a part of it)."""
    user = await common.current(request, SPACE)
    try:
        data = await common.form(request, user)
        user, _role = await _staff(request, "audit.verify")
        back = common.text(data, "bal", 320)

        def check() -> str:
            with Session(common.runtime(request).engine) as s:
                result = audit.verify(s)
            outcome = "intacte" if result.ok else f"rompue-{result.broken_seq}"
            _record(request, user, "audit.verify", back or None, checked=result.checked, ok=result.ok)
            return outcome

        outcome = await run_in_threadpool(check)
    except FormRefused as exc:
        return _refused(request, exc)
    return redirect(f"/admin/bal/{back}?chaine={outcome}" if back else f"/admin/?chaine={outcome}")


# -- outbound queue ----------------------------------------------------------------------------
@router.post("/file/{entry_id}/{change}")
async def queue_entry(request: Request, entry_id: int, change: str) -> Response:
    from mssante.smtp.relay import drop_entry
    from mssante.store.models import OutboundEntry

    if change not in ("relancer", "supprimer"):
        return page(request, "error.html", 404, error="Action inconnue.", space=SPACE)
    action = "queue.retry" if change == "relancer" else "queue.drop"
    user = await common.current(request, SPACE)
    try:
        data = await common.form(request, user)
        user, _role = await _staff(request, action)
        reason = common.text(data, "reason")
        rt = common.runtime(request)
        if change == "supprimer":
            if not reason:
                raise FormRefused(
                    "Indiquez pourquoi ce message est retiré de la file (l'expéditeur le lira)."
                )
            if not await drop_entry(rt.settings, rt.store, entry_id, reason):
                raise FormRefused(f"Aucune entrée {entry_id} dans la file.", 404)
        else:

            def due() -> int:
                with transaction(rt.writer_engine) as s:
                    done = s.execute(
                        update(OutboundEntry).where(OutboundEntry.id == entry_id)
                        .values(next_attempt_at=datetime.now(UTC), claimed_until=None, claimed_by=None)
                    )  # fmt: skip
                    return int(getattr(done, "rowcount", 0))

            if not await run_in_threadpool(due):
                raise FormRefused(f"Aucune entrée {entry_id} dans la file.", 404)
        await run_in_threadpool(_record, request, user, action, f"queue:{entry_id}", reason=reason or None)
    except FormRefused as exc:
        return _refused(request, exc)
    return redirect("/admin/", "file_" + change)
