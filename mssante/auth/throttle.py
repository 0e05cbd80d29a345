"""Brute-force protection: failure counters per claimed identity and per client IP.

After ``free_failures`` failures within ``window_seconds`` each further failure makes the
front door wait longer before answering (``base_delay × 2^(n − free)``, capped at
``max_delay``); at ``lockout_failures`` (identity) or ``ip_lockout_failures`` (IP) the key is
locked for ``lockout_seconds``: attempts are refused without even checking the credentials.
A success clears its identity's counter, never the IP's (an attacker holding one valid account
must not be able to reset the counter of the address they guess from).

The delay is returned, not slept: the front door awaits it, the event loop stays free.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mssante.auth.models import FailureCounter
from mssante.config import BruteForceSection

IDENTITY, IP = "identity", "ip"


@dataclass(frozen=True)
class Penalty:
    delay: float = 0.0
    locked_until: float | None = None


def ip_key(address: str) -> str:
    """The counter key of a client address: IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by
    its /64, since one host usually holds a whole /64 and could rotate through it."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def locked_until(session: Session, keys: list[tuple[str, str]], now: float) -> float | None:
    """The latest lock end among ``keys`` ((scope, key) pairs) still in force, or None."""
    if not keys:
        return None
    ends = [
        row.locked_until
        for row in session.scalars(select(FailureCounter).where(FailureCounter.key.in_([k for _, k in keys])))
        if (row.scope, row.key) in keys and row.locked_until is not None and row.locked_until > now
    ]
    return max(ends) if ends else None


def _counter(session: Session, scope: str, key: str, now: float) -> FailureCounter:
    """The counter row, created if missing, locked for update (race-free on both databases)."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    session.execute(
        module.insert(FailureCounter)
        .values(scope=scope, key=key, failures=0, first_at=now, last_at=now)
        .on_conflict_do_nothing(index_elements=["scope", "key"])
    )
    return session.scalars(
        select(FailureCounter)
        .where(FailureCounter.scope == scope, FailureCounter.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def record_failure(session: Session, policy: BruteForceSection, scope: str, key: str, now: float) -> Penalty:
    row = _counter(session, scope, key, now)
    if row.failures and now - row.last_at > policy.window_seconds:
        row.failures, row.first_at, row.locked_until = 0, now, None
    row.failures += 1
    row.last_at = now
    limit = policy.lockout_failures if scope == IDENTITY else policy.ip_lockout_failures
    if row.failures >= limit and policy.lockout_seconds > 0:
        row.locked_until = now + policy.lockout_seconds
    excess = row.failures - policy.free_failures
    delay = (
        0.0 if excess <= 0 else min(policy.max_delay_seconds, policy.base_delay_seconds * 2 ** (excess - 1))
    )
    return Penalty(delay, row.locked_until if row.locked_until and row.locked_until > now else None)


def record_success(session: Session, key: str) -> None:
    session.execute(delete(FailureCounter).where(FailureCounter.scope == IDENTITY, FailureCounter.key == key))


def worst(*penalties: Penalty) -> Penalty:
    locks = [p.locked_until for p in penalties if p.locked_until is not None]
    return Penalty(max((p.delay for p in penalties), default=0.0), max(locks) if locks else None)
