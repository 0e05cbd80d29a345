"""HTTP JSON API of the DMP store, on the server's HTTP listener.

Everyone authenticates with an OIDC bearer token checked offline by the product's token
validator (``mssante.auth``): professionals with Pro Santé Connect (or the configured
professional issuer), staff with theirs, patients with the patient issuer. The routes only
translate HTTP to :class:`dmp.service.DMPService` calls: every decision is in ``dmp.rules``.

Professionals: ``GET /dmp/patients/{ins}`` (search by INS), ``GET /dmp/patients/{ins}/documents``
(filters ``type_code``, ``author_profession``, ``since``, ``until``; ``break_glass=true`` with a
``reason``), ``GET /dmp/documents/{id}`` (metadata and base64 content), ``POST
/dmp/documents/{id}/mask`` and ``/unmask`` (``{"flags": [...]}``), ``DELETE /dmp/documents/{id}``.
Patients (and legal representatives, with the represented patient's INS in the path):
``GET /dmp/me/documents``, ``GET /dmp/me/history``, ``GET /dmp/patients/{ins}/history``,
``PUT /dmp/patients/{ins}/opposition`` and ``/emergency-access`` (``{"value": true}``).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dmp.service import DMPError, DMPService
from mssante.auth.authenticator import Authenticator, AuthFailure, AuthSuccess
from mssante.auth.identity import Identity, IdentityKind

router = APIRouter(prefix="/dmp", tags=["dmp"])
# Every route needs a bearer token: mssante.http checks it before any body is read.
BEARER_LISTENER = "http-dmp"


def _unauthenticated(message: str) -> HTTPException:
    return HTTPException(
        401, detail=message, headers={"WWW-Authenticate": 'Bearer realm="mssante-dmp", error="invalid_token"'}
    )


def _service(request: Request) -> DMPService:
    return DMPService.from_runtime(request.app.state.runtime)


def _authenticator(request: Request) -> Authenticator:
    found = getattr(request.app.state.runtime, "authenticator", None)
    if not isinstance(found, Authenticator):
        raise HTTPException(503, detail="authentication is not configured on this server")
    return found


def _identity(request: Request, authorization: Annotated[str | None, Header()] = None) -> Identity:
    """The bearer token's identity, with the same checks, counters and audit as SASL (already
    checked by the HTTP listener's bearer gate when the application runs behind it)."""
    checked = getattr(request.state, "identity", None)
    if isinstance(checked, Identity):
        return checked
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("a bearer token is required")
    client_ip = request.client.host if request.client else "0.0.0.0"
    result = _authenticator(request).authenticate_bearer(token, client_ip=client_ip, listener="http-dmp")
    if not isinstance(result, AuthSuccess):
        raise _unauthenticated(result.reason if isinstance(result, AuthFailure) else "authentication failed")
    return result.identity


Who = Annotated[Identity, Depends(_identity)]
Service = Annotated[DMPService, Depends(_service)]


def _error(exc: DMPError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "code": exc.code}, status_code=exc.http_status)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except DMPError as exc:
        return _error(exc)


def _source(request: Request) -> str:
    client = request.client
    return f"http:{client.host if client else '?'}"


def _patient_ins(identity: Identity) -> str:
    if identity.kind is not IdentityKind.PATIENT:
        raise DMPError("this route is for patients")
    return identity.id


@router.get("/patients/{ins}")
def search_patient(ins: str, who: Who, service: Service, request: Request) -> Any:
    found = _call(service.search_patient, who, ins, source=_source(request))
    if isinstance(found, JSONResponse):
        return found
    t = found.traits
    return {
        "ins": found.ins,
        "ins_oid": found.ins_oid,
        "identity_status": found.identity_status,
        "birth_name": t.birth_name,
        "first_given_name": t.first_given_name,
        "given_names": t.given_names,
        "birth_date": t.birth_date.isoformat(),
        "sex": t.sex,
        "birthplace": t.birthplace,
    }


@router.get("/patients/{ins}/documents")
def list_documents(
    ins: str,
    who: Who,
    service: Service,
    request: Request,
    type_code: str | None = None,
    author_profession: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    break_glass: Annotated[bool, Query()] = False,
    reason: str | None = None,
) -> Any:
    found = _call(
        service.list_documents, who, ins, type_code=type_code, author_profession=author_profession,
        since=since, until=until, break_glass=break_glass, reason=reason, source=_source(request),
    )  # fmt: skip
    if isinstance(found, JSONResponse):
        return found
    return {"documents": [d.as_json() for d in found]}


@router.get("/patients/{ins}/history")
def patient_history(ins: str, who: Who, service: Service) -> Any:
    found = _call(service.history, who, ins)
    if isinstance(found, JSONResponse):
        return found
    return {"history": [h.as_json() for h in found]}


class Choice(BaseModel):
    value: bool


@router.put("/patients/{ins}/{setting}")
def patient_setting(
    ins: str, setting: Literal["opposition", "emergency-access"], body: Choice, who: Who, service: Service
) -> Any:
    """The patient (or a legal representative) opposes access, or allows emergency access."""
    change = service.set_opposition if setting == "opposition" else service.set_emergency_access
    found = _call(change, ins, body.value, actor=who)
    if isinstance(found, JSONResponse):
        return found
    return {"opposition": found.opposition, "emergency_access": found.emergency_access}


@router.get("/me/documents")
def my_documents(who: Who, service: Service, request: Request) -> Any:
    found = _call(lambda: service.list_documents(who, _patient_ins(who), source=_source(request)))
    if isinstance(found, JSONResponse):
        return found
    return {"documents": [d.as_json() for d in found]}


@router.get("/me/history")
def my_history(who: Who, service: Service) -> Any:
    found = _call(lambda: service.history(who, _patient_ins(who)))
    if isinstance(found, JSONResponse):
        return found
    return {"history": [h.as_json() for h in found]}


@router.get("/documents/{unique_id}")
def read_document(
    unique_id: str,
    who: Who,
    service: Service,
    request: Request,
    break_glass: Annotated[bool, Query()] = False,
    reason: str | None = None,
) -> Any:
    found = _call(
        service.read, who, unique_id, break_glass=break_glass, reason=reason, source=_source(request)
    )
    if isinstance(found, JSONResponse):
        return found
    info, content = found
    return {**info.as_json(), "content_base64": base64.b64encode(content).decode("ascii")}


class Visibility(BaseModel):
    flags: list[str]
    reason: str | None = None


@router.post("/documents/{unique_id}/{change}")
def set_visibility(
    unique_id: str,
    change: Literal["mask", "unmask"],
    body: Visibility,
    who: Who,
    service: Service,
    request: Request,
) -> Any:
    """``mask`` or ``unmask``: the author hides a document from professionals, patient or representatives."""
    on = change == "mask"
    found = _call(
        service.set_visibility, who, unique_id, body.flags, on=on, reason=body.reason, source=_source(request)
    )
    return found if isinstance(found, JSONResponse) else found.as_json()


@router.delete("/documents/{unique_id}")
def delete_document(
    unique_id: str, who: Who, service: Service, request: Request, reason: str | None = None
) -> Any:
    found = _call(service.delete, who, unique_id, reason=reason, source=_source(request))
    return found if isinstance(found, JSONResponse) else found.as_json()
