"""Patient BALs are opened only for a qualified INS.

The register of patient identities is the DMP's (``dmp_patients``: INS, traits, identity
status, kept by ``mssante dmp patient add``). A BAL ``<INS>@<patient domain>`` is opened here
only when that register holds the INS with a valid key, the status ``QUAL`` (qualified, per the
Référentiel national d'identitovigilance) and its traits (birth name, first given name, given
names, birth date, sex). A provisional or merely validated identity gets no mailbox: a
professional must be sure who reads what they send.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from annuaire.addresses import PATIENT_DOMAIN
from annuaire.models import Bal
from dmp.models import Patient
from dmp.rules import QUALIFIED
from dmp.service import Traits
from mssante import audit
from mssante.audit import AuditEvent
from mssante.auth.identity import InvalidIdentity, check_ins


class NotQualified(ValueError):
    """The INS is not a qualified identity: no patient BAL."""


def require_qualified(session: Session, ins: str) -> str:
    """The INS matricule, when the register holds it qualified with its traits; else NotQualified."""
    try:
        ins = check_ins(ins)
    except InvalidIdentity as exc:
        raise NotQualified(str(exc)) from None
    row = session.scalars(select(Patient).where(Patient.ins == ins)).first()
    if row is None:
        raise NotQualified(
            f"INS {ins} is not in the register of patient identities: register it, qualified, first "
            f"(mssante dmp patient add {ins} … --status QUAL)"
        )
    if row.identity_status != QUALIFIED:
        raise NotQualified(
            f"INS {ins} has identity status {row.identity_status}: "
            f"a patient BAL is opened only for a qualified INS ({QUALIFIED})"
        )
    traits = Traits(
        row.birth_name, row.first_given_name, row.given_names, row.birth_date, row.sex, row.birthplace
    )
    missing = traits.missing()
    if missing:
        raise NotQualified(f"INS {ins}: incomplete identity traits ({', '.join(missing)})")
    return ins


def open_patient_bal(
    session: Session, *, ins: str, actor: str, domain: str = PATIENT_DOMAIN
) -> annuaire_service.Saved[Bal]:
    """Create (or re-activate) the BAL of a patient whose INS is qualified, in the caller's
    transaction; traced with the identity status it was opened on."""
    ins = require_qualified(session, ins)
    saved = annuaire_service.add_patient_bal(session, ins=ins, actor=actor, domain=domain)
    audit.append(
        session,
        AuditEvent(
            actor=actor,
            action="patient.bal.open",
            bal=saved.row.address_key,
            detail={"identity_status": QUALIFIED, "status": saved.status},
        ),
    )
    return saved
