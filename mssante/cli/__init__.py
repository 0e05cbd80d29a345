"""The ``mssante`` command line: one entry point for the operator's IT team.

Exit codes are a contract for scripts: 0 success, 1 runtime failure, 2 bad usage or
configuration. Sub-command groups of each area live in their own module and are mounted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mssante.cli import _common
from mssante.cli._common import EXIT_USAGE, command_group, console, fail, runtime_errors, settings

app = typer.Typer(
    name="mssante",
    help="Secure health-messaging server for the MSSanté space of trust.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML configuration file (default: $MSSANTE_CONFIG).",
            envvar="MSSANTE_CONFIG",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", "-d", help="Data directory (overrides server.data_dir).")
    ] = None,
) -> None:
    _common.state.config_path = config
    _common.state.data_dir = data_dir


@app.command()
def init() -> None:
    """Create the data directory, the key ring (0600) and the database schema. Safe to re-run."""
    from mssante.runtime import initialise

    cfg = settings()
    with runtime_errors(OSError):
        created = initialise(cfg)
    for line in created:
        console.print(line)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option("--demo", help="Initialise and run a demo operator.")] = False,
) -> None:
    """Run the server (all configured listeners) until interrupted."""
    from mssante.crypto import KeyRingError
    from mssante.schema import SchemaOutdated
    from mssante.server import run
    from mssante.tls import TLSConfigError

    cfg = settings()
    with runtime_errors(SchemaOutdated, KeyRingError, TLSConfigError, OSError):
        run(cfg, demo=demo)


# -- db -------------------------------------------------------------------------------------
db_app = command_group("db", "Database schema.")
app.add_typer(db_app)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations this version knows (Alembic)."""
    from mssante.db import make_engine
    from mssante.schema import current_revision, upgrade

    cfg = settings()
    engine = make_engine(cfg.database_url)
    before = current_revision(engine)
    upgrade(engine)
    after = current_revision(engine)
    console.print(f"schema: {before or 'empty'} → {after}")


# -- config ---------------------------------------------------------------------------------
config_app = command_group("config", "Configuration.")
app.add_typer(config_app)


@config_app.command("check")
def config_check(
    file: Annotated[Path | None, typer.Argument(help="File to check (default: the --config file).")] = None,
) -> None:
    """Print the effective configuration, or name the key at fault and exit 2."""
    from mssante.config import ConfigError, check_settings

    if file is not None:
        _common.state.config_path = file
    cfg = settings()
    try:
        check_settings(cfg)
    except ConfigError as exc:
        fail(f"configuration: {exc}", EXIT_USAGE)
    console.print_json(json.dumps(cfg.public_dict()))


# -- keys -----------------------------------------------------------------------------------
keys_app = command_group("keys", "Encryption key ring.")
app.add_typer(keys_app)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new key and re-wrap every data key with it, while the server keeps running."""
    from mssante.crypto import KeyRing, KeyRingError
    from mssante.db import make_engine
    from mssante.store.blobs import rewrap_all

    cfg = settings()
    with runtime_errors(KeyRingError):
        ring = KeyRing.load(cfg.keyring_path)
        kid = ring.add_key()
        count = rewrap_all(make_engine(cfg.database_url, writer=True), ring)
    console.print(f"active key is now {kid}; {count} data keys re-wrapped")


# -- audit ----------------------------------------------------------------------------------
audit_app = command_group("audit", "Audit trail.")
app.add_typer(audit_app)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain of the whole trail; name the first broken record."""
    from sqlalchemy.orm import Session

    from mssante import audit
    from mssante.db import make_engine

    cfg = settings()
    with Session(make_engine(cfg.database_url)) as session:
        result = audit.verify(session)
    if not result.ok:
        fail(
            f"audit trail broken at record {result.broken_seq}: {result.reason} "
            f"({result.checked} records verified before it)"
        )
    console.print(f"audit trail intact: {result.checked} records")


@audit_app.command("show")
def audit_show(
    bal: Annotated[str, typer.Option("--bal", help="Mailbox address whose trace to list.")],
    limit: Annotated[int, typer.Option(help="Newest records to show.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the trace of one mailbox, newest first."""
    from rich.table import Table
    from sqlalchemy.orm import Session

    from mssante import audit
    from mssante.db import make_engine

    cfg = settings()
    with Session(make_engine(cfg.database_url)) as session:
        rows = list(audit.for_bal(session, bal.strip().lower(), limit))
    if as_json:
        for r in rows:
            print(
                json.dumps(
                    {
                        "seq": r.seq,
                        "at": r.at.isoformat(),
                        "actor": r.actor,
                        "bal": r.bal,
                        "action": r.action,
                        "object": r.object,
                        "source": r.source,
                        "outcome": r.outcome,
                        "detail": r.detail,
                    },
                    ensure_ascii=False,
                )
            )
        return
    table = Table("seq", "when (UTC)", "actor", "action", "object", "from", "outcome")
    for r in rows:
        table.add_row(
            str(r.seq),
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.actor,
            r.action,
            r.object or "",
            r.source or "",
            r.outcome,
        )
    console.print(table)


# Area command groups (annuaire, users, certificates, delegation, DMP, queue) mount here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "mssante.cli.annuaire",
    "mssante.cli.certs",
    "mssante.cli.users",
    "mssante.cli.demo",
    "mssante.cli.dkim",
    "mssante.cli.dns",
    "mssante.cli.dmp",
    "mssante.cli.queue",
    "mssante.patients.cli",
    "mssante.cli.delegation",
)


def _mount_areas() -> None:
    import importlib

    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        app.add_typer(module.app)


_mount_areas()


def main() -> None:
    app()
