"""``mssante backup DEST``, ``mssante backup verify SRC`` and ``mssante restore SRC``.

The passphrase sealing the key ring export comes from ``--passphrase-file`` or
``$MSSANTE_BACKUP_PASSPHRASE``, never from the command line (visible in ``ps`` and shell
history).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from mssante.cli._common import EXIT_USAGE, console, fail, operator_actor, runtime_errors, settings


class _CreateByDefault(TyperGroup):
    """``mssante backup DEST`` means ``mssante backup create DEST``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_CreateByDefault,
    name="backup",
    help="Online backup (DEST), its verification (verify SRC); see also `mssante restore`.",
    no_args_is_help=True,
    add_completion=False,
)

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File whose first line is the passphrase of the key ring export "
        "(default: $MSSANTE_BACKUP_PASSPHRASE).",
    ),
]
KeyringFrom = Annotated[
    Path | None, typer.Option("--keyring", help="The key ring export, if it was kept apart from the backup.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _passphrase(file: Path | None, creating: bool) -> Any:
    """The passphrase, or exit 2 (bad usage) when none is given or it is too short."""
    from mssante.keyexport import ExportError, read_passphrase

    try:
        return read_passphrase(file, creating=creating)
    except ExportError as exc:
        fail(str(exc), EXIT_USAGE)


def _errors() -> Any:
    from mssante.backup import BackupError
    from mssante.crypto import KeyRingError
    from mssante.keyexport import ExportError

    return runtime_errors(BackupError, ExportError, KeyRingError, OSError)


@app.command("create")
def create(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) directory for the backup.")],
    passphrase_file: PassphraseFile = None,
    keyring_to: Annotated[
        Path | None, typer.Option("--keyring-to", help="Write the sealed key ring here instead of DEST.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy the database while the server runs; export the key ring sealed under a passphrase."""
    from mssante import backup

    cfg = settings()
    with _errors():
        passphrase = _passphrase(passphrase_file, creating=True)
        report = backup.create(cfg, dest, passphrase, operator_actor(), keyring_to)
    if as_json:
        print(json.dumps(asdict(report)))
        return
    console.print(
        f"backup of the {report.database} database ({report.database_bytes} bytes, schema {report.schema}, "
        f"audit trail at record {report.audit_seq}) written to {report.dest} in {report.seconds:.1f} s; "
        f"key ring sealed in {report.keyring_file}: keep it apart from the backup",
        highlight=False,
    )


@app.command("verify")
def verify(
    src: Annotated[Path, typer.Argument(help="A backup directory.")],
    passphrase_file: PassphraseFile = None,
    keyring: KeyringFrom = None,
    sample: Annotated[int, typer.Option(help="Messages to decrypt in full, chosen at random.")] = 20,
    scratch_url: Annotated[
        str | None,
        typer.Option(
            "--scratch-url",
            help="PostgreSQL backups: an empty database to restore into (default: a temporary one).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Open a backup: files, key ring export, audit chain, and a sample of messages decrypted."""
    from mssante import backup

    cfg = settings()
    with _errors():
        passphrase = _passphrase(passphrase_file, creating=False)
        report = backup.verify(cfg, src, passphrase, keyring, sample, scratch_url)
    if as_json:
        print(json.dumps(report.as_json()))
    else:
        for problem in report.failures:
            console.print(f"[bold red]✗[/] {problem}", highlight=False)
        console.print(
            f"{report.database} backup, schema {report.schema}: audit trail {report.audit_records} records "
            f"(checkpoint {report.checkpoint_seq}), {report.messages} messages, "
            f"{report.opened}/{report.sampled} sampled messages decrypted",
            highlight=False,
        )
    if not report.ok:
        raise typer.Exit(1)


def restore(
    src: Annotated[Path, typer.Argument(help="A backup directory.")],
    passphrase_file: PassphraseFile = None,
    keyring: KeyringFrom = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup into an empty installation (data directory, key ring, database)."""
    from mssante import backup

    cfg = settings()
    with _errors():
        passphrase = _passphrase(passphrase_file, creating=False)
        report = backup.restore(cfg, src, passphrase, operator_actor(), keyring)
    if as_json:
        print(json.dumps(asdict(report)))
        return
    console.print(
        f"restored the {report.database} database into {report.data_dir}, key ring at {report.keyring}; "
        f"audit trail intact ({report.audit_records} records)",
        highlight=False,
    )
    if not report.schema_current:
        console.print(f"schema {report.schema} is older than this version: run `mssante db upgrade`")
    else:
        console.print("run `mssante backup verify` on the next backup, and start the server")


def mount(root: typer.Typer) -> None:
    """``restore`` sits at the top level beside ``backup``."""
    root.command("restore")(restore)
