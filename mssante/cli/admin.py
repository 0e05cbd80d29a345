"""``mssante admin …``: who may use the admin console (/admin/), and with which role."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mssante.cli._common import EXIT_USAGE, command_group, console, fail
from mssante.cli._common import checked_engine as _engine
from mssante.cli._common import operator_actor as _operator

app = command_group("admin", "Staff of the admin console (/admin/): roles read-only, support, administrator.")


@app.command("role")
def role(
    login: Annotated[str, typer.Argument(help="A local staff account (mssante user add --kind staff).")],
    name: Annotated[str, typer.Argument(help="read-only, support, administrator, or none to remove.")],
) -> None:
    """Give a staff account a role in the console (audited as admin.role)."""
    from mssante.db import transaction
    from mssante.web import staff

    wanted = None if name == "none" else name
    try:
        with transaction(_engine(writer=True)) as session:
            staff.set_role(session, login, wanted, actor=_operator())
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    console.print(f"{login.strip().lower()}: {name}", highlight=False)


@app.command("list")
def list_staff(as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False) -> None:
    """The staff of the console and their roles."""
    from sqlalchemy.orm import Session

    from mssante.web import staff

    with Session(_engine()) as session:
        rows = [
            {
                "login": r.login,
                "role": r.role,
                "granted_by": r.granted_by,
                "granted_at": r.granted_at.isoformat(),
            }
            for r in staff.staff(session)
        ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for row in rows:
        console.print(f"{row['login']}\t{row['role']}\t{row['granted_by']}", highlight=False)
