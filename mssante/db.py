"""Database plumbing: the one SQLAlchemy ``MetaData``, engines and the schema version gate.

SQLite is the embedded default (WAL, ``synchronous=FULL``, foreign keys on) and PostgreSQL
the scale-out choice; everything above this module is written once for both.
"""

from __future__ import annotations

import importlib
import select
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from mssante import writeturn
from mssante.datadir import create_private_db
from mssante.sqlfast import on_sqlite_driver
from mssante.writeturn import WriteTurn

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table of the product (one MetaData, one Alembic history)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Every module that declares tables, so that Alembic and the schema gate see them all.
MODEL_MODULES = (
    "mssante.audit",
    "annuaire.models",
    "mssante.store.models",
    "mssante.auth.models",
    "dmp.models",
    "mssante.patients.models",
    "delegation.models",
    "mssante.web.models",
    "mssante.nodes",
    "mssante.web.staff",
)


def load_all_models() -> MetaData:
    for name in MODEL_MODULES:
        importlib.import_module(name)
    return Base.metadata


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# psycopg prepares a statement on the server after this many executions on a connection (its
# own default); ``None`` never prepares (PgBouncer in transaction mode before 1.21).
PREPARE_THRESHOLD = 5

# The driver arguments each PostgreSQL engine was made with, for connections opened beside its
# pool (the store's asynchronous readers): same settings, whoever opens the connection.
_DRIVER_ARGS: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()


def make_engine(
    url: str,
    *,
    writer: bool = False,
    echo: bool = False,
    pool_size: int = 5,
    prepare_threshold: int | None = PREPARE_THRESHOLD,
) -> Engine:
    """Create an engine with the durability settings the product relies on.

    ``writer=True`` makes SQLite transactions start with ``BEGIN IMMEDIATE`` so that a
    writer takes the write lock up front instead of failing on lock upgrade.
    ``prepare_threshold`` is psycopg's (PostgreSQL only): executions of a statement's text on
    a connection before it is prepared on the server (parsed and planned once); negative or
    None never prepares.
    """
    if is_sqlite(url):
        db_file = _sqlite_file(make_url(url).database)
        if db_file is not None:
            create_private_db(db_file)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy (not pysqlite's legacy heuristics) decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # On the driver's cursor (see mssante.sqlfast): through exec_driver_sql the BEGIN
            # of every writer transaction cost several times the statement.
            on_sqlite_driver(conn, begin, ())

        if writer and db_file is not None:
            WriteTurn.register(engine, db_file)  # writers of several processes take turns without sleeps
        return engine
    driver_args: dict[str, Any] = {}
    if make_url(url).get_driver_name() == "psycopg":
        never = prepare_threshold is None or prepare_threshold < 0
        driver_args["prepare_threshold"] = None if never else prepare_threshold
    engine = create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, connect_args=driver_args
    )
    _DRIVER_ARGS[engine] = driver_args

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        # SQLAlchemy's pre-ping sent ``SELECT 1`` at every check-out: a round trip before each
        # writer batch and each session. A server that restarted, crashed or was failed over
        # closed the socket (or said FATAL on it); an idle connection's socket that has something
        # to read is the only one worth a ping. (A peer gone silently, with no FIN, made the
        # ping hang as long as any statement would.)
        if not _idle_socket_quiet(dbapi_conn):
            try:
                alive = engine.dialect.do_ping(dbapi_conn)
            except Exception:
                alive = False
            if not alive:
                raise DisconnectionError("the database connection was closed")

    return engine


def _sqlite_file(database: str | None) -> Path | None:
    """The file an SQLite database name designates; None in memory or for a ``file:`` URI."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def still_usable(connection: Connection) -> bool:
    """A connection kept open between uses (the store's writer) is worth using again: always
    on SQLite; on a server, when nothing waits on its idle socket (what the pool checks at
    check-out: a server that restarted, crashed or was failed over closed it)."""
    if connection.closed or connection.invalidated:
        return False
    if connection.dialect.name == "sqlite":
        return True
    return _idle_socket_quiet(connection.connection.dbapi_connection)


def _idle_socket_quiet(dbapi_conn: Any) -> bool:
    """True when a pooled driver connection is open and nothing waits on its socket."""
    try:
        if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
            return False
        readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except (OSError, ValueError, AttributeError):
        return False
    return not readable


def driver_connect_args(engine: Engine) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, keyword args) that open a driver connection as the engine's pool would: what
    the dialect derives from the URL, plus the engine's own driver arguments."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return tuple(cargs), {**cparams, **_DRIVER_ARGS.get(engine, {})}


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error (on a
    writer engine of SQLite, in its turn among the writers: :mod:`mssante.writeturn`)."""
    with writeturn.taken(engine), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
