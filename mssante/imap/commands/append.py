"""APPEND: a message given by the client is stored (APPENDUID, UIDPLUS)."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.commands.base import flag_right, store_no
from mssante.imap.commands.values import Append, Command
from mssante.store.store import StoreError

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_append(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, Append)
    bal, name, rights = await session.open(args.mailbox, Right.INSERT)
    try:
        result = await session.store.append(
            bal,
            name,
            args.message,
            # RFC 4314 §4: flags the identity may not set are dropped.
            flags=[f for f in args.flags if flag_right(f) in rights],
            # In UTC: SQLite keeps no zone, so an offset would be silently dropped.
            internaldate=args.internaldate.astimezone(UTC) if args.internaldate else None,
            actor=session.actor,
            source=session.source,
        )
    except StoreError as exc:
        raise store_no(exc, trycreate=True) from None
    if session.box is not None and session.box_bal == bal and session.box.folder.name == name:
        await session.sync(allow_expunge=False, durable=True)
    return f"[APPENDUID {result.uidvalidity} {result.uid}] APPEND completed"
