"""QUOTA (RFC 9208) on the store's per-BAL quota: GETQUOTAROOT, GETQUOTA, SETQUOTA.

Each BAL is one quota root holding all its folders: ``""`` for the session's own BAL,
``Partagé/<bal>`` for a shared one. The only resource is STORAGE, counted in KiB as the RFC
asks; the limit is set by the operator (``storage.default_quota_mb``), never by a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.access import SHARED_PREFIX
from mssante.imap.commands.base import No
from mssante.imap.commands.values import Command, Quota
from mssante.store.types import FolderNotFound

if TYPE_CHECKING:
    from mssante.imap.session import Session


def _root(session: Session, bal: str) -> str:
    return "" if bal == session.own_bal else f"{SHARED_PREFIX}/{bal}"


async def _quota_line(session: Session, bal: str) -> bytes:
    used, limit, _count = await session.store.usage(bal)
    resources = b"" if limit is None else b"STORAGE %d %d" % (-(-used // 1024), limit // 1024)
    return b"QUOTA " + session.wire_name(_root(session, bal)) + b" (" + resources + b")"


async def cmd_getquotaroot(session: Session, command: Command) -> str:
    assert isinstance(command.args, Quota)
    bal, folder, _rights = await session.open(command.args.name, Right.READ)
    try:
        await session.store.folder(bal, folder)
    except FolderNotFound:
        raise No(f"Mailbox {command.args.name} does not exist", "NONEXISTENT") from None
    await session.untagged(
        b"QUOTAROOT " + session.wire_name(command.args.name) + b" " + session.wire_name(_root(session, bal))
    )
    await session.untagged(await _quota_line(session, bal))
    return "GETQUOTAROOT completed"


async def cmd_getquota(session: Session, command: Command) -> str:
    assert isinstance(command.args, Quota)
    root = command.args.name
    if root == "":
        bal = session.own_bal
    elif root.startswith(SHARED_PREFIX + "/") and "/" not in root[len(SHARED_PREFIX) + 1 :]:
        bal = root[len(SHARED_PREFIX) + 1 :].lower()
    else:
        bal = None
    if bal is None or not (await session.rights(bal)).visible:
        raise No(f"No quota root {root}", "NONEXISTENT")
    await session.untagged(await _quota_line(session, bal))
    return "GETQUOTA completed"


async def cmd_setquota(session: Session, command: Command) -> str:
    # Limits are the operator's decision (configuration, annuaire), not a mail client's.
    raise No("Quotas are set by the operator", "NOPERM")
