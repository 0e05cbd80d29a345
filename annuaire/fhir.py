"""FHIR R4 read API of the annuaire, shaped like the public Annuaire Santé API.

``GET /fhir/Practitioner``, ``/fhir/PractitionerRole`` and ``/fhir/Organization`` accept
``mailbox-mss`` (starts with, case-insensitive — FHIR's default string search),
``mailbox-mss:contains`` (substring, case-insensitive) and ``mailbox-mss:exact`` (the address
as published), a comma meaning "or" inside one parameter and repeated parameters meaning
"and", plus ``_count``. The answer is a ``searchset`` Bundle. ``GET /fhir/Practitioner/{IdNat_PS}``
and ``/fhir/Organization/{identifier}`` read one resource.

Only active BALs that are not on the liste rouge are ever shown, and patient BALs never: a
directory client must not learn that an unlisted address exists. PER/CAB BALs appear on the
Practitioner and on the PractitionerRole (one per professional and structure), ORG/APP BALs
on the Organization, with the ``as-ext-mailbox-mss-metadata`` extension.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, Connection, Engine, and_, distinct, func, or_, select
from sqlalchemy.orm import aliased

from annuaire.models import Bal, Professional, Structure
from annuaire.nomenclatures import HOLDER_PROFESSIONAL, HOLDER_STRUCTURE, Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 50
MAX_COUNT = 500

SD = "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition"
MAILBOX_METADATA = f"{SD}/as-ext-mailbox-mss-metadata"
OID_IDNAT_PS = "urn:oid:1.2.250.1.71.4.2.1"
OID_IDNAT_STRUCT = "urn:oid:1.2.250.1.71.4.2.2"
TRE_R257 = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"
TRE_G15 = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
FINESS_CATEGORIES = (
    "https://mos.esante.gouv.fr/NOS/TRE_R66-CategorieEtablissement/FHIR/TRE-R66-CategorieEtablissement"
)

router = APIRouter(prefix="/fhir", tags=["annuaire"])

_Responsible = aliased(Professional, name="responsible")


class SearchError(ValueError):
    """A search parameter the server cannot honour (answered with an OperationOutcome)."""


def _outcome(status: int, message: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": message}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.runtime.engine
    return engine


def _count(request: Request) -> int:
    raw = request.query_params.get("_count")
    if raw is None:
        return DEFAULT_COUNT
    if not raw.isdigit() or not 0 < int(raw) <= MAX_COUNT:
        raise SearchError(f"_count must be an integer between 1 and {MAX_COUNT}")
    return int(raw)


def _mailbox_conditions(request: Request) -> list[ColumnElement[bool]]:
    """One condition per mailbox-mss parameter (AND), values split on commas (OR)."""
    conditions: list[ColumnElement[bool]] = []
    for name, value in request.query_params.multi_items():
        values = [v.strip() for v in value.split(",") if v.strip()]
        if name == "mailbox-mss":
            alternatives = [Bal.address_key.startswith(v.lower(), autoescape=True) for v in values]
        elif name == "mailbox-mss:contains":
            alternatives = [Bal.address_key.contains(v.lower(), autoescape=True) for v in values]
        elif name == "mailbox-mss:exact":
            alternatives = [Bal.address == v for v in values]
        elif name.startswith("mailbox-mss"):
            raise SearchError(f"unsupported modifier in {name!r} (supported: :contains, :exact)")
        else:
            continue
        if not alternatives:
            raise SearchError(f"{name} needs a value")
        conditions.append(or_(*alternatives))
    return conditions


def _public(types: list[str]) -> ColumnElement[bool]:
    return and_(Bal.active.is_(True), Bal.liste_rouge.is_(False), Bal.type.in_(types))


def _types(noms: Nomenclatures, holder: str) -> list[str]:
    return [code for code, t in noms.bal_types.items() if t.titulaire == holder]


def _mailbox(bal: Any, responsible: str | None = None) -> dict[str, Any]:
    """A ContactPoint (as-mailbox-mss) with its metadata extension."""
    meta: list[dict[str, Any]] = [
        {"url": "type", "valueCodeableConcept": {"coding": [{"system": TRE_R257, "code": bal.type}]}},
    ]
    if bal.description:
        meta.append({"url": "description", "valueString": bal.description})
    if responsible:
        meta.append({"url": "responsible", "valueString": responsible})
    if bal.service:
        meta.append({"url": "service", "valueString": bal.service})
    if bal.dematerialisation is not None:
        meta.append({"url": "digitization", "valueBoolean": bool(bal.dematerialisation)})
    meta.append({"url": "publication", "valueBoolean": True})
    return {
        "system": "email",
        "value": bal.address,
        "extension": [{"url": MAILBOX_METADATA, "extension": meta}],
    }


def _name(p: Any) -> list[dict[str, Any]]:
    name: dict[str, Any] = {}
    if p.nom:
        name["family"] = p.nom
    if p.prenom:
        name["given"] = [p.prenom]
    if p.civilite:
        name["prefix"] = [p.civilite]
    return [name] if name else []


def _qualification(p: Any, noms: Nomenclatures) -> list[dict[str, Any]]:
    if not p.profession_code:
        return []
    display = p.profession_label or noms.profession_label(p.profession_code)
    coding = {"system": TRE_G15, "code": p.profession_code, **({"display": display} if display else {})}
    return [{"code": {"coding": [coding]}}]


def practitioner_resource(p: Any, bals: list[Any], noms: Nomenclatures) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": p.idnat,
        "meta": {"profile": [f"{SD}/as-practitioner"]},
        "identifier": [{"system": OID_IDNAT_PS, "value": p.idnat}],
        "active": True,
        "name": _name(p),
        "telecom": [_mailbox(b) for b in bals],
    }
    qualification = _qualification(p, noms)
    if qualification:
        resource["qualification"] = qualification
    return resource


def _role_id(idnat: str, structure: str | None) -> str:
    # FHIR ids allow [A-Za-z0-9-.]{1,64}: the pair is joined by '-'.
    return f"{idnat}-{structure}" if structure else idnat


def practitioner_role_resource(
    p: Any, structure: str | None, bals: list[Any], noms: Nomenclatures
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": _role_id(p.idnat, structure),
        "meta": {"profile": [f"{SD}/as-practitionerrole"]},
        "active": True,
        "practitioner": {"reference": f"Practitioner/{p.idnat}"},
        "telecom": [_mailbox(b) for b in bals],
    }
    if structure:
        resource["organization"] = {"reference": f"Organization/{structure}"}
    qualification = _qualification(p, noms)
    if qualification:
        resource["code"] = [qualification[0]["code"]]
    return resource


def organization_resource(s: Any, bals: list[Any], noms: Nomenclatures) -> dict[str, Any]:
    line = " ".join(x for x in (s.numero_voie, s.complement_numero_voie, s.type_voie, s.libelle_voie) if x)
    address: dict[str, Any] = {
        k: v
        for k, v in {
            "line": [
                x for x in (s.complement_localisation, s.complement_distribution, line, s.lieu_dit) if x
            ],
            "postalCode": s.code_postal,
            "city": s.ligne_acheminement,
            "district": s.departement,
            "country": s.pays,
        }.items()
        if v
    }
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": s.identifier,
        "meta": {"profile": [f"{SD}/as-organization"]},
        "identifier": [{"system": OID_IDNAT_STRUCT, "value": s.identifier}],
        "active": True,
        "name": s.raison_sociale or s.identifier,
        "telecom": [_mailbox(b, b.responsible_display) for b in bals],
    }
    if s.enseigne:
        resource["alias"] = [s.enseigne]
    if address:
        resource["address"] = [address]
    if s.categorie:
        category = noms.finess_categories.get(s.categorie)
        coding = {"system": FINESS_CATEGORIES, "code": s.categorie}
        if category:
            coding["display"] = category.libelle
        resource["type"] = [{"coding": [coding]}]
    return resource


def _bundle(
    request: Request, resource_type: str, total: int, resources: list[dict[str, Any]]
) -> JSONResponse:
    base = str(request.base_url).rstrip("/") + "/fhir"
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/{resource_type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }
    return JSONResponse(body, media_type=FHIR_JSON)


_BAL_COLUMNS = (
    Bal.address,
    Bal.address_key,
    Bal.type,
    Bal.service,
    Bal.description,
    Bal.dematerialisation,
    Bal.professional_id,
    Bal.structure_id,
)


def _search_practitioners(
    conn: Connection, conds: list[ColumnElement[bool]], count: int, noms: Nomenclatures
) -> tuple[int, list[tuple[Any, list[Any]]]]:
    public = _public(_types(noms, HOLDER_PROFESSIONAL))
    matching = select(Bal.professional_id).where(public, Bal.professional_id.is_not(None), *conds)
    total = conn.execute(select(func.count(distinct(Bal.professional_id))).where(public, *conds)).scalar_one()
    ids = list(conn.execute(matching.distinct().order_by(Bal.professional_id).limit(count)).scalars())
    people = {p.id: p for p in conn.execute(select(Professional).where(Professional.id.in_(ids)))}
    bals: dict[int | None, list[Any]] = defaultdict(list)
    for b in conn.execute(
        select(*_BAL_COLUMNS).where(public, Bal.professional_id.in_(ids)).order_by(Bal.address_key)
    ):
        bals[b.professional_id].append(b)
    return int(total), [(people[i], bals[i]) for i in ids if i in people]


def _search(
    request: Request,
    kind: str,
    run: Callable[
        [Connection, list[ColumnElement[bool]], int, Nomenclatures], tuple[int, list[dict[str, Any]]]
    ],
) -> JSONResponse:
    """A search of ``kind``: the request's BAL conditions and ``_count`` (400 if unsupported),
    ``run`` on them, its total and resources as a searchset Bundle."""
    noms = default_nomenclatures()
    try:
        conds, count = _mailbox_conditions(request), _count(request)
    except SearchError as exc:
        return _outcome(400, str(exc))
    with _engine(request).connect() as conn:
        total, resources = run(conn, conds, count, noms)
    return _bundle(request, kind, total, resources)


@router.get("/Practitioner")
def searchpractitioner_resource(request: Request) -> JSONResponse:
    """Practitioners holding a public PER/CAB BAL that matches."""

    def run(
        conn: Connection, conds: list[ColumnElement[bool]], count: int, noms: Nomenclatures
    ) -> tuple[int, list[dict[str, Any]]]:
        total, found = _search_practitioners(conn, conds, count, noms)
        return total, [practitioner_resource(p, b, noms) for p, b in found]

    return _search(request, "Practitioner", run)


def _search_practitioner_roles(
    conn: Connection, conds: list[ColumnElement[bool]], count: int, noms: Nomenclatures
) -> tuple[int, list[dict[str, Any]]]:
    public = _public(_types(noms, HOLDER_PROFESSIONAL))
    pair = (Bal.professional_id, Bal.structure_id)
    matching = select(*pair).where(public, Bal.professional_id.is_not(None), *conds).distinct()
    total = conn.execute(select(func.count()).select_from(matching.subquery())).scalar_one()
    pairs = [tuple(r) for r in conn.execute(matching.order_by(*pair).limit(count))]
    pro_ids = {p for p, _ in pairs}
    people = {p.id: p for p in conn.execute(select(Professional).where(Professional.id.in_(pro_ids)))}
    structures: dict[int, str] = {
        sid: ident
        for sid, ident in conn.execute(
            select(Structure.id, Structure.identifier).where(Structure.id.in_({s for _, s in pairs if s}))
        )
    }
    bals: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for b in conn.execute(
        select(*_BAL_COLUMNS).where(public, Bal.professional_id.in_(pro_ids)).order_by(Bal.address_key)
    ):
        bals[(b.professional_id, b.structure_id)].append(b)
    resources = [
        practitioner_role_resource(people[p], structures.get(s) if s else None, bals[(p, s)], noms)
        for p, s in pairs
        if p in people
    ]
    return int(total), resources


@router.get("/PractitionerRole")
def searchpractitioner_role_resource(request: Request) -> JSONResponse:
    """One role per professional and structure of practice, with the BALs held there."""
    return _search(request, "PractitionerRole", _search_practitioner_roles)


def _search_organizations(
    conn: Connection, conds: list[ColumnElement[bool]], count: int, noms: Nomenclatures
) -> tuple[int, list[dict[str, Any]]]:
    public = _public(_types(noms, HOLDER_STRUCTURE))
    total = conn.execute(select(func.count(distinct(Bal.structure_id))).where(public, *conds)).scalar_one()
    ids = list(
        conn.execute(
            select(Bal.structure_id)
            .where(public, Bal.structure_id.is_not(None), *conds)
            .distinct()
            .order_by(Bal.structure_id)
            .limit(count)
        ).scalars()
    )
    structures = {s.id: s for s in conn.execute(select(Structure).where(Structure.id.in_(ids)))}
    bals: dict[int | None, list[Any]] = defaultdict(list)
    responsible_name = func.trim(
        func.coalesce(_Responsible.prenom, "") + " " + func.coalesce(_Responsible.nom, "")
    )
    for b in conn.execute(
        select(*_BAL_COLUMNS, responsible_name.label("responsible_display"))
        .outerjoin(_Responsible, _Responsible.id == Bal.responsible_id)
        .where(public, Bal.structure_id.in_(ids))
        .order_by(Bal.address_key)
    ):
        bals[b.structure_id].append(b)
    return int(total), [organization_resource(structures[i], bals[i], noms) for i in ids if i in structures]


@router.get("/Organization")
def searchorganization_resource(request: Request) -> JSONResponse:
    """Structures holding a public ORG/APP BAL that matches."""
    return _search(request, "Organization", _search_organizations)


def _resource(resource: dict[str, Any] | None, what: str) -> JSONResponse:
    if resource is None:
        # Also for a holder whose BALs are all unlisted: its existence is not published.
        return _outcome(404, f"{what} is not in the public directory")
    return JSONResponse(resource, media_type=FHIR_JSON)


@router.get("/Practitioner/{idnat}")
def readpractitioner_resource(request: Request, idnat: str) -> JSONResponse:
    """One practitioner by IdNat_PS, if it holds a public BAL."""
    noms = default_nomenclatures()
    holder = (
        Bal.professional_id == select(Professional.id).where(Professional.idnat == idnat).scalar_subquery()
    )
    with _engine(request).connect() as conn:
        _, found = _search_practitioners(conn, [holder], 1, noms)
    return _resource(practitioner_resource(*found[0], noms) if found else None, f"Practitioner/{idnat}")


@router.get("/Organization/{identifier}")
def readorganization_resource(request: Request, identifier: str) -> JSONResponse:
    """One structure by identifier, if it holds a public ORG/APP BAL."""
    noms = default_nomenclatures()
    holder = (
        Bal.structure_id == select(Structure.id).where(Structure.identifier == identifier).scalar_subquery()
    )
    with _engine(request).connect() as conn:
        _, found = _search_organizations(conn, [holder], 1, noms)
    return _resource(found[0] if found else None, f"Organization/{identifier}")
