"""APPEND and MULTIAPPEND (RFC 3502): messages given by the client are stored, all or none
(APPENDUID, UIDPLUS)."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.binary import encode_binary_parts
from mssante.imap.commands.base import flag_right, store_no
from mssante.imap.commands.values import Append, Command
from mssante.imap.render import compress
from mssante.store.types import StoreError

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_append(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, Append)
    bal, name, rights = await session.open(args.mailbox, Right.INSERT)
    messages = [(args.message, args.flags, args.internaldate), *((m, f, d) for f, d, m in args.more)]
    if args.binary:
        messages = [(encode_binary_parts(m), f, d) for m, f, d in messages]
    try:
        uidvalidity, uids = await session.store.append_many(
            bal,
            name,
            [
                (
                    message,
                    # RFC 4314 §4: flags the identity may not set are dropped.
                    [f for f in flags if flag_right(f) in rights],
                    # In UTC: SQLite keeps no zone, so an offset would be silently dropped.
                    when.astimezone(UTC) if when else None,
                )
                for message, flags, when in messages
            ],
            actor=session.actor,
            source=session.source,
        )
    except StoreError as exc:
        raise store_no(exc, trycreate=True) from None
    if session.box is not None and session.box_bal == bal and session.box.folder.name == name:
        await session.sync(allow_expunge=False, durable=True)
    return f"[APPENDUID {uidvalidity} {compress(uids)}] APPEND completed"
