"""Schema migrations (Alembic) and the gate that keeps a server off an outdated schema."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


class SchemaOutdated(Exception):
    """The database schema is older (or newer) than this code."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "mssante:migrations")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest this code knows).

    The audit key bound to the database, if any, is handed to the migrations: revision 0008
    re-chains an existing audit trail under it.
    """
    from mssante import audit

    cfg = alembic_config()
    cfg.attributes["audit_key"] = audit.bound_key(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def require_current(engine: Engine) -> None:
    """Refuse to run against a schema that is not exactly the code's."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        if current is None:
            raise SchemaOutdated("the database has no schema yet: run `mssante init` or `mssante db upgrade`")
        raise SchemaOutdated(
            f"the database schema is at revision {current} but this version of mssante needs {head}: "
            "run `mssante db upgrade`"
        )
