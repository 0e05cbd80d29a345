"""ACL (RFC 4314): GETACL, SETACL, DELETEACL, LISTRIGHTS, MYRIGHTS.

Rights are held per BAL: an ACL read or set on any folder of a BAL is the BAL's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.access import AclRefused, Rights
from mssante.imap.commands.base import No
from mssante.imap.commands.values import AclArgs, Command
from mssante.imap.render import astring
from mssante.store.types import FolderNotFound

if TYPE_CHECKING:
    from mssante.imap.session import Session

_LEGACY_RIGHTS = {"c": "k", "d": "xte"}  # RFC 4314 §2.1.1: obsolete RFC 2086 letters


async def _acl_target(session: Session, name: str, *needed: Right) -> tuple[str, Rights]:
    bal, folder, rights = await session.open(name, *needed)
    try:
        await session.store.folder(bal, folder)
    except FolderNotFound:
        raise No(f"Mailbox {name} does not exist", "NONEXISTENT") from None
    return bal, rights


async def cmd_getacl(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, AclArgs) and session.principal is not None
    bal, _rights = await _acl_target(session, args.mailbox, Right.ADMINISTER)
    entries = await session.access.acl(session.principal, bal)
    await session.untagged(
        b"ACL "
        + session.wire_name(args.mailbox)
        + b"".join(b" " + astring(who) + b" " + astring(letters) for who, letters in entries)
    )
    return "GETACL completed"


async def cmd_setacl(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, AclArgs) and args.identifier is not None and session.principal is not None
    bal, _rights = await _acl_target(session, args.mailbox)
    try:
        if command.name == "SETACL":
            assert args.rights is not None
            letters = args.rights
            for old, new in _LEGACY_RIGHTS.items():
                letters = letters.replace(old, new)
            await session.access.set_acl(session.principal, bal, args.identifier, letters, session.source)
        else:
            await session.access.delete_acl(session.principal, bal, args.identifier, session.source)
    except AclRefused as exc:
        raise No(str(exc), "NOPERM") from None
    return f"{command.name} completed"


async def cmd_listrights(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, AclArgs) and args.identifier is not None
    await _acl_target(session, args.mailbox, Right.ADMINISTER)
    await session.untagged(
        b"LISTRIGHTS "
        + session.wire_name(args.mailbox)
        + b" "
        + astring(args.identifier)
        + b' "" l r s w i k x t e a'
    )
    return "LISTRIGHTS completed"


async def cmd_myrights(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, AclArgs)
    _bal, rights = await _acl_target(session, args.mailbox)
    letters = "".join(c for c in "lrswikxtea" if Right(c) in rights)
    await session.untagged(b"MYRIGHTS " + session.wire_name(args.mailbox) + b" " + astring(letters))
    return "MYRIGHTS completed"
