"""Publishing the operator's own BALs back to the national directory.

An operator of the space of trust publishes the mailboxes it hosts; the ANS aggregates them
into the national extraction that every other operator imports. Two forms are written:

- ``ans``: the extraction layout itself (the 31 ``|``-separated columns of
  :data:`annuaire.extraction.COLUMNS`, one header row), so that an export imported by
  :func:`annuaire.importer.import_extraction` on an empty store gives back the same annuaire;
- ``fhir``: an Annuaire Santé style FHIR R4 ``collection`` Bundle with one Organization per
  structure, one Practitioner per professional, one PractitionerRole per professional and
  structure, and one Endpoint per BAL (the resources of :mod:`annuaire.fhir`, so the API and
  the export never disagree on a field).

Only what a directory client may see is written: active BALs of the given domains, never a
BAL on the liste rouge, never a patient BAL (patients are not in the professionals' directory).
Rows are streamed from the database in address order, so the export of a large operator does
not sit in memory (the FHIR form keeps one entry per professional and structure, not per row).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session, aliased

from annuaire.extraction import COLUMNS, STRUCTURE_ID_TYPES
from annuaire.fhir import (
    MAILBOX_METADATA,
    TRE_R257,
    organization_resource,
    practitioner_resource,
    practitioner_role_resource,
)
from annuaire.models import Bal, Professional, Structure
from annuaire.nomenclatures import HOLDER_PROFESSIONAL, HOLDER_STRUCTURE, Nomenclatures

FORMATS = ("ans", "fhir")
_STRUCTURE_TYPE_CODES = {name: code for code, name in STRUCTURE_ID_TYPES.items()}
_Responsible = aliased(Professional, name="responsible")


@dataclass(frozen=True, slots=True)
class PublishedBal:
    """One published BAL with its professional and structure, as the export reads them."""

    bal: Any
    professional: Any | None
    structure: Any | None
    responsible: str | None


def published(
    conn: Connection, domains: Iterable[str], nomenclatures: Nomenclatures
) -> Iterator[PublishedBal]:
    """Active, publicly listed, non-patient BALs of ``domains``, in address order."""
    types = [
        code
        for code, t in nomenclatures.bal_types.items()
        if t.titulaire in (HOLDER_PROFESSIONAL, HOLDER_STRUCTURE)
    ]
    wanted = sorted({d.lower() for d in domains})
    query = (
        select(Bal, Professional, Structure, _Responsible.nom, _Responsible.prenom)
        .outerjoin(Professional, Bal.professional_id == Professional.id)
        .outerjoin(Structure, Bal.structure_id == Structure.id)
        .outerjoin(_Responsible, Bal.responsible_id == _Responsible.id)
        .where(
            Bal.active.is_(True),
            Bal.liste_rouge.is_(False),
            Bal.type.in_(types),
            Bal.domain.in_(wanted),
        )
        .order_by(Bal.address_key)
    )
    with Session(conn) as session:
        for bal, professional, structure, r_nom, r_prenom in session.execute(
            query.execution_options(yield_per=1000)
        ):
            responsible = " ".join(x for x in (r_prenom, r_nom) if x) or None
            yield PublishedBal(bal, professional, structure, responsible)


def _text(value: object) -> str:
    """A field of the extraction: never a separator or a line break inside a value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "O" if value else "N"
    return " ".join(str(value).replace("|", " ").split())


def ans_row(item: PublishedBal) -> list[str]:
    """The 31 columns of one BAL, in :data:`COLUMNS` order (the importer's inverse)."""
    b, p, s = item.bal, item.professional, item.structure
    values: list[object] = [b.type, b.address]
    if p is not None:
        values += [p.id_type, p.identifier, p.idnat]
    else:
        values += [None, None, None]
    values += [
        _STRUCTURE_TYPE_CODES.get(s.id_type, s.id_type) if s is not None else None,
        s.identifier if s is not None else None,
        b.service,
    ]
    if p is not None:
        values += [
            p.civilite, p.nom, p.prenom, p.categorie_code, None, p.profession_code,
            p.profession_label, p.savoir_faire_code, p.savoir_faire_label,
        ]  # fmt: skip
    else:
        values += [None] * 9
    values.append(b.dematerialisation)
    if s is not None:
        values += [
            s.raison_sociale, s.enseigne, s.complement_localisation, s.complement_distribution,
            s.numero_voie, s.complement_numero_voie, s.type_voie, s.libelle_voie, s.lieu_dit,
            s.ligne_acheminement, s.code_postal, s.departement, s.pays,
        ]  # fmt: skip
    else:
        values += [None] * 13
    assert len(values) == len(COLUMNS)
    return [_text(v) for v in values]


def write_ans(rows: Iterable[PublishedBal], out: TextIO) -> int:
    """The extraction layout: header row, then one line per BAL (CRLF-free, UTF-8)."""
    out.write("|".join(COLUMNS) + "\n")
    count = 0
    for item in rows:
        out.write("|".join(ans_row(item)) + "\n")
        count += 1
    return count


def _endpoint(item: PublishedBal) -> dict[str, Any]:
    """One FHIR Endpoint per BAL: the address, its TRE_R257 type, who it belongs to."""
    b = item.bal
    resource: dict[str, Any] = {
        "resourceType": "Endpoint",
        "id": "mss-" + "".join(c if c.isalnum() or c in "-." else "-" for c in b.address_key)[:60],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "direct-project",
        },
        "name": b.address,
        "payloadType": [{"coding": [{"system": TRE_R257, "code": b.type}]}],
        "address": f"mailto:{b.address}",
        "extension": [{"url": MAILBOX_METADATA, "extension": [{"url": "publication", "valueBoolean": True}]}],
    }
    if item.structure is not None:
        resource["managingOrganization"] = {"reference": f"Organization/{item.structure.identifier}"}
    return resource


def write_fhir(rows: Iterable[PublishedBal], out: TextIO, nomenclatures: Nomenclatures) -> int:
    """A ``collection`` Bundle: Organizations, Practitioners, PractitionerRoles, Endpoints."""
    holders = {code: t.titulaire for code, t in nomenclatures.bal_types.items()}
    structures: dict[str, tuple[Any, list[Any]]] = {}
    professionals: dict[str, tuple[Any, list[Any]]] = {}
    roles: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
    endpoints: list[dict[str, Any]] = []
    for item in rows:
        b, p, s = item.bal, item.professional, item.structure
        endpoints.append(_endpoint(item))
        if s is not None:
            structures.setdefault(s.identifier, (s, []))
        if holders.get(b.type) == HOLDER_STRUCTURE and s is not None:
            structures[s.identifier][1].append(_WithResponsible(b, item.responsible))
        elif p is not None:
            professionals.setdefault(p.idnat, (p, []))[1].append(b)
            roles[(p.idnat, s.identifier if s is not None else None)].append(b)
    entries: list[dict[str, Any]] = []
    for s, bals in structures.values():
        entries.append(organization_resource(s, bals, nomenclatures))
    for p, bals in professionals.values():
        entries.append(practitioner_resource(p, bals, nomenclatures))
    for (idnat, structure), bals in roles.items():
        entries.append(practitioner_role_resource(professionals[idnat][0], structure, bals, nomenclatures))
    entries.extend(endpoints)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "total": len(endpoints),
        "entry": [{"fullUrl": f"urn:mssante:{r['resourceType']}/{r['id']}", "resource": r} for r in entries],
    }
    json.dump(bundle, out, ensure_ascii=False, indent=1)
    out.write("\n")
    return len(endpoints)


@dataclass(frozen=True, slots=True)
class _WithResponsible:
    """A structure BAL row seen by :func:`annuaire.fhir.organization_resource` (it reads the
    responsible's display name next to the BAL's own fields)."""

    bal: Any
    responsible_display: str | None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bal, name)
