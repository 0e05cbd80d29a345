"""``mssante queue submission …``: the node's submission queue (``smtp.acknowledge = "queued"``).

Messages acknowledged with ``250`` and not yet in their mailboxes wait here for an instant;
an entry that does not open (altered, sealed under a key the ring no longer holds) is set
aside by the delivery process, never dropped, and ``/health`` counts it. These commands are
what an operator does about it: see the entries (envelope only, never the content: it is
health data), put set-aside entries back once the key ring is restored, or drop one with a
reason, audited, its sender told by a DSN when the entry opens.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from mssante.cli._common import EXIT_USAGE, Reason, command_group, console, entries, fail, settings

app = command_group("submission", "Submission queue (smtp.acknowledge = queued): waiting, set aside.")


def _queue() -> Any:
    """The node's queue opened with the key ring, or None when it was never written."""
    from mssante.crypto import KeyRing
    from mssante.smtp.queue import SubmissionQueue

    if _queue_missing():
        return None
    cfg = settings()
    return SubmissionQueue(cfg.data_dir, KeyRing.load(cfg.keyring_path))


def _describe(queue: Any, entry_id: str, aside: bool) -> dict[str, Any]:
    from mssante.smtp.queue import QueueEntryError, age_seconds

    doc: dict[str, Any] = {
        "id": entry_id,
        "state": "set aside" if aside else "waiting",
        "age_seconds": round(age_seconds(entry_id), 1),
    }
    for found_id, sealed in queue.read([entry_id]):
        try:
            entry = queue.open(found_id, sealed)
        except QueueEntryError as exc:
            doc["opens"], doc["error"] = False, str(exc)
        else:
            doc.update(
                opens=True,
                sender=entry.mail_from,
                recipients=[r.address for r in entry.recipients],
                size=len(entry.raw),
                message_id=entry.message_id,
            )
    return doc


@app.command("list")
def list_entries(as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False) -> None:
    """Entries waiting or set aside, oldest first: sender, recipients, size, age."""
    queue = _queue()
    docs: list[dict[str, Any]] = []
    if queue is not None:
        try:
            docs = [_describe(queue, entry_id, aside) for entry_id, aside in queue.listing()]
        finally:
            queue.close()
    aside = sum(1 for d in docs if d["state"] == "set aside")
    if as_json:
        doc = {"waiting": len(docs) - aside, "set_aside": aside, "entries": docs}
        print(json.dumps(doc, ensure_ascii=False))
        return
    table = Table("id", "state", "age s", "from", "recipients", "size")
    for d in docs:
        when = (d["id"], d["state"], str(d["age_seconds"]))
        if d.get("opens"):
            table.add_row(*when, d["sender"], ", ".join(d["recipients"]), str(d["size"]))
        else:
            table.add_row(*when, "(does not open)", "", "")
    console.print(table)
    console.print(f"{len(docs) - aside} waiting, {aside} set aside")


@app.command("retry")
def retry(
    entry_id: Annotated[str | None, typer.Argument(help="Entry id; omit with --all.")] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Every set-aside entry.")] = False,
) -> None:
    """Put set-aside entries back in line (after restoring the key ring they were sealed with);
    the delivery process takes them within a second, and sets aside again any that still do
    not open."""
    if (entry_id is None) == (not all_entries):
        fail("give an entry id or --all", EXIT_USAGE)
    queue = _queue()
    if queue is None:
        fail(f"no submission queue entry {entry_id}" if entry_id else "the submission queue is empty")
    try:
        ids = [entry_id] if entry_id else [i for i, aside in queue.listing() if aside]
        count = asyncio.run(queue.put_back(ids))
    finally:
        queue.close()
    if entry_id is not None and not count:
        fail(f"no set-aside entry {entry_id} (see `mssante queue submission list`)")
    console.print(f"{entries(count)} back in line")


@app.command("drop")
def drop(
    entry_id: Annotated[str, typer.Argument(help="Entry id (see `queue submission list`).")],
    reason: Reason,
) -> None:
    """Remove a set-aside entry: audited with the reason; its sender gets a DSN when the entry
    opens. An entry waiting for delivery cannot be dropped (it is delivered in an instant)."""
    import getpass

    from mssante.runtime import open_runtime
    from mssante.smtp.queue import SubmissionQueue
    from mssante.smtp.queue_delivery import drop_set_aside

    if not reason.strip():
        fail("--reason must say why", EXIT_USAGE)
    if _queue_missing():
        fail(f"no set-aside entry {entry_id}")
    runtime = open_runtime(settings())
    queue = SubmissionQueue(runtime.settings.data_dir, runtime.keyring)
    try:
        actor = f"operator:{getpass.getuser()}"
        dropped = asyncio.run(drop_set_aside(runtime, queue, entry_id, reason.strip(), actor))
    finally:
        queue.close()
        runtime.close()
    if not dropped:
        fail(f"no set-aside entry {entry_id} (see `mssante queue submission list`)")
    console.print(f"entry {entry_id} dropped")


def _queue_missing() -> bool:
    from mssante.smtp.queue import QUEUE_DB

    return not (settings().data_dir / QUEUE_DB).exists()
