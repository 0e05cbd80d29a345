"""The IMAP server's :class:`~mssante.imap.access.Access`: rights from the one function
(``Policy.rights_until`` → ``delegation.rights``), ACL edits under ``delegation.rules``.

``changed()`` is how idling sessions learn of a revocation made by any process: one poller
per server reads the generation counter while someone waits, and wakes every waiter when it
moves. Sessions re-read their rights at each command anyway (the book re-checks the counter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from annuaire.lookup import NotCached
from delegation import grants as service
from delegation.grants import GENERATION_SQL, GrantBook, NotInMemory
from delegation.models import MEMBER
from delegation.reach import held_bals
from delegation.rights import (
    IMAP_RIGHTS,
    NO_RIGHTS,
    BalFacts,
    InvalidRights,
    Right,
    imap_letters,
    owns,
    parse_rights,
)
from delegation.rules import Refused
from mssante.auth.identity import Identity, IdentityKind
from mssante.db import transaction
from mssante.imap.access import AclRefused, Rights
from mssante.imap.gate import Principal
from mssante.policy import Policy

POLL_SECONDS = 0.25

Read = Callable[[str], Awaitable[list[Any]]]

SHARED_KEPT = 10_000  # principals whose LIST answer is kept (all forgotten beyond)


@dataclass(frozen=True)
class Shared:
    """The BALs a LIST shows in the shared namespace, and what they depend on."""

    bals: tuple[str, ...]
    generation: int  # the grants' counter they were worked out at
    until: datetime | None  # the earliest end of a grant they come from

    def stands(self, generation: int, now: datetime) -> bool:
        return generation == self.generation and (self.until is None or now < self.until)


class DelegationAccess:
    def __init__(
        self,
        policy: Policy,
        book: GrantBook,
        writer: Engine,
        *,
        poll: float = POLL_SECONDS,
        read: Read | None = None,
    ) -> None:
        """``read``: runs a small statement from the event loop (``MessageStore.rows``), for
        the grants' counter; without it the counter is read from a worker thread."""
        self.policy = policy
        self.book = book
        self.writer = writer
        self.poll = poll
        self.read = read
        self._waiters: dict[asyncio.Future[None], int | None] = {}
        self._poller: asyncio.Task[None] | None = None
        # LIST's answer by principal, with the annuaire generation it was worked out at.
        self._shared_kept: dict[str, tuple[int, Shared]] = {}

    # -- rights ----------------------------------------------------------------------------------
    def _bal(self, bal: str) -> BalFacts | None:
        return self.policy.directory.bal(bal)

    def _rights(
        self, identity: Identity | None, bal: str, generation: int | None = None, *, in_memory: bool = False
    ) -> Rights:
        """``generation``: the grants' counter as the caller has just read it (None: read now).
        ``in_memory``: from the annuaire's and the book's memory alone, raising ``NotCached``
        or ``NotInMemory`` when that would read the database (the event loop's way)."""
        info = self.policy.bal_from_memory(bal) if in_memory else self.policy.directory.bal(bal)
        if identity is None or info is None or not self.policy.is_local(info.domain):
            return Rights(NO_RIGHTS)  # a BAL hosted elsewhere is never opened here
        if owns(identity, info):
            return Rights(self.policy.rights(identity, info), owner=True)
        # Read before the rights, once: a change committed after this number is one changed()
        # reports, and the rights are those of the grants at this number.
        if generation is None:
            generation = self.book.generation()
        grants = self.book.in_memory(generation) if in_memory else self.book.as_of(generation)
        rights, until = self.policy.rights_until(identity, info, grants=grants)
        return Rights(rights, until=until, generation=generation)

    async def _generation(self) -> int:
        """The grants' counter, read from the event loop when the server gave a way to."""
        if self.read is None:
            return await asyncio.to_thread(self.book.generation)
        rows = await self.read(GENERATION_SQL)
        return int(rows[0][0] or 0) if rows else 0

    async def rights(self, principal: Principal, bal: str) -> Rights:
        """Asked before every command on a selected mailbox. The holder of a BAL the
        annuaire's memory holds is answered on the event loop: the hop to a worker thread and
        back cost a quarter of a millisecond here, as much as the rest of a NOOP. A delegate's
        rights depend on the grants: their counter is read at every question (a revocation
        counts at the next command), from the event loop, and the rights are worked out there
        too while the book holds the delegate's grants at that counter (after the first
        question, until the grants change); otherwise from a worker thread."""
        identity = principal.identity
        held = self.policy.held_from_memory(identity, bal)
        if held is not None:
            assert identity is not None  # (a holder is someone)
            return Rights(self.policy.rights(identity, held), owner=True)
        if identity is None or self.read is None:
            return await asyncio.to_thread(self._rights, identity, bal)
        generation = await self._generation()
        try:
            return self._rights(identity, bal, generation, in_memory=True)
        except (NotCached, NotInMemory):
            return await asyncio.to_thread(self._rights, identity, bal, generation)

    def _shared(self, identity: Identity, generation: int | None = None) -> Shared:
        """The BALs other than its own the identity may see: held through the annuaire, or
        opened by a grant or membership in force (``generation``: the grants' counter as the
        caller has just read it; None: read it now, once for the whole list)."""
        if generation is None:
            generation = self.book.generation()
        with self.book.engine.connect() as conn:
            keys = set(held_bals(conn, identity))
        until: datetime | None = None
        for key in self.book.bals_of(identity, generation=generation):
            rights = self._rights(identity, key, generation)
            if Right.LOOKUP in rights:
                keys.add(key)
                if rights.until is not None and (until is None or rights.until < until):
                    until = rights.until
        return Shared(tuple(sorted(keys)), generation, until)

    async def shared(self, principal: Principal) -> list[str]:
        """Asked at every LIST. With a way to read from the event loop, the list worked out
        for the principal is kept and given again while the grants' counter, the annuaire's
        generation and the clock (before the earliest end of a grant it used) say it stands:
        no worker thread, no statement but the counter's read."""
        own = principal.bal.lower() if principal.bal else None
        identity = principal.identity
        if identity is None:
            return []
        if self.read is None:
            found = await asyncio.to_thread(self._shared, identity)
        else:
            generation = await self._generation()
            try:
                annuaire: int | None = self.policy.directory_generation()
            except NotCached:
                annuaire = None  # due for its check: worked out again, and not kept
            kept = self._shared_kept.get(identity.principal)
            if kept is not None and kept[0] == annuaire and kept[1].stands(generation, self.book.clock()):
                found = kept[1]
            else:
                found = await asyncio.to_thread(self._shared, identity, generation)
                if annuaire is not None:
                    if len(self._shared_kept) >= SHARED_KEPT:
                        self._shared_kept.clear()
                    self._shared_kept[identity.principal] = (annuaire, found)
        return [b for b in found.bals if b != own]

    # -- ACL -------------------------------------------------------------------------------------
    def _holder(self, info: BalFacts) -> str | None:
        idnat = info.responsible_idnat if info.type in ("ORG", "APP") else info.professional_idnat
        return f"{IdentityKind.PROFESSIONAL.value}:{idnat}" if idnat else None

    def _acl(self, bal: str) -> list[tuple[str, str]]:
        info = self._bal(bal)
        if info is None:
            return []
        merged: dict[str, frozenset[Right]] = {}
        holder = self._holder(info)
        if holder is not None:
            merged[holder] = IMAP_RIGHTS
        for g in self.book.on_bal(info.key):
            merged[g.grantee] = merged.get(g.grantee, NO_RIGHTS) | g.rights
        with Session(self.book.engine) as session:
            out = [(service.label(session, who), imap_letters(rights)) for who, rights in merged.items()]
        return [(who, letters) for who, letters in out if letters]

    async def acl(self, principal: Principal, bal: str) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._acl, bal)

    def _set(self, principal: Principal, bal: str, identifier: str, letters: str | None, source: str) -> None:
        actor = principal.identity
        info = self._bal(bal)
        if actor is None or info is None:
            raise AclRefused("No rights can be granted here")
        actor_rights = self.policy.rights(actor, info)
        try:
            with transaction(self.writer) as session:
                grantee = service.resolve_grantee(session, identifier)
                in_force = [g for g in self.book.on_bal(info.key) if g.grantee == grantee.principal]
                role = MEMBER if any(g.role == MEMBER for g in in_force) else "delegate"
                current = NO_RIGHTS.union(*(g.rights for g in in_force if g.role == role))
                if letters is None:
                    wanted = current - IMAP_RIGHTS  # DELETEACL: the IMAP rights; send stays
                else:
                    mode, text = (letters[0], letters[1:]) if letters[:1] in ("+", "-") else ("", letters)
                    if "p" in text:
                        raise Refused("the right p (post) is not supported")
                    given = parse_rights(text) & IMAP_RIGHTS if text else NO_RIGHTS
                    if mode == "+":
                        wanted = current | given
                    elif mode == "-":
                        wanted = current - given
                    else:
                        wanted = given | (current - IMAP_RIGHTS)
                if wanted == current:
                    return
                expires = min((g.expires_at for g in in_force if g.expires_at), default=None)
                if wanted:
                    service.grant(
                        session,
                        bal=info,
                        grantee=grantee,
                        rights=wanted,
                        actor=actor,
                        actor_rights=actor_rights,
                        expires_at=expires,
                        role=role,
                        source=source,
                    )
                else:
                    service.revoke(
                        session,
                        bal=info,
                        grantee=grantee.principal,
                        actor=actor,
                        actor_rights=actor_rights,
                        role=role,
                        source=source,
                    )
        except (Refused, InvalidRights) as exc:
            raise AclRefused(str(exc)) from None

    async def set_acl(
        self, principal: Principal, bal: str, identifier: str, letters: str, source: str
    ) -> None:
        await asyncio.to_thread(self._set, principal, bal, identifier, letters, source)

    async def delete_acl(self, principal: Principal, bal: str, identifier: str, source: str) -> None:
        await asyncio.to_thread(self._set, principal, bal, identifier, None, source)

    # -- change notification --------------------------------------------------------------------
    async def changed(self, since: int | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = since
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        try:
            await waiter
        finally:
            self._waiters.pop(waiter, None)

    async def _poll(self) -> None:
        """While someone waits: read the generation, wake whoever saw an older one, sleep."""
        while self._waiters:
            current = await self._generation()
            for waiter, since in list(self._waiters.items()):
                if not waiter.done() and (since is None or current != since):
                    if since is None:
                        self._waiters[waiter] = current  # a baseline: wake at the next change
                    else:
                        waiter.set_result(None)
            await asyncio.sleep(self.poll)
