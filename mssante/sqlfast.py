"""Hot-path SQL without the expression layer.

Building and compiling a SQLAlchemy Core statement costs about 90 µs; the same statement as
driver SQL about 7 µs (measured: see the note of the Foundation issue). The delivery path
runs a dozen statements per message inside the single writer, so those few statements are
written here once, with named parameters, and adapted to the driver's parameter style.
Everything else keeps using the ORM/Core.

On SQLite even ``exec_driver_sql`` cost three to four times the statement itself (its
execution context and result objects: ~30 µs against ~8 µs for a small insert), a quarter
of a lone delivery's time in the writer; there :func:`run` (and :func:`insert_many`, and the
engines' ``BEGIN``: :func:`on_sqlite_driver`) hands the statement to the
driver's cursor on the session's connection, inside the same transaction, and gives back the
few things the hot path reads of a result (:class:`Rows`). Driver errors are raised as
SQLAlchemy's, as through the engine.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import Session

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@lru_cache(maxsize=256)
def adapt(sql: str, dialect: str) -> str:
    """``:name`` parameters as the driver wants them (pyformat for psycopg)."""
    if dialect == "postgresql":
        return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
    return sql


@lru_cache(maxsize=256)
def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` parameters as PostgreSQL's own ``$1, $2...`` (what libpq sends), and the names
    in their order: a name used twice is one parameter."""
    names: list[str] = []

    def number(found: re.Match[str]) -> str:
        if found[1] not in names:
            names.append(found[1])
        return f"${names.index(found[1]) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


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


class Rows:
    """The rows a hot-path statement returned, all read at once (they are few), and what its
    callers read of them."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Sequence[Any]]) -> None:
        self._rows = rows

    def all(self) -> Sequence[Sequence[Any]]:
        return self._rows

    def first(self) -> Sequence[Any] | None:
        return self._rows[0] if self._rows else None

    def one(self) -> Sequence[Any]:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


def run(session: Session, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Rows:
    """Execute driver SQL on the session's connection (inside its transaction)."""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        result = conn.exec_driver_sql(adapt(sql, conn.dialect.name), params if params is not None else {})
        return Rows(result.all() if result.returns_rows else ())
    return on_sqlite_driver(conn, sql, params if params is not None else {})


def on_sqlite_driver(conn: Connection, sql: str, params: Any) -> Rows:
    """One SQLite statement on the driver's cursor of ``conn`` (once per row when ``params``
    is a list), its errors raised as SQLAlchemy's."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if isinstance(params, list):
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return Rows(cursor.fetchall())
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


def insert_many(session: Session, table: str, columns: dict[str, str], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows (tuples in the order of ``columns``, which maps each column to its PostgreSQL
    type) in the session's transaction.

    PostgreSQL gets a binary ``COPY``: the rows stream to the server in its own format, with
    no statement to parse or plan and no per-row execution (measured for a group of 50
    deliveries: message rows 0.8 ms against 1.9 ms with executemany and 1.4 ms with one
    ``unnest`` of arrays; 10 KiB chunks 4.4 ms against 6.2 ms, and 35 ms with ``unnest``).
    SQLite runs one prepared insert per row (executemany: in-process, no round trip to save).
    """
    if not rows:
        return
    conn = session.connection()
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        driver: Any = conn.connection.driver_connection
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(list(columns.values()))
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    on_sqlite_driver(conn, f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
