"""The look-up service the policy asks: is this BAL known and active, who holds it, is this
operator domain whitelisted, is this an officine's ORG BAL.

A plain synchronous API over an Engine (callers on the event loop run it in a thread). Answers
are cached in-process, negative answers included. The cache is dropped by :meth:`invalidate`
(called by the writers of this process) and, for writers in other processes such as the CLI,
whenever the annuaire's generation counter moved — checked at most every
``refresh_interval`` seconds, so a change made elsewhere is seen within that delay.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from time import monotonic
from typing import Any

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session, aliased

from annuaire import generation
from annuaire.addresses import AddressError, normalise_domain, parse
from annuaire.models import Bal, OperatorDomain, Professional, Structure
from annuaire.nomenclatures import KIND_PHARMACY, Nomenclatures
from annuaire.nomenclatures import default as default_nomenclatures

ORG = "ORG"
# Who practises in an officine, as the ANS extraction shows it: pharmaciens (21) and préparateurs
# en pharmacie (39). A structure whose listed professionals are only these, with at least one
# pharmacien, and none of them a biologist, is taken for a pharmacie d'officine when the FINESS
# category is not known (the national extraction carries no FINESS category).
OFFICINE_PROFESSIONS = frozenset({"21", "39"})


@dataclass(frozen=True, slots=True)
class BalInfo:
    address: str
    key: str
    type: str
    domain: str
    active: bool
    liste_rouge: bool
    professional_idnat: str | None
    structure_identifier: str | None
    structure_kind: str | None
    responsible_idnat: str | None
    ins: str | None
    service: str | None
    description: str | None

    @property
    def is_pharmacy_org(self) -> bool:
        """An ORG BAL of a pharmacie d'officine: the one kind a patient may write to first."""
        return self.type == ORG and self.structure_kind == KIND_PHARMACY


@dataclass(frozen=True, slots=True)
class ProfessionalInfo:
    idnat: str
    civilite: str | None
    nom: str | None
    prenom: str | None
    profession_code: str | None
    profession_label: str | None
    savoir_faire_code: str | None
    savoir_faire_label: str | None


@dataclass(frozen=True, slots=True)
class StructureInfo:
    identifier: str
    id_type: str | None
    raison_sociale: str | None
    enseigne: str | None
    categorie: str | None
    kind: str | None


_Owner = aliased(Professional, name="owner")
_Responsible = aliased(Professional, name="responsible")


_BAL_QUERY = (
    select(
        Bal.address,
        Bal.address_key,
        Bal.type,
        Bal.domain,
        Bal.active,
        Bal.liste_rouge,
        _Owner.idnat,
        Structure.identifier,
        Structure.categorie,
        _Responsible.idnat,
        Bal.ins,
        Bal.service,
        Bal.description,
    )
    .outerjoin(_Owner, _Owner.id == Bal.professional_id)
    .outerjoin(Structure, Structure.id == Bal.structure_id)
    .outerjoin(_Responsible, _Responsible.id == Bal.responsible_id)
)


class NotCached(Exception):
    """The answer is not in memory, or the cache is due for its generation check: giving it
    would read the database."""


class Annuaire:
    """Cached look-ups over the annuaire tables of one database."""

    def __init__(
        self,
        engine: Engine,
        *,
        nomenclatures: Nomenclatures | None = None,
        refresh_interval: float = 1.0,
        max_entries: int = 200_000,
    ) -> None:
        self.engine = engine
        self.nomenclatures = nomenclatures or default_nomenclatures()
        self.refresh_interval = refresh_interval
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Any] = {}
        self._whitelist: frozenset[str] | None = None
        self._generation = -1
        self._next_check = 0.0
        compiled = _BAL_QUERY.where(Bal.address_key == bindparam("key")).compile(dialect=engine.dialect)
        self._bal_sql = str(compiled)
        self._positional = engine.dialect.paramstyle in ("qmark", "format", "numeric")

    # -- cache control ----------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget every cached answer (call after writing to the annuaire)."""
        with self._lock:
            self._cache = {}
            self._whitelist = None
            self._next_check = 0.0

    def check(self) -> None:
        """Compare the cached answers with the database's generation now: drop them if another
        process changed the annuaire, and put off the next check by ``refresh_interval``. The
        server calls it in the background (:mod:`mssante.annuaire_watch`), so that the answers
        the event loop gives from memory (:meth:`peek_bal`) are seldom found due; a look-up
        that finds them due checks itself, in its own thread."""
        now = monotonic()
        with self.engine.connect() as conn:
            current = generation.current(conn)
        with self._lock:
            if current != self._generation:
                self._cache = {}
                self._whitelist = None
                self._generation = current
            self._next_check = now + self.refresh_interval

    def _fresh(self) -> dict[tuple[str, str], Any]:
        """The cache, after dropping it if another process changed the annuaire."""
        if monotonic() >= self._next_check:
            self.check()
        cache = self._cache
        if len(cache) >= self.max_entries:
            cache = self._cache = {}
        return cache

    def _cached(self, kind: str, key: str, load: Any) -> Any:
        cache = self._fresh()
        try:
            return cache[(kind, key)]
        except KeyError:
            value = load(key)
            cache[(kind, key)] = value
            return value

    # -- BAL ----------------------------------------------------------------------------------
    def _info(self, row: Any) -> BalInfo:
        return BalInfo(
            address=row[0],
            key=row[1],
            type=row[2],
            domain=row[3],
            active=bool(row[4]),
            liste_rouge=bool(row[5]),
            professional_idnat=row[6],
            structure_identifier=row[7],
            structure_kind=self.nomenclatures.structure_kind(row[8]),
            responsible_idnat=row[9],
            ins=row[10],
            service=row[11],
            description=row[12],
        )

    def _load_bal(self, raw: str) -> BalInfo | None:
        try:
            key = parse(raw).key
        except AddressError:
            return None
        # Driver SQL compiled once: a cache miss costs ~60 µs instead of ~300 µs through Core.
        params = (key,) if self._positional else {"key": key}
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(self._bal_sql, params).first()
        if row is None:
            return None
        info = self._info(row)
        derive = info.type == ORG and info.structure_kind is None and info.structure_identifier
        if derive and self._officine_by_members(info.structure_identifier or ""):
            info = replace(info, structure_kind=KIND_PHARMACY)
        return info

    def _officine_by_members(self, identifier: str) -> bool:
        """Officine status derived from the extraction: the structure's PER/CAB BALs belong to
        pharmaciens (and préparateurs) only, at least one pharmacien, no biologist."""
        query = (
            select(Professional.profession_code, Professional.savoir_faire_label)
            .join(Bal, Bal.professional_id == Professional.id)
            .join(Structure, Structure.id == Bal.structure_id)
            .where(Structure.identifier == identifier, Bal.active.is_(True))
            .distinct()
        )
        with self.engine.connect() as conn:
            members = conn.execute(query).all()
        codes = {code for code, _ in members}
        biologist = any("biolog" in (label or "").lower() for _, label in members)
        return "21" in codes and codes <= OFFICINE_PROFESSIONS and not biologist

    def bal(self, address: str) -> BalInfo | None:
        """The BAL at ``address`` (any case), active or not; None if unknown or not an address."""
        result: BalInfo | None = self._cached("bal", address.strip().lower(), self._load_bal)
        return result

    def peek_bal(self, address: str) -> BalInfo | None:
        """What :meth:`bal` answers now, from memory alone; ``NotCached`` when that would read
        the database. Lets the event loop answer an RCPT without a thread hop."""
        if monotonic() >= self._next_check:
            raise NotCached(address)
        try:
            result: BalInfo | None = self._cache[("bal", address.strip().lower())]
        except KeyError:
            raise NotCached(address) from None
        return result

    def peek_generation(self) -> int:
        """The annuaire's generation the cached answers are of; ``NotCached`` when they are due
        for their check against the database."""
        if monotonic() >= self._next_check:
            raise NotCached("generation")
        return self._generation

    def is_active(self, address: str) -> bool:
        info = self.bal(address)
        return info is not None and info.active

    def is_pharmacy_org_bal(self, address: str) -> bool:
        """An active ORG BAL of a pharmacie d'officine: FINESS category 620 when a FINESS import
        gave it, otherwise derived from the national extraction (:data:`OFFICINE_PROFESSIONS`)."""
        info = self.bal(address)
        return info is not None and info.active and info.is_pharmacy_org

    def _load_bals_of_professional(self, idnat: str) -> tuple[BalInfo, ...]:
        with self.engine.connect() as conn:
            rows = conn.execute(_BAL_QUERY.where(_Owner.idnat == idnat).order_by(Bal.address_key)).all()
        return tuple(self._info(r) for r in rows)

    def bals_of_professional(self, idnat: str) -> tuple[BalInfo, ...]:
        """The BALs a professional holds (PER, CAB), active or not."""
        result: tuple[BalInfo, ...] = self._cached("bals_pro", idnat.strip(), self._load_bals_of_professional)
        return result

    def _load_bals_of_structure(self, identifier: str) -> tuple[BalInfo, ...]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                _BAL_QUERY.where(Structure.identifier == identifier).order_by(Bal.address_key)
            ).all()
        return tuple(self._info(r) for r in rows)

    def bals_of_structure(self, identifier: str) -> tuple[BalInfo, ...]:
        """The BALs attached to a structure (ORG, APP, and PER of professionals practising there)."""
        result: tuple[BalInfo, ...] = self._cached(
            "bals_struct", identifier.strip(), self._load_bals_of_structure
        )
        return result

    # -- professionals and structures ---------------------------------------------------------
    def _load_professional(self, idnat: str) -> ProfessionalInfo | None:
        with Session(self.engine) as session:
            p = session.scalars(select(Professional).where(Professional.idnat == idnat)).first()
            if p is None:
                return None
            return ProfessionalInfo(
                idnat=p.idnat,
                civilite=p.civilite,
                nom=p.nom,
                prenom=p.prenom,
                profession_code=p.profession_code,
                profession_label=p.profession_label or self.nomenclatures.profession_label(p.profession_code),
                savoir_faire_code=p.savoir_faire_code,
                savoir_faire_label=p.savoir_faire_label,
            )

    def professional(self, idnat: str) -> ProfessionalInfo | None:
        result: ProfessionalInfo | None = self._cached("pro", idnat.strip(), self._load_professional)
        return result

    def _load_structure(self, identifier: str) -> StructureInfo | None:
        with Session(self.engine) as session:
            s = session.scalars(select(Structure).where(Structure.identifier == identifier)).first()
            if s is None:
                return None
            return StructureInfo(
                identifier=s.identifier,
                id_type=s.id_type,
                raison_sociale=s.raison_sociale,
                enseigne=s.enseigne,
                categorie=s.categorie,
                kind=self.nomenclatures.structure_kind(s.categorie),
            )

    def structure(self, identifier: str) -> StructureInfo | None:
        result: StructureInfo | None = self._cached("struct", identifier.strip(), self._load_structure)
        return result

    # -- operator whitelist -------------------------------------------------------------------
    def whitelist(self) -> frozenset[str]:
        """The active domains of the liste blanche."""
        self._fresh()
        domains = self._whitelist
        if domains is None:
            with self.engine.connect() as conn:
                domains = frozenset(
                    conn.execute(
                        select(OperatorDomain.domain).where(OperatorDomain.active.is_(True))
                    ).scalars()
                )
            self._whitelist = domains
        return domains

    def peek_whitelisted(self, domain: str) -> bool:
        """What :meth:`is_domain_whitelisted` answers now, from memory alone (or ``NotCached``)."""
        domains = self._whitelist
        if domains is None or monotonic() >= self._next_check:
            raise NotCached(domain)
        try:
            return normalise_domain(domain) in domains
        except AddressError:
            return False

    def is_domain_whitelisted(self, domain: str) -> bool:
        """Whether mail may be exchanged with ``domain`` (exact domain of the liste blanche)."""
        try:
            wanted = normalise_domain(domain)
        except AddressError:
            return False
        return wanted in self.whitelist()
