"""Delegation over IMAP in process, on each database backend (SQLite, and PostgreSQL when
configured): the demo operator's grants, the shared namespace, ACL edits, and a revocation
written by another connection reaching a live session and an idling one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from annuaire import service as annuaire_service
from annuaire.lookup import Annuaire
from delegation import grants
from delegation.imap import DelegationAccess
from delegation.rights import Right, parse_rights
from mssante import demo
from mssante.auth.identity import Identity
from mssante.config import Settings
from mssante.db import transaction
from mssante.imap.gate import Principal
from mssante.imap.listeners import start_imap
from mssante.runtime import Runtime, initialise, open_runtime
from tests.test_delegation_e2e import MARTIN, SECRETARY, Imap, named, shared


@dataclass
class Doors:
    """What :class:`tests.test_delegation_e2e.Imap` needs of a server."""

    runtime: Runtime
    ports: dict[str, int]
    ca_cert: str
    document: dict[str, Any]

    def port(self, name: str) -> int:
        return self.ports[name]

    def account(self, address: str) -> dict[str, Any]:
        return dict(next(a for a in self.document["accounts"] if a["address"] == address))


@pytest.fixture
async def doors(settings: Settings) -> AsyncIterator[Doors]:
    settings.imap.port = settings.imap.tls_port = 0
    demo.demo_settings(settings)
    initialise(settings)
    document = demo.setup(settings)
    runtime = open_runtime(settings)
    listeners = await start_imap(runtime)
    try:
        yield Doors(runtime, {item.name: item.port for item in listeners}, document["ca_cert"], document)
    finally:
        for item in reversed(listeners):
            await item.close()
        runtime.close()


def _revoke(doors: Doors) -> None:
    bal = Annuaire(doors.runtime.engine).bal(MARTIN)
    assert bal is not None
    with transaction(doors.runtime.writer_engine) as session:
        grants.revoke(
            session, bal=bal, grantee="staff:secretaire.martin", actor=None, operator="test", reason="t"
        )


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The functions sent to a worker thread from now on (``asyncio.to_thread``)."""
    hops: list[object] = []
    to_thread = asyncio.to_thread

    async def counted(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(function)
        return await to_thread(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    return hops


def _grant_secretary(doors: Doors, ends: datetime | None = None) -> None:
    """The secretary given lr on the doctor's BAL by the operator, until ``ends``."""
    bal = Annuaire(doors.runtime.engine).bal(MARTIN)
    assert bal is not None
    with transaction(doors.runtime.writer_engine) as session:
        grants.grant(
            session, bal=bal, grantee=Identity.staff("secretaire.martin"), rights=parse_rights("lr"),
            actor=None, operator="test", reason="t", expires_at=ends,
        )  # fmt: skip


async def _after(ends: datetime) -> None:
    await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.05)


def _scenario(doors: Doors) -> None:
    secretary = Imap(doors)  # type: ignore[arg-type]
    idler = Imap(doors)  # type: ignore[arg-type]
    doctor = Imap(doors)  # type: ignore[arg-type]
    try:
        for client, login in ((secretary, SECRETARY), (idler, SECRETARY), (doctor, MARTIN)):
            assert client.login(doors, login).startswith("OK")  # type: ignore[arg-type]
        namespace = secretary.ok("NAMESPACE")
        assert namespace == [b'* NAMESPACE (("" "/")) NIL (("Partag&AOk-/" "/"))']
        listed = b"\n".join(secretary.ok('LIST "" "*"'))
        # Her one delegated BAL opens as her own mailbox (special uses included), not twice.
        assert b'"/" INBOX' in listed and b"\\Sent" in listed
        assert b"Partag" not in listed and b"cardiologie" not in listed
        # The demo grant: read, sort, file, send (lrswite send); she keeps \Seen, sets flags.
        assert secretary.command(f"SELECT {shared(MARTIN)}")[0].startswith("OK [READ-WRITE]")
        assert secretary.ok(f"MYRIGHTS {shared(MARTIN)}") == [f"* MYRIGHTS {named(MARTIN)} lrswite".encode()]
        assert doctor.ok("GETACL INBOX") == [f"* ACL INBOX {MARTIN} lrswikxtea {SECRETARY} lrswite".encode()]
        doctor.ok(f"SETACL INBOX {SECRETARY} -we")
        assert secretary.command("UID STORE 1:* +FLAGS (\\Flagged)")[0].startswith("NO [NOPERM]")
        assert secretary.ok(f"MYRIGHTS {shared(MARTIN)}") == [f"* MYRIGHTS {named(MARTIN)} lrsit".encode()]
        idler.ok(f"EXAMINE {shared(MARTIN)}")
        idler.send("i1 IDLE")
        assert idler.line().startswith(b"+ ")
        _revoke(doors)
        assert idler.line() == f"* BYE Access to {MARTIN} was revoked".encode()
        status, untagged = secretary.command("NOOP")
        assert status.startswith("NO [NOPERM]") and untagged[-1].startswith(b"* OK [CLOSED]")
        assert secretary.command(f"STATUS {shared(MARTIN)} (MESSAGES)")[0].startswith("NO [NONEXISTENT]")
        assert secretary.ok('LIST "" "*"') == []
    finally:
        for client in (secretary, idler, doctor):
            client.close()


async def test_shared_namespace_acl_and_revocation_on_each_backend(doors: Doors) -> None:
    await asyncio.to_thread(_scenario, doors)


async def test_a_holders_rights_come_from_memory_a_delegates_from_the_grants(
    doors: Doors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked before every command on a selected mailbox: the BAL's holder is answered on the
    event loop from the annuaire's memory. A delegate's rights come from the grants, whose
    counter is read at every question from the event loop: the first question loads her grants
    in a worker thread, the next ones are answered from the book's memory while the counter
    stays, and a revocation (the counter moves) counts at the very next question."""
    runtime = doors.runtime
    assert runtime.policy is not None and runtime.grants is not None
    access = DelegationAccess(runtime.policy, runtime.grants, runtime.writer_engine, read=runtime.store.rows)
    bal = runtime.annuaire.bal(MARTIN)  # in the annuaire's memory, as after any login
    assert bal is not None and bal.professional_idnat is not None
    holder = Principal(MARTIN, MARTIN, Identity.professional(bal.professional_idnat))
    secretary = Principal("staff:secretaire.martin", None, Identity.staff("secretaire.martin"))
    hops = _count_hops(monkeypatch)
    mine = await access.rights(holder, MARTIN)
    assert mine.owner and Right.READ in mine and Right.ADMINISTER in mine and hops == []
    theirs = await access.rights(secretary, MARTIN)
    assert not theirs.owner and Right.READ in theirs and Right.ADMINISTER not in theirs
    assert len(hops) == 1
    again = await access.rights(secretary, MARTIN)
    assert again == theirs and len(hops) == 1
    _revoke(doors)
    assert not (await access.rights(secretary, MARTIN)).visible and len(hops) == 2
    assert not (await access.rights(secretary, MARTIN)).visible and len(hops) == 2
    assert (await access.rights(holder, MARTIN)).owner and len(hops) == 2
    # Without a way to read from the event loop, every delegate's question takes the hop.
    threaded = DelegationAccess(runtime.policy, runtime.grants, runtime.writer_engine)
    for _ in range(2):
        assert not (await threaded.rights(secretary, MARTIN)).visible
    assert len(hops) == 4


async def test_a_list_reads_the_grants_counter_once_and_sees_a_revocation(doors: Doors) -> None:
    """The BALs a LIST shows: those held through the annuaire (an ORG and APP BALs' responsible)
    and those a grant or membership opens, decided at one reading of the grants' counter
    however many BALs are asked about; a revocation counts at the next LIST."""
    runtime = doors.runtime
    assert runtime.policy is not None and runtime.grants is not None
    access = DelegationAccess(runtime.policy, runtime.grants, runtime.writer_engine)
    durand = Identity.professional(doors.account("paul.durand@demo.mssante.fr")["idnat"])
    martin = Identity.professional(doors.account(MARTIN)["idnat"])
    reads: list[str] = []

    def counted(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "delegation_state" in statement:
            reads.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", counted)
    try:
        held = await access.shared(Principal("paul.durand@demo.mssante.fr", None, durand))
        assert held == [f"{name}@demo.mssante.fr" for name in ("cardiologie", "dmp", "dpi", "paul.durand")]
        assert len(reads) == 1
        # The secretary's one delegated BAL, and the doctor's own and the service she belongs to.
        secretary = Principal("staff:secretaire.martin", None, Identity.staff("secretaire.martin"))
        assert await access.shared(secretary) == [MARTIN]
        assert await access.shared(Principal(MARTIN, MARTIN, martin)) == ["cardiologie@demo.mssante.fr"]
        assert len(reads) == 3
        _revoke(doors)
        assert await access.shared(secretary) == []
    finally:
        event.remove(runtime.engine, "before_cursor_execute", counted)


async def test_a_delegates_grant_expires_on_time_when_answered_from_memory(doors: Doors) -> None:
    """Expiry needs no write, so no counter moves: the rights answered from the book's memory
    still compare the grant's end with the clock at each question."""
    runtime = doors.runtime
    assert runtime.policy is not None and runtime.grants is not None
    access = DelegationAccess(runtime.policy, runtime.grants, runtime.writer_engine, read=runtime.store.rows)
    ends = datetime.now(UTC) + timedelta(seconds=1.5)
    _grant_secretary(doors, ends)
    secretary = Principal("staff:secretaire.martin", None, Identity.staff("secretaire.martin"))
    first = await access.rights(secretary, MARTIN)
    assert first.visible and first.until == ends
    assert (await access.rights(secretary, MARTIN)).visible  # from memory now
    await _after(ends)
    assert not (await access.rights(secretary, MARTIN)).visible


async def test_a_list_answer_is_kept_while_grants_annuaire_and_clock_say_it_stands(
    doors: Doors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LIST's shared BALs are worked out in a worker thread once, then given again from memory
    until the grants' counter moves (a revocation), the annuaire changes (the doctor's BAL
    deactivated) or a grant they used ends."""
    runtime = doors.runtime
    assert runtime.policy is not None and runtime.grants is not None
    access = DelegationAccess(runtime.policy, runtime.grants, runtime.writer_engine, read=runtime.store.rows)
    runtime.annuaire.bal(MARTIN)  # the annuaire's memory checked, as after any login
    secretary = Principal("staff:secretaire.martin", None, Identity.staff("secretaire.martin"))
    hops = _count_hops(monkeypatch)
    assert await access.shared(secretary) == [MARTIN] and len(hops) == 1
    assert await access.shared(secretary) == [MARTIN] and len(hops) == 1
    _revoke(doors)
    assert await access.shared(secretary) == [] and len(hops) == 2
    assert await access.shared(secretary) == [] and len(hops) == 2
    # A grant that ends: listed until its end, not after, with no write in between.
    ends = datetime.now(UTC) + timedelta(seconds=1.5)
    _grant_secretary(doors, ends)
    assert await access.shared(secretary) == [MARTIN]
    assert await access.shared(secretary) == [MARTIN]
    await _after(ends)
    assert await access.shared(secretary) == []
    # The annuaire: the doctor's BAL deactivated is no longer listed, though no grant moved.
    _grant_secretary(doors)
    assert await access.shared(secretary) == [MARTIN]
    assert await access.shared(secretary) == [MARTIN]
    with transaction(runtime.writer_engine) as session:
        annuaire_service.set_bal_active(session, address=MARTIN, active=False, actor="test")
    runtime.annuaire.invalidate()  # (what the process that writes the annuaire does)
    assert await access.shared(secretary) == []
    assert await access.shared(secretary) == []
