"""``mssante audit …``: verify the keyed chain, take checkpoints, show one mailbox's trace.

A checkpoint is the proof an operator keeps *outside* the server (another host, a ticket, a
write-once bucket): ``verify --checkpoint`` then shows that nothing up to it was removed or
rewritten, even by someone who could write the database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from mssante.cli._common import (
    EXIT_USAGE,
    command_group,
    console,
    fail,
    operator_actor,
    runtime_errors,
    settings,
)

app = command_group("audit", "Audit trail.")


@app.command("verify")
def verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="A checkpoint file: prove nothing up to it was removed or rewritten."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Check the keyed chain of the whole trail; name the first broken record."""
    from sqlalchemy.orm import Session

    from mssante import audit
    from mssante.cli._common import checked_engine
    from mssante.crypto import KeyRingError

    with runtime_errors(KeyRingError, audit.CheckpointError, OSError):
        engine = checked_engine()
        key = audit.key_for_engine(engine)
        against = audit.Checkpoint.parse(checkpoint.read_text(), key) if checkpoint is not None else None
        with Session(engine) as session:
            result = audit.verify(session, key, against)
    if as_json:
        doc: dict[str, Any] = {
            "ok": result.ok,
            "records": result.checked,
            "broken_seq": result.broken_seq,
            "reason": result.reason,
            "key_id": key.key_id,
        }
        if against is not None:
            doc["checkpoint"] = {"seq": against.seq, "taken_at": against.taken_at}
        print(json.dumps(doc))
        if not result.ok:
            raise typer.Exit(1)
        return
    if not result.ok:
        fail(
            f"audit trail broken at record {result.broken_seq}: {result.reason} "
            f"({result.checked} records verified before it)"
        )
    suffix = f"; checkpoint {against.seq} of {against.taken_at} holds" if against is not None else ""
    console.print(f"audit trail intact: {result.checked} records{suffix}", highlight=False)


@app.command("checkpoint")
def take_checkpoint(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file (default: stdout).")
    ] = None,
) -> None:
    """Write the head's index and MAC, MACed, for the operator to keep elsewhere."""
    from mssante import audit
    from mssante.cli._common import checked_engine
    from mssante.crypto import KeyRingError
    from mssante.db import transaction

    with runtime_errors(KeyRingError, OSError):
        engine = checked_engine(writer=True)
        with transaction(engine) as session:
            point = audit.checkpoint(session, operator_actor())
            text = json.dumps(point.document(audit.key_for(session)), indent=2) + "\n"
        if output is None:
            print(text, end="")
        else:
            output.write_text(text)
            console.print(f"checkpoint of record {point.seq} written to {output}", highlight=False)


@app.command("show")
def show(
    bal: Annotated[str, typer.Option("--bal", help="Mailbox address whose trace to list.")],
    limit: Annotated[int, typer.Option(help="Newest records to show.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List the trace of one mailbox, newest first."""
    from rich.table import Table
    from sqlalchemy.orm import Session

    from mssante import audit
    from mssante.db import make_engine

    if limit < 1:
        fail("--limit must be at least 1", EXIT_USAGE)
    cfg = settings()
    with Session(make_engine(cfg.database_url)) as session:
        rows = list(audit.for_bal(session, bal.strip().lower(), limit))
    if as_json:
        for r in rows:
            print(
                json.dumps(
                    {"seq": r.seq, "at": r.at.isoformat(), **audit.record_fields(r)}, ensure_ascii=False
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
