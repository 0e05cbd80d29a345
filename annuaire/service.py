"""Writing to the annuaire one entry at a time: professionals, structures, BALs, patient BALs,
operator domains. Used by the CLI (``add``, ``disable``), the operator-accounts importer and
the demo set-up.

Every function works inside the caller's session (one transaction), is idempotent ("add"
creates or brings up to date, and reports ``unchanged`` when nothing differs), checks codes
against the nomenclatures, traces each change in the audit trail and bumps the annuaire's
generation so that look-up caches drop stale answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from annuaire import generation
from annuaire.addresses import PATIENT_DOMAIN, AddressError, normalise_domain, parse, patient_address
from annuaire.identifiers import IdentifierError, parse_idnat_ps, validate_nir
from annuaire.models import SOURCE_LOCAL, Bal, OperatorDomain, Professional, Structure
from annuaire.nomenclatures import (
    HOLDER_PATIENT,
    HOLDER_PROFESSIONAL,
    HOLDER_STRUCTURE,
    Nomenclatures,
    patient_bal_type,
)
from annuaire.nomenclatures import default as default_nomenclatures
from mssante import audit

Status = Literal["added", "updated", "unchanged"]
T = TypeVar("T")
R = TypeVar("R", Professional, Structure)


class AnnuaireError(ValueError):
    """A request the annuaire refuses; the message says which rule."""


@dataclass(frozen=True)
class Saved(Generic[T]):
    row: T
    status: Status


def _now() -> datetime:
    return datetime.now(UTC)


def _apply(row: Any, values: dict[str, Any]) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _trace(
    session: Session, actor: str, action: str, obj: str, detail: dict[str, Any], bal: str | None = None
) -> None:
    generation.bump(session.connection())
    audit.append(
        session,
        audit.AuditEvent(actor=actor, action=action, bal=bal, object=obj, detail=detail),
    )


def _upsert(session: Session, model: type[R], key: dict[str, Any], values: dict[str, Any]) -> Saved[R]:
    row = session.scalars(select(model).filter_by(**key)).first()
    if row is None:
        row = model(**key, **values, updated_at=_now())
        session.add(row)
        session.flush()
        return Saved(row, "added")
    if _apply(row, values):
        row.updated_at = _now()
        session.flush()
        return Saved(row, "updated")
    return Saved(row, "unchanged")


def add_professional(
    session: Session,
    *,
    idnat: str,
    nom: str,
    prenom: str | None = None,
    profession_code: str | None = None,
    civilite: str | None = None,
    savoir_faire_code: str | None = None,
    savoir_faire_label: str | None = None,
    actor: str,
    nomenclatures: Nomenclatures | None = None,
) -> Saved[Professional]:
    """Create or update a professional (operator-local source) identified by an IdNat_PS."""
    noms = nomenclatures or default_nomenclatures()
    try:
        parsed = parse_idnat_ps(idnat)
    except IdentifierError as exc:
        raise AnnuaireError(str(exc)) from exc
    if profession_code is not None and profession_code not in noms.professions:
        raise AnnuaireError(f"profession code {profession_code!r} is not in TRE_G15 (config/nomenclatures)")
    saved = _upsert(
        session,
        Professional,
        {"idnat": parsed.value},
        {
            "id_type": parsed.type,
            "identifier": parsed.number,
            "nom": nom,
            "prenom": prenom,
            "civilite": civilite,
            "profession_code": profession_code,
            "profession_label": noms.profession_label(profession_code),
            "savoir_faire_code": savoir_faire_code,
            "savoir_faire_label": savoir_faire_label,
            "source": SOURCE_LOCAL,
        },
    )
    if saved.status != "unchanged":
        _trace(session, actor, f"annuaire.professional.{saved.status}", parsed.value, {"nom": nom})
    return saved


def add_structure(
    session: Session,
    *,
    identifier: str,
    raison_sociale: str,
    id_type: str | None = None,
    categorie: str | None = None,
    enseigne: str | None = None,
    code_postal: str | None = None,
    ligne_acheminement: str | None = None,
    actor: str,
    nomenclatures: Nomenclatures | None = None,
) -> Saved[Structure]:
    """Create or update a structure; ``categorie`` is its FINESS category (620 = officine)."""
    noms = nomenclatures or default_nomenclatures()
    if categorie is not None and categorie not in noms.finess_categories:
        raise AnnuaireError(
            f"FINESS category {categorie!r} is not in config/nomenclatures/finess_categories.csv"
        )
    if not identifier.strip():
        raise AnnuaireError("a structure needs an identifier (FINESS, SIRET, …)")
    saved = _upsert(
        session,
        Structure,
        {"identifier": identifier.strip()},
        {
            "id_type": id_type,
            "raison_sociale": raison_sociale,
            "enseigne": enseigne,
            "categorie": categorie,
            "code_postal": code_postal,
            "ligne_acheminement": ligne_acheminement,
            "source": SOURCE_LOCAL,
        },
    )
    if saved.status != "unchanged":
        _trace(
            session,
            actor,
            f"annuaire.structure.{saved.status}",
            identifier,
            {"raison_sociale": raison_sociale},
        )
    return saved


def _professional_id(session: Session, idnat: str | None, role: str) -> int | None:
    if idnat is None:
        return None
    found = session.scalars(select(Professional.id).where(Professional.idnat == idnat.strip())).first()
    if found is None:
        raise AnnuaireError(f"{role} {idnat!r} is not in the annuaire: add the professional first")
    return found


def add_bal(
    session: Session,
    *,
    address: str,
    type: str,
    actor: str,
    professional: str | None = None,
    structure: str | None = None,
    responsible: str | None = None,
    service: str | None = None,
    description: str | None = None,
    liste_rouge: bool = False,
    nomenclatures: Nomenclatures | None = None,
) -> Saved[Bal]:
    """Create or update a local BAL (and activate it).

    ``professional`` (IdNat_PS) holds a PER/CAB BAL; ``structure`` (identifier) holds an
    ORG/APP BAL, whose ``responsible`` professional answers for it.
    """
    noms = nomenclatures or default_nomenclatures()
    bal_type = noms.bal_types.get(type.upper())
    if bal_type is None:
        raise AnnuaireError(f"BAL type {type!r} is not in TRE_R257 ({', '.join(sorted(noms.bal_types))})")
    try:
        parsed = parse(address)
    except AddressError as exc:
        raise AnnuaireError(str(exc)) from exc
    ins = None
    if bal_type.titulaire == HOLDER_PROFESSIONAL and professional is None:
        raise AnnuaireError(f"a {bal_type.code} BAL needs its professional (IdNat_PS)")
    if bal_type.titulaire == HOLDER_STRUCTURE:
        if structure is None:
            raise AnnuaireError(f"a {bal_type.code} BAL needs its structure")
        if professional is not None:
            raise AnnuaireError(f"a {bal_type.code} BAL belongs to a structure, not to a professional")
    if bal_type.titulaire != HOLDER_STRUCTURE and responsible is not None:
        raise AnnuaireError("only ORG and APP BALs have a responsible professional")
    if bal_type.titulaire == HOLDER_PATIENT:
        try:
            ins = validate_nir(parsed.local)
        except IdentifierError as exc:
            raise AnnuaireError(f"a patient BAL is <INS matricule>@{PATIENT_DOMAIN}: {exc}") from exc
    structure_id = None
    if structure is not None:
        structure_id = session.scalars(
            select(Structure.id).where(Structure.identifier == structure.strip())
        ).first()
        if structure_id is None:
            raise AnnuaireError(f"structure {structure!r} is not in the annuaire: add it first")
    values = {
        "address": parsed.address,
        "domain": parsed.domain,
        "type": bal_type.code,
        "professional_id": _professional_id(session, professional, "professional"),
        "structure_id": structure_id,
        "responsible_id": _professional_id(session, responsible, "responsible professional"),
        "ins": ins,
        "service": service,
        "description": description,
        "liste_rouge": liste_rouge,
        "active": True,
        "deactivated_at": None,
        "source": SOURCE_LOCAL,
    }
    row = session.scalars(select(Bal).where(Bal.address_key == parsed.key)).first()
    if row is None:
        now = _now()
        row = Bal(address_key=parsed.key, **values, created_at=now, updated_at=now)
        session.add(row)
        status: Status = "added"
    elif _apply(row, values):
        row.updated_at = _now()
        status = "updated"
    else:
        return Saved(row, "unchanged")
    session.flush()
    _trace(session, actor, f"annuaire.bal.{status}", parsed.key, {"type": bal_type.code}, bal=parsed.key)
    return Saved(row, status)


def add_patient_bal(
    session: Session,
    *,
    ins: str,
    actor: str,
    domain: str = PATIENT_DOMAIN,
    nomenclatures: Nomenclatures | None = None,
) -> Saved[Bal]:
    """Create (or re-activate) the BAL ``<INS>@patient.mssante.fr`` of a patient."""
    noms = nomenclatures or default_nomenclatures()
    try:
        address = patient_address(ins, domain)
    except (IdentifierError, AddressError) as exc:
        raise AnnuaireError(str(exc)) from exc
    return add_bal(
        session, address=address.address, type=patient_bal_type(noms), actor=actor, nomenclatures=noms
    )


def set_bal_active(session: Session, *, address: str, active: bool, actor: str) -> Saved[Bal]:
    """Disable (or re-enable) a BAL; never deletes it."""
    try:
        key = parse(address).key
    except AddressError as exc:
        raise AnnuaireError(str(exc)) from exc
    row = session.scalars(select(Bal).where(Bal.address_key == key)).first()
    if row is None:
        raise AnnuaireError(f"no BAL {address!r} in the annuaire")
    if row.active == active:
        return Saved(row, "unchanged")
    now = _now()
    row.active = active
    row.deactivated_at = None if active else now
    row.updated_at = now
    session.flush()
    _trace(session, actor, "annuaire.bal.enabled" if active else "annuaire.bal.disabled", key, {}, bal=key)
    return Saved(row, "updated")


def add_operator_domain(
    session: Session, *, domain: str, actor: str, source: str = "local"
) -> Saved[OperatorDomain]:
    """Put a domain on the operator whitelist (liste blanche), or re-activate it."""
    try:
        name = normalise_domain(domain)
    except AddressError as exc:
        raise AnnuaireError(str(exc)) from exc
    row = session.get(OperatorDomain, name)
    if row is not None and row.active:
        return Saved(row, "unchanged")
    status: Status = "updated"
    if row is None:
        row = OperatorDomain(domain=name, source=source, active=True, fetched_at=_now())
        session.add(row)
        status = "added"
    else:
        row.active, row.source, row.fetched_at = True, source, _now()
    session.flush()
    _trace(session, actor, f"annuaire.domain.{status}", name, {"source": source})
    return Saved(row, status)
