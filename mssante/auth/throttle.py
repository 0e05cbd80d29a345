"""Brute-force protection that an attacker cannot turn against the victim.

Failures are counted per (claimed login, client address) and per client address, never per
login alone: whoever guesses a doctor's published login only slows down and blocks *their own*
address, while the doctor keeps logging in from theirs. (A lock of the account itself, as
Postfix/Dovecot set-ups without ``auth_penalty`` often have, lets anyone lock a doctor out.)

Within ``window_seconds`` of the last failure:

- an attempt is answered after ``base_delay × 2^(n − free − 1)`` seconds (capped at
  ``max_delay``), ``n`` being the failures already counted for its (login, address) pair
  (``free_failures`` free) or for its address (``ip_free_failures`` free), whichever is worse —
  success or failure alike, so that an early answer never tells a correct guess apart;
- at ``lockout_failures`` the (login, address) pair, and at ``ip_lockout_failures`` the address,
  is blocked for ``lockout_seconds``: attempts from there are refused without checking them.

A success clears its pair's counter, never the address's (an attacker holding one valid
account must not be able to reset the counter of the address they guess from). Delays are
returned, not slept: the front door awaits them, the event loop stays free.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mssante.auth.models import FailureCounter
from mssante.config import BruteForceSection

PAIR, IP = "login_ip", "ip"
_MAX_KEY = 300  # FailureCounter.key is String(320)


@dataclass(frozen=True)
class Penalty:
    delay: float = 0.0
    locked_until: float | None = None


@dataclass(frozen=True)
class Crossing:
    """A counter that just crossed a threshold: what the audit trail records."""

    scope: str
    key: str
    failures: int
    delay: float
    locked_until: float | None


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


def pair_key(claimed: str, address: str) -> str:
    """The counter key of (claimed identity, client address). A claimed login is whatever the
    client sent (up to the SASL response limit): long ones are hashed to fit the column."""
    key = f"{ip_key(address)} {claimed}"
    if len(key) > _MAX_KEY:
        key = f"{ip_key(address)} sha256:{hashlib.sha256(claimed.encode()).hexdigest()}"
    return key


def delay_after(failures: int, free: int, policy: BruteForceSection) -> float:
    excess = failures - free
    if excess <= 0:
        return 0.0
    return float(min(policy.max_delay_seconds, policy.base_delay_seconds * 2 ** min(excess - 1, 32)))


def _live(row: FailureCounter, policy: BruteForceSection, now: float) -> int:
    """Failures still counting (0 once the window has passed since the last one)."""
    return 0 if now - row.last_at > policy.window_seconds else row.failures


def standing(session: Session, policy: BruteForceSection, keys: list[tuple[str, str]], now: float) -> Penalty:
    """The penalty in force for an attempt with these (scope, key) counters: a block still
    running, else the delay their failures so far earn."""
    if not keys:
        return Penalty()
    wanted = or_(*(and_(FailureCounter.scope == s, FailureCounter.key == k) for s, k in keys))
    delay, locks = 0.0, []
    for row in session.scalars(select(FailureCounter).where(wanted)):
        if row.locked_until is not None and row.locked_until > now:
            locks.append(row.locked_until)
        free = policy.free_failures if row.scope == PAIR else policy.ip_free_failures
        delay = max(delay, delay_after(_live(row, policy, now), free, policy))
    return Penalty(delay, max(locks) if locks else None)


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


def record_failure(
    session: Session, policy: BruteForceSection, scope: str, key: str, now: float
) -> Crossing | None:
    """Count one failure; returns the threshold it crossed (delays start, block), if any."""
    row = _counter(session, scope, key, now)
    if row.failures and now - row.last_at > policy.window_seconds:
        row.failures, row.first_at, row.locked_until = 0, now, None
    row.failures += 1
    row.last_at = now
    free, limit = (
        (policy.free_failures, policy.lockout_failures)
        if scope == PAIR
        else (policy.ip_free_failures, policy.ip_lockout_failures)
    )
    blocked = row.locked_until is not None and row.locked_until > now
    if row.failures >= limit and policy.lockout_seconds > 0 and not blocked:
        row.locked_until = now + policy.lockout_seconds
        return Crossing(scope, key, row.failures, delay_after(row.failures, free, policy), row.locked_until)
    if row.failures == free + 1:
        return Crossing(scope, key, row.failures, delay_after(row.failures, free, policy), None)
    return None


def record_success(session: Session, key: str) -> None:
    """A successful login clears its (login, address) counter. Run in a transaction of its own
    that loaded no counter, so the ORM has nothing to synchronise: without the option it would
    build a Python evaluator of the WHERE clause at every login."""
    session.execute(
        delete(FailureCounter).where(FailureCounter.scope == PAIR, FailureCounter.key == key),
        execution_options={"synchronize_session": False},
    )


def prune(session: Session, policy: BruteForceSection, now: float) -> int:
    """Forget counters whose window and block are over (they would only grow the table)."""
    result = session.execute(
        delete(FailureCounter).where(
            FailureCounter.last_at < now - policy.window_seconds,
            or_(FailureCounter.locked_until.is_(None), FailureCounter.locked_until < now),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
