"""``mssante queue …``: the outbound queue (mail waiting for other operators).

``list`` and ``show`` never print message content (it may be health data): envelope,
attempts and errors only. ``drop`` needs a reason, is audited, and returns the message to its
sender with a DSN, so nothing disappears silently.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mssante.cli._common import EXIT_USAGE, Reason, command_group, console, entries, fail, settings
from mssante.cli.submission_queue import app as submission_app

app = command_group("queue", "Outbound queue (mail for other operators); `submission`: the submission queue.")
app.add_typer(submission_app)


def _age(value: datetime) -> str:
    from mssante.sqlfast import utc

    seconds = int((datetime.now(UTC) - utc(value)).total_seconds())
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _rows(entry_id: int | None = None) -> list[Any]:
    from mssante.db import make_engine
    from mssante.store.models import OutboundEntry

    cfg = settings()
    engine = make_engine(cfg.database_url)
    query = select(OutboundEntry).order_by(OutboundEntry.next_attempt_at)
    if entry_id is not None:
        query = query.where(OutboundEntry.id == entry_id)
    with Session(engine) as session:
        return list(session.scalars(query))


@app.command("list")
def list_entries(as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False) -> None:
    """Entries waiting, soonest attempt first, with depth and oldest age."""
    rows = _rows()
    docs = [
        {
            "id": r.id,
            "domain": r.domain,
            "from": r.mail_from,
            "recipients": json.loads(r.recipients),
            "attempts": r.attempts,
            "age": _age(r.created_at),
            "next_attempt_at": r.next_attempt_at.isoformat(),
            "last_error": r.last_error,
        }
        for r in rows
    ]
    if as_json:
        print(json.dumps({"depth": len(docs), "entries": docs}, ensure_ascii=False))
        return
    table = Table("id", "domain", "from", "recipients", "attempts", "age", "last error")
    for d in docs:
        table.add_row(
            str(d["id"]),
            d["domain"],
            d["from"],
            ", ".join(d["recipients"]),
            str(d["attempts"]),
            d["age"],
            (d["last_error"] or "")[:60],
        )
    console.print(table)
    console.print(f"{entries(len(docs))} waiting")


@app.command("show")
def show(
    entry_id: Annotated[int, typer.Argument(help="Entry id (see `queue list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """One entry's envelope, attempts and last error (never the content)."""
    rows = _rows(entry_id)
    if not rows:
        fail(f"no queue entry {entry_id}")
    r = rows[0]
    if as_json:
        doc = {
            "id": r.id,
            "domain": r.domain,
            "from": r.mail_from,
            "recipients": json.loads(r.recipients),
            "message_id": r.message_id,
            "created_at": r.created_at.isoformat(),
            "age": _age(r.created_at),
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at.isoformat(),
            "last_error": r.last_error,
        }
        print(json.dumps(doc))
        return
    for key, value in (
        ("id", r.id),
        ("domain", r.domain),
        ("from", r.mail_from),
        ("recipients", ", ".join(json.loads(r.recipients))),
        ("message-id", r.message_id),
        ("queued", f"{r.created_at:%Y-%m-%d %H:%M:%S} ({_age(r.created_at)} ago)"),
        ("attempts", r.attempts),
        ("next attempt", f"{r.next_attempt_at:%Y-%m-%d %H:%M:%S}"),
        ("last error", r.last_error or "-"),
    ):
        console.print(f"[bold]{key:>12}[/] {value}", highlight=False)


@app.command("retry")
def retry(
    entry_id: Annotated[int | None, typer.Argument(help="Entry id; omit with --all.")] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Every entry.")] = False,
) -> None:
    """Make entries due now (the running server's worker picks them up within its poll interval)."""
    from mssante.db import make_engine
    from mssante.store.models import OutboundEntry

    if (entry_id is None) == (not all_entries):
        fail("give an entry id or --all", EXIT_USAGE)
    cfg = settings()
    engine = make_engine(cfg.database_url, writer=True)
    stmt = update(OutboundEntry).values(
        next_attempt_at=datetime.now(UTC), claimed_until=None, claimed_by=None
    )
    if entry_id is not None:
        stmt = stmt.where(OutboundEntry.id == entry_id)
    with Session(engine) as session, session.begin():
        count = session.execute(stmt).rowcount  # type: ignore[attr-defined]
    if entry_id is not None and not count:
        fail(f"no queue entry {entry_id}")
    console.print(f"{entries(count)} due now")


@app.command("drop")
def drop(
    entry_id: Annotated[int, typer.Argument(help="Entry id (see `queue list`).")],
    reason: Reason,
) -> None:
    """Remove an entry: the sender gets a DSN saying the operator removed it, and why."""
    import asyncio

    from mssante.runtime import open_runtime
    from mssante.smtp.relay import drop_entry

    if not reason.strip():
        fail("--reason must say why", EXIT_USAGE)
    cfg = settings()
    runtime = open_runtime(cfg)
    try:
        dropped = asyncio.run(drop_entry(runtime.settings, runtime.store, entry_id, reason.strip()))
    finally:
        runtime.close()
    if not dropped:
        fail(f"no queue entry {entry_id}")
    console.print(f"entry {entry_id} dropped; its sender was notified")
