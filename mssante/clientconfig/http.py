"""Autoconfiguration on the HTTPS listener.

- ``GET /.well-known/autoconfig/mail/config-v1.1.xml`` and ``GET /mail/config-v1.1.xml``
  (``?emailaddress=``): Thunderbird's document, where ``autoconfig.<domain>`` points here;
- ``GET /autoconfig/v1.1/{domain}``: the same in the form of Thunderbird's ISPDB, for a client
  whose ``mailnews.auto_config_url`` names this server (the demo, where no DNS name points here);
- ``POST /autodiscover/autodiscover.xml`` (and ``/Autodiscover/Autodiscover.xml``): Outlook's;
- ``GET /.well-known/mta-sts.txt``: the MTA-STS policy (``mssante dns records``).

Hosts and ports are those of the bound listeners (``Runtime.listeners``), so what a client is
told is what it will find. Only the operator's domains are described; others get 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mssante.clientconfig import autodiscover
from mssante.clientconfig.dns import mta_sts_policy
from mssante.clientconfig.endpoints import Endpoints, endpoints
from mssante.clientconfig.thunderbird import config_xml
from mssante.clientconfig.username import LoginHint, login_hint

router = APIRouter(tags=["autoconfiguration"])
XML = "application/xml; charset=utf-8"


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


def _domains(runtime: Any) -> list[str]:
    server = runtime.settings.server
    return list(dict.fromkeys([*(d.lower() for d in server.domains), server.patient_domain.lower()]))


def _endpoints(runtime: Any) -> Endpoints:
    return endpoints(runtime.settings, runtime.listeners)


def _hint(runtime: Any, address: str | None) -> LoginHint:
    with Session(runtime.engine) as session:
        return login_hint(session, runtime.annuaire, address)


def _thunderbird(request: Request, domain: str | None, address: str | None) -> Response:
    runtime = _runtime(request)
    domains = _domains(runtime)
    if address is not None:
        address = address.strip()
        local, at, address_domain = address.rpartition("@")
        if not at or not local or (domain is not None and address_domain.lower() != domain):
            raise HTTPException(400, "emailaddress is not an address of this domain")
        domain = address_domain.lower()
    domain = (domain or domains[0]).lower()
    if domain not in domains:
        raise HTTPException(404, f"{domain} is not a domain of this operator")
    body = config_xml(_endpoints(runtime), domain, domains, _hint(runtime, address))
    return Response(body, media_type=XML, headers={"Cache-Control": "no-cache"})


@router.get("/.well-known/autoconfig/mail/config-v1.1.xml")
@router.get("/mail/config-v1.1.xml")
def thunderbird_autoconfig(request: Request, emailaddress: str | None = None) -> Response:
    """Thunderbird asks this with ``?emailaddress=`` the address the user typed."""
    return _thunderbird(request, None, emailaddress)


@router.get("/autoconfig/v1.1/{domain}")
def thunderbird_ispdb(request: Request, domain: str, emailaddress: str | None = None) -> Response:
    return _thunderbird(request, domain.lower(), emailaddress)


async def _body(request: Request) -> bytes:
    """The request body, refused past the autodiscover cap without reading the rest."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > autodiscover.MAX_REQUEST_BYTES:
            raise HTTPException(413, "autodiscover request too large")
    return bytes(data)


@router.post("/autodiscover/autodiscover.xml")
@router.post("/Autodiscover/Autodiscover.xml")
async def outlook_autodiscover(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        address = autodiscover.requested_address(await _body(request))
    except autodiscover.BadRequest as exc:
        return Response(autodiscover.error_xml(600, f"Invalid Request: {exc}"), 400, media_type=XML)
    if address.rpartition("@")[2].lower() not in _domains(runtime):
        return Response(autodiscover.error_xml(600, "Not a domain of this operator"), 404, media_type=XML)
    hint = await run_in_threadpool(_hint, runtime, address)
    body = autodiscover.response_xml(_endpoints(runtime), hint.for_address(address), address)
    return Response(body, media_type=XML)


@router.get("/.well-known/mta-sts.txt")
def mta_sts(request: Request) -> Response:
    return Response(mta_sts_policy(_runtime(request).settings), media_type="text/plain; charset=utf-8")
