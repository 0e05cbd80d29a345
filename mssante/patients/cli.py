"""``mssante patients …``: open a patient BAL (qualified INS only), list a patient's conversations."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante.cli._common import checked_engine as _engine
from mssante.cli._common import command_group, console, fail, settings
from mssante.cli._common import operator_actor as _actor

app = command_group("patients", "Patient mailboxes (MSSanté citoyenne): BALs and conversations.")


@app.command("open-bal")
def open_bal(
    ins: Annotated[str, typer.Argument(help="INS matricule (15 characters, key included).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Open the BAL <INS>@<patient domain> of a patient whose INS is qualified in the register."""
    from annuaire.service import AnnuaireError
    from mssante.db import transaction
    from mssante.patients.identity import NotQualified, open_patient_bal

    domain = settings().server.patient_domain
    engine = _engine(writer=True)
    try:
        with transaction(engine) as session:
            saved = open_patient_bal(session, ins=ins, actor=_actor(), domain=domain)
            address, status = saved.row.address, saved.status
    except (NotQualified, AnnuaireError) as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps({"bal": address, "status": status}, ensure_ascii=False))
    else:
        console.print(f"{address}: {status}", highlight=False, soft_wrap=True)


@app.command("conversations")
def conversations(
    bal: Annotated[str, typer.Argument(help="The patient's BAL.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """A patient's conversations: with whom, opened when and by whom, closed or open."""
    from mssante.patients.models import Conversation

    engine = _engine()
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(Conversation)
                .where(Conversation.patient_bal == bal.strip().lower())
                .order_by(Conversation.id)
            ).all()
    finally:
        engine.dispose()
    for row in rows:
        item = {
            "id": row.id,
            "with": row.professional_bal,
            "opened_by": row.opened_by,
            "opened_at": row.opened_at.isoformat(timespec="seconds"),
            "closed_at": row.closed_at.isoformat(timespec="seconds") if row.closed_at else None,
        }
        if as_json:
            print(json.dumps(item, ensure_ascii=False))
        else:
            state = f"closed {item['closed_at']}" if row.closed_at else "open"
            console.print(
                f"#{row.id} {row.professional_bal} (opened by {row.opened_by} {item['opened_at']}, {state})",
                highlight=False,
                soft_wrap=True,
            )
