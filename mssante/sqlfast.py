"""Hot-path SQL without the expression layer.

Building and compiling a SQLAlchemy Core statement costs about 90 µs; the same statement as
driver SQL about 7 µs (measured: see the note of the Foundation issue). The delivery path
runs a dozen statements per message inside the single writer, so those few statements are
written here once, with named parameters, and adapted to the driver's parameter style.
Everything else keeps using the ORM/Core.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import CursorResult
from sqlalchemy.orm import Session

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@lru_cache(maxsize=256)
def adapt(sql: str, dialect: str) -> str:
    """``:name`` parameters as the driver wants them (pyformat for psycopg)."""
    if dialect == "postgresql":
        return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
    return sql


def timestamp(value: datetime, dialect: str) -> Any:
    """A timestamp as the column stores it: SQLAlchemy's naive UTC text on SQLite."""
    if dialect == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def utc(value: datetime) -> datetime:
    """A timestamp as read back, aware and in UTC: SQLite hands back naive UTC text."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def run(
    session: Session, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None
) -> CursorResult[*tuple[Any, ...]]:
    """Execute driver SQL on the session's connection (inside its transaction)."""
    conn = session.connection()
    return conn.exec_driver_sql(adapt(sql, conn.dialect.name), params if params is not None else {})
