"""What a session may do on a BAL, asked of whoever wires the server (IMAP decides nothing).

The session asks :class:`Access` before each operation on a BAL — its own, or one of the
shared namespace (``Partagé/<bal address>/…``) — and gets the identity's effective rights
there (RFC 4314 letters, see ``delegation.rights``). Production plugs
``delegation.imap.DelegationAccess`` (the one rights function, grants in the database);
:class:`OwnerOnly` is the rule of a server without delegation: all rights on the BAL the
session opened, nothing elsewhere.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from delegation.rights import ALL_RIGHTS, NO_RIGHTS, Right
from mssante.imap.gate import Principal

SHARED_PREFIX = "Partagé"  # the shared namespace: Partagé/<bal address>/<folder>


@dataclass(frozen=True)
class Rights:
    """Effective rights on one BAL, whether the identity holds it, and until when they hold
    unchanged (the earliest expiry of a grant they come from; None: until a revocation)."""

    rights: frozenset[Right]
    owner: bool = False
    until: datetime | None = None
    generation: int | None = None  # the grants' generation they were read at (see changed())

    def __contains__(self, right: object) -> bool:
        return right in self.rights

    @property
    def visible(self) -> bool:
        return Right.LOOKUP in self.rights or Right.READ in self.rights


NONE = Rights(NO_RIGHTS)


class AclRefused(Exception):
    """An ACL change the delegation rules refuse (answered ``NO [NOPERM]``)."""


class Access(Protocol):
    async def rights(self, principal: Principal, bal: str) -> Rights: ...

    async def shared(self, principal: Principal) -> list[str]:
        """BAL keys (other than the session's own) on which the principal holds ``l``."""
        ...

    async def acl(self, principal: Principal, bal: str) -> list[tuple[str, str]]:
        """(identifier, RFC 4314 letters) of everyone with rights on the BAL, holder first."""
        ...

    async def set_acl(
        self, principal: Principal, bal: str, identifier: str, letters: str, source: str
    ) -> None:
        """SETACL (``letters`` may start with + or -) and DELETEACL (``letters`` None)."""
        ...

    async def delete_acl(self, principal: Principal, bal: str, identifier: str, source: str) -> None: ...

    async def changed(self, since: int | None) -> None:
        """Return when grants changed (in any process) after generation ``since``."""
        ...


class OwnerOnly:
    """All rights on the session's own BAL, none elsewhere; no ACL changes."""

    async def rights(self, principal: Principal, bal: str) -> Rights:
        if principal.bal is not None and bal == principal.bal.lower():
            return Rights(ALL_RIGHTS, owner=True)
        return NONE

    async def shared(self, principal: Principal) -> list[str]:
        return []

    async def acl(self, principal: Principal, bal: str) -> list[tuple[str, str]]:
        return [(principal.actor, "lrswikxtea")]

    async def set_acl(
        self, principal: Principal, bal: str, identifier: str, letters: str, source: str
    ) -> None:
        raise AclRefused("This server keeps no access control lists")

    async def delete_acl(self, principal: Principal, bal: str, identifier: str, source: str) -> None:
        raise AclRefused("This server keeps no access control lists")

    async def changed(self, since: int | None) -> None:
        await asyncio.Event().wait()
