"""The ``mssante`` command line: one entry point for the operator's IT team.

Exit codes are a contract for scripts: 0 success, 1 runtime failure, 2 bad usage or
configuration. Sub-command groups of each area live in their own module and are mounted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from mssante.cli import _common
from mssante.cli._common import EXIT_USAGE, command_group, console, fail, runtime_errors, settings

# Options of the whole program that may also be typed after the sub-command.
_GLOBAL_WITH_VALUE = ("--config", "-c", "--data-dir", "-d")


def hoist_global_options(args: list[str]) -> list[str]:
    """Move ``--config``/``--data-dir`` (and their short forms) to the front, in order, so that
    ``mssante serve --demo --data-dir D`` means ``mssante --data-dir D serve --demo``.

    Nothing after ``--`` is touched; no sub-command defines ``-c``/``-d`` of its own.
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in _GLOBAL_WITH_VALUE and "=" in arg and name.startswith("--"):
            front.append(arg)
        elif arg in _GLOBAL_WITH_VALUE and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


class _Root(TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))


app = typer.Typer(
    cls=_Root,
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
            help="TOML configuration file (default: $MSSANTE_CONFIG); also accepted after the command.",
            envvar="MSSANTE_CONFIG",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="Data directory (overrides server.data_dir); also accepted after the command.",
        ),
    ] = None,
) -> None:
    _common.state.config_path = config
    _common.state.data_dir = data_dir


JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


@app.command()
def init(as_json: JsonOption = False) -> None:
    """Create the data directory, the key ring (0600) and the database schema. Safe to re-run."""
    from mssante.runtime import initialise

    cfg = settings()
    with runtime_errors(OSError):
        created = initialise(cfg)
    if as_json:
        print(json.dumps({"data_dir": str(cfg.data_dir.resolve()), "done": created}))
        return
    for line in created:
        console.print(line)


@app.command()
def serve(
    demo: Annotated[bool, typer.Option("--demo", help="Initialise and run a demo operator.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=1, max=64, help="Processes sharing the SMTP and IMAP ports (server.workers)."
        ),
    ] = None,
) -> None:
    """Run the server (all configured listeners) until interrupted."""
    from mssante import memory
    from mssante.crypto import KeyRingError
    from mssante.schema import SchemaOutdated
    from mssante.server import run
    from mssante.tls import TLSConfigError

    memory.tune()
    cfg = settings()
    if workers is not None:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"workers": workers})})
    with runtime_errors(SchemaOutdated, KeyRingError, TLSConfigError, OSError):
        run(cfg, demo=demo)


# -- db -------------------------------------------------------------------------------------
db_app = command_group("db", "Database schema.")
app.add_typer(db_app)


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOption = False) -> None:
    """Apply the schema migrations this version knows (Alembic)."""
    from mssante.db import make_engine
    from mssante.schema import current_revision, upgrade

    cfg = settings()
    engine = make_engine(cfg.database_url)
    before = current_revision(engine)
    with runtime_errors(RuntimeError):  # a migration that cannot run (e.g. 0008 without the key ring)
        upgrade(engine)
    after = current_revision(engine)
    if as_json:
        print(json.dumps({"before": before, "after": after}))
        return
    console.print(f"schema: {before or 'empty'} → {after}")


@db_app.command("backfill")
def db_backfill(as_json: JsonOption = False) -> None:
    """Seal the SEARCH and SORT forms older messages lack (once, after upgrading).

    Messages stored by an earlier version are completed in small transactions while the server
    keeps running; stopped, it resumes where it was."""
    from mssante.crypto import KeyRing, KeyRingError
    from mssante.db import make_engine
    from mssante.store.backfill import backfill

    cfg = settings()
    with runtime_errors(KeyRingError):
        done = backfill(make_engine(cfg.database_url, writer=True), KeyRing.load(cfg.keyring_path))
    if as_json:
        print(json.dumps(done.as_json()))
        return
    console.print(
        f"{done.messages} stored messages completed: {done.search} SEARCH forms and "
        f"{done.sortkeys} SORT forms sealed"
    )


# -- config ---------------------------------------------------------------------------------
config_app = command_group("config", "Configuration.")
app.add_typer(config_app)


@config_app.command("check")
def config_check(
    file: Annotated[Path | None, typer.Argument(help="File to check (default: the --config file).")] = None,
    as_json: JsonOption = False,
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
    if as_json:  # plain JSON, no colours or wrapping
        print(json.dumps(cfg.public_dict()))
        return
    console.print_json(json.dumps(cfg.public_dict()))


# -- keys -----------------------------------------------------------------------------------
keys_app = command_group("keys", "Encryption key ring.")
app.add_typer(keys_app)


@keys_app.command("show")
def keys_show(as_json: JsonOption = False) -> None:
    """The key ring's file, key ids, active key and audit key id (never a key)."""
    from mssante.audit import AuditKey
    from mssante.crypto import KeyRing, KeyRingError

    cfg = settings()
    with runtime_errors(KeyRingError):
        ring = KeyRing.load(cfg.keyring_path)
    doc = {
        "path": str(cfg.keyring_path.resolve()),
        "active": ring.active,
        "keys": ring.key_ids(),
        "audit_key_id": AuditKey.from_ring(ring).key_id,
    }
    if as_json:
        print(json.dumps(doc))
        return
    for name, value in doc.items():
        console.print(f"[bold]{name:>12}[/] {', '.join(value) if isinstance(value, list) else value}")


@keys_app.command("rotate")
def keys_rotate(as_json: JsonOption = False) -> None:
    """Add a new key and re-wrap every data key with it, while the server keeps running."""
    from mssante.crypto import KeyRing, KeyRingError
    from mssante.db import make_engine
    from mssante.store.blobs import rewrap_all

    cfg = settings()
    with runtime_errors(KeyRingError):
        ring = KeyRing.load(cfg.keyring_path)
        kid = ring.add_key()
        count = rewrap_all(make_engine(cfg.database_url, writer=True), ring)
    if as_json:
        print(json.dumps({"active": kid, "rewrapped": count}))
        return
    console.print(f"active key is now {kid}; {count} data keys re-wrapped")


# Area command groups (annuaire, users, certificates, delegation, DMP, queue) mount here.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "mssante.cli.audit",
    "mssante.cli.backup",
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
    "mssante.cli.admin",
)


def _mount_areas() -> None:
    import importlib

    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        app.add_typer(module.app)
        if hasattr(module, "mount"):  # top-level commands of an area (``restore``)
            module.mount(app)


_mount_areas()


def main() -> None:
    import os

    from mssante.datadir import PRIVATE_UMASK

    # Everything this program writes (database, WAL, certificates, exports) is for its owner.
    os.umask(PRIVATE_UMASK)
    app()
