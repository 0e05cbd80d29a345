"""COPY and MOVE (and their UID forms), answered with COPYUID (UIDPLUS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.commands.base import No, store_no
from mssante.imap.commands.values import Command, CopyMove
from mssante.imap.render import compress
from mssante.store.types import StoreError

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_copy(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, CopyMove)
    move = command.name == "MOVE"
    if move and box.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    if move and not {Right.DELETE_MESSAGES, Right.EXPUNGE} <= session.box_rights.rights:
        raise No("Permission denied: moving out needs the rights t and e", "NOPERM")
    dst_bal, dst_name, _rights = await session.open(args.mailbox, Right.INSERT)
    targets = [
        (n, uid) for n, uid in session.resolve(command, args.sequence) if not box.entries[uid].expunged
    ]
    if not targets:
        return f"{command.name} completed (no messages)"
    try:
        result = await session.store.copy(
            box.folder.id,
            [uid for _, uid in targets],
            dst_bal,
            dst_name,
            actor=session.actor,
            move=move,
            source=session.source,
        )
    except StoreError as exc:
        raise store_no(exc, trycreate=True) from None
    code = (
        f"COPYUID {result.uidvalidity} {compress([s for s, _ in result.pairs])} "
        f"{compress([d for _, d in result.pairs])}"
    )
    if not move:
        if dst_bal == session.box_bal and dst_name == box.folder.name:
            await session.sync(allow_expunge=False, durable=True)
        return f"[{code}] COPY completed"
    await session.untagged(f"OK [{code}] Moved")
    for line in box.expunge_lines([s for s, _ in result.pairs]):
        await session.channel.write(line + b"\r\n")
    return "MOVE completed"
