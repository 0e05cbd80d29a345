"""Tables of the annuaire: professionals, structures, mailboxes (BAL) and the operator whitelist.

Addresses: ``bals.address`` keeps the address as published (local part untouched, domain
lower-cased, as RFC 5321 allows a case-sensitive local part) and ``bals.address_key`` holds
the fully lower-cased form, unique, on which every comparison is made. No two MSSanté
mailboxes differ only by the case of their local part in practice, and a mail client that
changes the case must still reach the same BAL.

BALs are never deleted by an import: a vanished BAL is deactivated (``active = false``) so
that its messages, trace and delegations keep their referent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

BigId = BigInteger().with_variant(Integer, "sqlite")

# Where a row comes from: the national extraction, or the operator's own account files / CLI.
SOURCE_ANS = "ans"
SOURCE_LOCAL = "local"


class Professional(Base):
    """A health professional (or operator staff) identified by an IdNat_PS."""

    __tablename__ = "annuaire_professionals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idnat: Mapped[str] = mapped_column(String(32), unique=True)
    id_type: Mapped[str] = mapped_column(String(4))
    identifier: Mapped[str] = mapped_column(String(32))
    civilite: Mapped[str | None] = mapped_column(String(32))
    nom: Mapped[str | None] = mapped_column(String(200), index=True)
    prenom: Mapped[str | None] = mapped_column(String(200))
    categorie_code: Mapped[str | None] = mapped_column(String(8))
    profession_code: Mapped[str | None] = mapped_column(String(8), index=True)
    profession_label: Mapped[str | None] = mapped_column(String(200))
    savoir_faire_code: Mapped[str | None] = mapped_column(String(32))
    savoir_faire_label: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Structure(Base):
    """A structure (établissement, cabinet, officine) identified by FINESS, SIRET, SIREN, …"""

    __tablename__ = "annuaire_structures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    identifier: Mapped[str] = mapped_column(String(64), unique=True)
    id_type: Mapped[str | None] = mapped_column(String(16))
    raison_sociale: Mapped[str | None] = mapped_column(String(300), index=True)
    enseigne: Mapped[str | None] = mapped_column(String(300))
    # FINESS establishment category (e.g. 620 = pharmacie d'officine); the kind is derived from it
    # through config/nomenclatures/finess_categories.csv.
    categorie: Mapped[str | None] = mapped_column(String(8))
    complement_localisation: Mapped[str | None] = mapped_column(String(200))
    complement_distribution: Mapped[str | None] = mapped_column(String(200))
    numero_voie: Mapped[str | None] = mapped_column(String(32))
    complement_numero_voie: Mapped[str | None] = mapped_column(String(32))
    type_voie: Mapped[str | None] = mapped_column(String(64))
    libelle_voie: Mapped[str | None] = mapped_column(String(200))
    lieu_dit: Mapped[str | None] = mapped_column(String(200))
    ligne_acheminement: Mapped[str | None] = mapped_column(String(200))
    code_postal: Mapped[str | None] = mapped_column(String(16))
    departement: Mapped[str | None] = mapped_column(String(64))
    pays: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Bal(Base):
    """A mailbox (boîte aux lettres) of the MSSanté space."""

    __tablename__ = "annuaire_bals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320))
    address_key: Mapped[str] = mapped_column(String(320), unique=True)
    domain: Mapped[str] = mapped_column(String(255), index=True)
    type: Mapped[str] = mapped_column(String(8))
    professional_id: Mapped[int | None] = mapped_column(ForeignKey("annuaire_professionals.id"), index=True)
    structure_id: Mapped[int | None] = mapped_column(ForeignKey("annuaire_structures.id"), index=True)
    # The professional answerable for an ORG or APP BAL (who grants membership and delegations).
    responsible_id: Mapped[int | None] = mapped_column(ForeignKey("annuaire_professionals.id"), index=True)
    # Patient BALs: the INS matricule (15 digits, key included) the address is built on.
    ins: Mapped[str | None] = mapped_column(String(15), index=True)
    service: Mapped[str | None] = mapped_column(String(300))
    description: Mapped[str | None] = mapped_column(Text)
    dematerialisation: Mapped[bool | None] = mapped_column(Boolean)
    liste_rouge: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deactivated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OperatorDomain(Base):
    """A domain of the liste blanche: an operator of the space of trust we may exchange with."""

    __tablename__ = "annuaire_operator_domains"

    domain: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(300))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AnnuaireState(Base):
    """One row: a generation number bumped by every change, so that caches of other processes
    (the server, while the CLI imports) notice the change and drop what they hold."""

    __tablename__ = "annuaire_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DirectorySource(Base):
    """A list this server fetches by itself on a schedule (the national extraction, the liste
    blanche): where from, what the source last said (validators for conditional requests),
    and when it last succeeded — what an operator watches to know the lists are current."""

    __tablename__ = "annuaire_sources"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    etag: Mapped[str | None] = mapped_column(String(300))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    attempted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    succeeded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    entries: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
