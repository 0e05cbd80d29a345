"""Operator staff of the admin console and their roles: who may look, who may act.

A staff member is a local account of kind ``staff`` (``mssante user add --kind staff``) with a
second factor (``mssante user totp``), given a role by ``mssante admin role``. Roles are
ordered: ``read-only`` sees everything the console shows, ``support`` also handles the daily
work (delegations, queue retries, chain verification), ``administrator`` also changes what
exists (BALs created, disabled or enabled, queue entries dropped). Every decision is :func:`may`; every
grant of a role and every console action is in the audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from mssante import audit
from mssante.auth import accounts
from mssante.db import Base

ROLES = ("read-only", "support", "administrator")
# The least role each console action needs (deny by default: an unknown action needs more
# than any role).
ACTIONS = {
    "view": "read-only",
    "audit.verify": "support",
    "delegation.grant": "support",
    "delegation.revoke": "support",
    "queue.retry": "support",
    "queue.drop": "administrator",
    "bal.create": "administrator",
    "bal.disable": "administrator",
    "bal.enable": "administrator",
}


class StaffRole(Base):
    __tablename__ = "admin_staff"

    login: Mapped[str] = mapped_column(String(320), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    granted_by: Mapped[str] = mapped_column(String(320))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def may(role: str | None, action: str) -> bool:
    needed = ACTIONS.get(action)
    if role not in ROLES or needed is None:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def role_of(session: Session, login: str | None) -> str | None:
    if not login:
        return None
    row = session.get(StaffRole, accounts.normalise_login(login))
    return row.role if row is not None else None


def set_role(session: Session, login: str, role: str | None, *, actor: str) -> None:
    """Give ``login`` a role (``None`` takes it away), audited as ``admin.role``."""
    login = accounts.normalise_login(login)
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    account = accounts.get(session, login)
    if role is not None and (account is None or account.kind != "staff"):
        raise ValueError(f"{login} is not a local staff account (mssante user add --kind staff)")
    row = session.get(StaffRole, login)
    if role is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(StaffRole(login=login, role=role, granted_by=actor, granted_at=datetime.now(UTC)))
    else:
        row.role, row.granted_by, row.granted_at = role, actor, datetime.now(UTC)
    audit.append(
        session,
        audit.AuditEvent(actor=actor, action="admin.role", object=f"account:{login}", detail={"role": role}),
    )


def staff(session: Session) -> list[StaffRole]:
    return list(session.scalars(select(StaffRole).order_by(StaffRole.login)))
