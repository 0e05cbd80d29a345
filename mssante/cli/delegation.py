"""``mssante delegation …``: grants and ORG memberships on BALs, by the operator administrator.

Rights are spelled as words (``read,flags,send``), presets (``read-only``, ``sort``, ``all``)
or RFC 4314 letters (``lrsw``), mixed freely: ``--rights "lr send"``. Every change made here
is the operator's and needs ``--reason``; holders of a BAL grant from their mail client
(IMAP SETACL) under the same rules (``delegation.rules``).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from mssante.cli._common import EXIT_USAGE, command_group, console, fail
from mssante.cli._common import checked_engine as _engine
from mssante.cli._common import operator_actor as _operator

app = command_group("delegation", "Delegations and ORG memberships: grant, revoke, list.")

Reason = Annotated[str, typer.Option("--reason", help="Why (mandatory for the operator; kept in the trace).")]
Member = Annotated[bool, typer.Option("--member", help="An ORG BAL membership rather than a delegation.")]
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _expiry(text: str | None) -> datetime | None:
    """``30s``, ``15m``, ``8h``, ``7d`` from now, or an ISO 8601 date-time (UTC if no zone)."""
    if not text:
        return None
    found = _DURATION.match(text.strip())
    if found:
        return datetime.now(UTC) + timedelta(**{_UNITS[found[2]]: int(found[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"--expires {text!r}: give a duration (30s, 15m, 8h, 7d) or an ISO 8601 date-time", EXIT_USAGE)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _bal(engine: Engine, address: str) -> Any:
    from annuaire.lookup import Annuaire

    bal = Annuaire(engine).bal(address)
    if bal is None:
        fail(f"<{address}> is not a BAL of the annuaire")
    return bal


@app.command("grant")
def grant_cmd(
    bal: Annotated[str, typer.Argument(help="The BAL address.")],
    grantee: Annotated[str, typer.Argument(help="Account login, or identity kind:id (staff:…).")],
    rights: Annotated[str, typer.Argument(help="Words, presets or letters: 'read-only', 'lrsw send'.")],
    reason: Reason = "",
    expires: Annotated[str | None, typer.Option(help="30s, 8h, 7d, or an ISO date-time.")] = None,
    member: Member = False,
) -> None:
    """Give GRANTEE exactly RIGHTS on BAL (replacing what it had); traced with the reason."""
    from delegation import grants as service
    from delegation.rights import InvalidRights, format_rights, parse_rights
    from delegation.rules import Refused
    from mssante.db import transaction

    try:
        wanted = parse_rights(rights)
    except InvalidRights as exc:
        fail(str(exc), EXIT_USAGE)
    until = _expiry(expires)
    engine = _engine(writer=True)
    info = _bal(engine, bal)
    try:
        with transaction(engine) as session:
            who = service.resolve_grantee(session, grantee)
            done = service.grant(
                session,
                bal=info,
                grantee=who,
                rights=wanted,
                actor=None,
                operator=_operator(),
                reason=reason,
                expires_at=until,
                role="member" if member else "delegate",
                source="cli",
            )
    except Refused as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    tail = f" until {done.expires_at:%Y-%m-%d %H:%M:%S} UTC" if done.expires_at else ""
    console.print(f"{done.role} {who.principal} on <{info.key}>: {format_rights(done.rights)}{tail}")


@app.command("revoke")
def revoke_cmd(
    bal: Annotated[str, typer.Argument(help="The BAL address.")],
    grantee: Annotated[str, typer.Argument(help="Account login, or identity kind:id.")],
    reason: Reason = "",
    member: Member = False,
) -> None:
    """Revoke GRANTEE's grants on BAL at once (live sessions lose access at their next command)."""
    from delegation import grants as service
    from delegation.rules import Refused
    from mssante.db import transaction

    engine = _engine(writer=True)
    info = _bal(engine, bal)
    try:
        with transaction(engine) as session:
            who = service.resolve_grantee(session, grantee)
            count = service.revoke(
                session,
                bal=info,
                grantee=who.principal,
                actor=None,
                operator=_operator(),
                reason=reason,
                role="member" if member else None,
                source="cli",
            )
    except Refused as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    if count == 0:
        fail(f"{who.principal} holds no grant on <{info.key}>")
    console.print(f"revoked {count} grant(s) of {who.principal} on <{info.key}>")


@app.command("list")
def list_cmd(
    bal: Annotated[str, typer.Argument(help="The BAL address.")],
    history: Annotated[bool, typer.Option("--history", help="Revoked and expired grants too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Grants and memberships of BAL (in force, or all with --history)."""
    from delegation.grants import GrantBook, label
    from delegation.rights import format_rights

    engine = _engine(writer=True)
    try:
        info = _bal(engine, bal)
        rows = GrantBook(engine).on_bal(info.key, history=history)
        with Session(engine) as session:
            names = {g.grantee: label(session, g.grantee) for g in rows}
    finally:
        engine.dispose()

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    if as_json:
        for g in rows:
            print(
                json.dumps(
                    {
                        "id": g.id,
                        "bal": g.bal,
                        "grantee": g.grantee,
                        "login": names[g.grantee],
                        "role": g.role,
                        "rights": format_rights(g.rights),
                        "granted_by": g.granted_by,
                        "reason": g.reason,
                        "created_at": when(g.created_at),
                        "expires_at": when(g.expires_at),
                        "revoked_at": when(g.revoked_at),
                        "revoked_by": g.revoked_by,
                    },
                    ensure_ascii=False,
                )
            )
        return
    from rich.table import Table

    table = Table("id", "grantee", "role", "rights", "granted by", "since (UTC)", "until (UTC)", "revoked")
    for g in rows:
        table.add_row(
            str(g.id),
            names[g.grantee],
            g.role,
            format_rights(g.rights),
            g.granted_by,
            f"{g.created_at:%Y-%m-%d %H:%M}",
            f"{g.expires_at:%Y-%m-%d %H:%M:%S}" if g.expires_at else "",
            f"{g.revoked_at:%Y-%m-%d %H:%M} by {g.revoked_by}" if g.revoked_at else "",
        )
    console.print(table)


@app.command("rights")
def rights_cmd(
    bal: Annotated[str, typer.Argument(help="The BAL address.")],
    who: Annotated[str, typer.Argument(help="Account login, or identity kind:id.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Effective rights of WHO on BAL: the answer SMTP and IMAP get (ownership, membership, grants)."""
    from delegation.grants import GrantBook, resolve_grantee
    from delegation.rights import format_rights, rights_until
    from delegation.rules import Refused

    engine = _engine(writer=True)
    try:
        info = _bal(engine, bal)
        with Session(engine) as session:
            try:
                identity = resolve_grantee(session, who)
            except Refused as exc:
                fail(str(exc))
        rights, until = rights_until(identity, info, GrantBook(engine))
    finally:
        engine.dispose()
    if as_json:
        doc = {
            "principal": identity.principal,
            "bal": info.key,
            "rights": format_rights(rights),
            "until": until.isoformat() if until else None,
        }
        print(json.dumps(doc))
        return
    tail = f" (until {until:%Y-%m-%d %H:%M:%S} UTC)" if until else ""
    console.print(f"{identity.principal} on <{info.key}>: {format_rights(rights) or 'none'}{tail}")
