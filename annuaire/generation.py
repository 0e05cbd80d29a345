"""The annuaire's change counter: every write bumps it, every cache compares against it.

An import run by the CLI happens in another process than the server; the server's look-up
cache cannot be told directly, so it re-reads this one row now and then and drops its
entries when the number moved.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select, update

from annuaire.models import AnnuaireState


def bump(conn: Connection) -> None:
    """Record a change, inside the caller's transaction."""
    now = datetime.now(UTC)
    done = conn.execute(
        update(AnnuaireState)
        .where(AnnuaireState.id == 1)
        .values(generation=AnnuaireState.generation + 1, changed_at=now)
    )
    if done.rowcount == 0:
        conn.execute(insert(AnnuaireState).values(id=1, generation=1, changed_at=now))


def current(conn: Connection) -> int:
    value = conn.execute(select(AnnuaireState.generation).where(AnnuaireState.id == 1)).scalar()
    return int(value or 0)
