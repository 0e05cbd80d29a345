"""Operator-side reading of the annuaire: free-text search and the full record of one BAL.

Unlike :mod:`annuaire.lookup` (the policy's cached gate) and :mod:`annuaire.fhir` (the public
directory, which hides the liste rouge), this shows everything to the operator's IT team.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session, aliased

from annuaire.addresses import AddressError, parse
from annuaire.models import Bal, Professional, Structure
from annuaire.nomenclatures import Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures

_Owner = aliased(Professional, name="owner")
_Responsible = aliased(Professional, name="responsible")


@dataclass(frozen=True)
class BalRecord:
    address: str
    type: str
    active: bool
    liste_rouge: bool
    source: str
    holder: str
    professional_idnat: str | None
    profession: str | None
    structure_identifier: str | None
    structure_name: str | None
    structure_kind: str | None
    responsible_idnat: str | None
    service: str | None
    description: str | None
    ins: str | None
    updated_at: datetime
    deactivated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("updated_at", "deactivated_at"):
            data[name] = data[name].isoformat() if data[name] else None
        return data


_QUERY = (
    select(
        Bal,
        _Owner.idnat,
        _Owner.prenom,
        _Owner.nom,
        _Owner.profession_code,
        Structure.identifier,
        Structure.raison_sociale,
        Structure.categorie,
        _Responsible.idnat,
    )
    .outerjoin(_Owner, _Owner.id == Bal.professional_id)
    .outerjoin(Structure, Structure.id == Bal.structure_id)
    .outerjoin(_Responsible, _Responsible.id == Bal.responsible_id)
)


def _record(row: Any, noms: Nomenclatures) -> BalRecord:
    bal, idnat, prenom, nom, profession, s_id, s_name, s_cat, responsible = row
    person = " ".join(x for x in (prenom, nom) if x)
    return BalRecord(
        address=bal.address,
        type=bal.type,
        active=bal.active,
        liste_rouge=bal.liste_rouge,
        source=bal.source,
        holder=person or s_name or (f"patient {bal.ins}" if bal.ins else ""),
        professional_idnat=idnat,
        profession=noms.profession_label(profession) or profession,
        structure_identifier=s_id,
        structure_name=s_name,
        structure_kind=noms.structure_kind(s_cat),
        responsible_idnat=responsible,
        service=bal.service,
        description=bal.description,
        ins=bal.ins,
        updated_at=bal.updated_at,
        deactivated_at=bal.deactivated_at,
    )


def search(
    engine: Engine, text: str, limit: int = 50, nomenclatures: Nomenclatures | None = None
) -> list[BalRecord]:
    """BALs whose address, holder's name or structure name contains ``text`` (case-insensitive)."""
    noms = nomenclatures or default_nomenclatures()
    needle = text.strip().lower()
    query = _QUERY.where(
        or_(
            Bal.address_key.contains(needle, autoescape=True),
            _Owner.nom.icontains(needle, autoescape=True),
            Structure.raison_sociale.icontains(needle, autoescape=True),
        )
    )
    with Session(engine) as session:
        rows = session.execute(query.order_by(Bal.address_key).limit(limit)).all()
        return [_record(r, noms) for r in rows]


def show(engine: Engine, address: str, nomenclatures: Nomenclatures | None = None) -> BalRecord | None:
    """The full record of the BAL at ``address`` (any case), or None."""
    noms = nomenclatures or default_nomenclatures()
    try:
        key = parse(address).key
    except AddressError:
        return None
    with Session(engine) as session:
        row = session.execute(_QUERY.where(Bal.address_key == key)).first()
        return _record(row, noms) if row is not None else None
