"""IDLE (RFC 2177): changes pushed as they happen, rights watched while idling."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.commands.base import Bad, Silent
from mssante.imap.commands.values import Command
from mssante.imap.states import LOGOUT

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_idle(session: Session, command: Command) -> str:
    await session.channel.write(b"+ idling\r\n")
    if session.box is not None:
        await session.sync(allow_expunge=True, durable=True)
    reader = asyncio.ensure_future(session.channel.read_line())
    grants = _watch_grants(session)
    try:
        while True:
            waiters: set[asyncio.Future[object]] = {reader, grants}  # type: ignore[arg-type]
            change_task = None
            if session.subscription is not None:
                change_task = asyncio.ensure_future(session.subscription.get())
                waiters.add(change_task)  # type: ignore[arg-type]
            timeout = None
            if session.box is not None and session.box_rights.until is not None:
                timeout = max(0.0, (session.box_rights.until - datetime.now(UTC)).total_seconds())
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if session.box is not None and (grants in done or not done):
                # Grants changed somewhere, or ours expired: still allowed to read?
                rights = await session.rights(session.box_bal)
                if Right.READ not in rights:
                    if change_task is not None:
                        change_task.cancel()
                    await _revoked_bye(session)
                session.box_rights = rights
                if grants in done:
                    grants = _watch_grants(session)  # from the generation just read
            elif grants in done:
                grants = _watch_grants(session)
            if change_task is not None:
                if change_task in done:
                    await asyncio.sleep(0)  # let a burst of changes arrive together
                    await session.sync(allow_expunge=True, heard=[change_task.result()])
                else:
                    change_task.cancel()
            if reader in done:
                line = reader.result()
                if line is None:
                    raise ConnectionError("client went away during IDLE")
                if line.strip().upper() != b"DONE":
                    raise Bad("Expected DONE")
                return "IDLE terminated"
    finally:
        if not reader.done():
            reader.cancel()
        grants.cancel()


def _watch_grants(session: Session) -> asyncio.Future[None]:
    """Resolves when grants may have changed — watched only for a BAL held by grant (a
    holder's rights do not depend on grants)."""
    if session.box is None or session.box_rights.owner:
        return asyncio.get_running_loop().create_future()  # never resolves
    return asyncio.ensure_future(session.access.changed(session.box_rights.generation))


async def _revoked_bye(session: Session) -> None:
    """Rights on the selected BAL are gone while idling: no further data, end the session."""
    bal = session.box_bal
    session.deselect()
    await session.untagged(f"BYE Access to {bal} was revoked")
    session.close()
    session.state = LOGOUT
    raise Silent()
