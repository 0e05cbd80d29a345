"""Shared plumbing of the command line: loading settings, exit codes, output."""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy import Engine

from mssante.config import ConfigError, Settings, load_settings

# Exit codes are a public contract: 0 success, 1 runtime failure, 2 bad usage or configuration.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class CLIState:
    """Options given before the sub-command (``mssante --config FILE …``)."""

    config_path: Path | None = None
    data_dir: Path | None = None


state = CLIState()


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings(**overrides: Any) -> Settings:
    """Effective settings for this invocation, or exit 2 with the key at fault."""
    if state.data_dir is not None:
        overrides.setdefault("server", {})["data_dir"] = str(state.data_dir)
    try:
        return load_settings(state.config_path, **overrides)
    except ConfigError as exc:
        fail(f"configuration: {exc}", EXIT_USAGE)


@contextmanager
def runtime_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turn the expected runtime errors into a clean message and exit code 1."""
    try:
        yield
    except kinds as exc:
        fail(str(exc))


def operator_actor() -> str:
    """The audit actor of a command run by the operator: ``cli:<system user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def checked_engine(writer: bool = False) -> Engine:
    """The configured database, refused (exit 1) unless its schema is the code's."""
    from mssante.db import make_engine
    from mssante.schema import SchemaOutdated, require_current

    engine = make_engine(settings().database_url, writer=writer)
    try:
        require_current(engine)
    except SchemaOutdated as exc:
        fail(str(exc))
    return engine


# The operator's reason for removing a queued message: recorded in the audit trail and the DSN.
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit trail and the DSN).")]


def entries(count: int) -> str:
    """'1 entry', '3 entries' (queue commands' summaries)."""
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def command_group(name: str, help_text: str) -> typer.Typer:
    return typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False)


Handler = Callable[..., Any]
