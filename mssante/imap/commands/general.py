"""Commands of any state, and the small ones of the authenticated state: CAPABILITY, NOOP,
CHECK, LOGOUT, ID, ENABLE, NAMESPACE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mssante import __version__ as _version
from mssante.imap import mutf7
from mssante.imap.access import SHARED_PREFIX
from mssante.imap.commands.values import Command, Enable, Id
from mssante.imap.render import string
from mssante.imap.states import LOGOUT

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_capability(session: Session, command: Command) -> str:
    await session.untagged("CAPABILITY " + " ".join(session.capabilities()))
    return "CAPABILITY completed"


async def cmd_noop(session: Session, command: Command) -> str:
    if session.box is not None:
        await session.sync(allow_expunge=True, durable=True)
    return f"{command.name} completed"


async def cmd_logout(session: Session, command: Command) -> str:
    await session.untagged("BYE Logging out")
    session.close()
    session.state = LOGOUT
    return "LOGOUT completed"


async def cmd_id(session: Session, command: Command) -> str:
    assert isinstance(command.args, Id)
    await session.untagged(b'ID ("name" "mssante" "version" ' + string(_version) + b")")
    return "ID completed"


async def cmd_enable(session: Session, command: Command) -> str:
    assert isinstance(command.args, Enable)
    # Unknown names are ignored (RFC 5161 §3.1); only what was not on already is listed.
    done = [name for capability in command.args.capabilities for name in session.enable(capability)]
    await session.untagged(" ".join(["ENABLED", *done]))
    return "ENABLE completed"


async def cmd_namespace(session: Session, command: Command) -> str:
    # Personal namespace (the session's own BAL), no other users', the shared BALs.
    prefix = SHARED_PREFIX + "/"
    quoted = string(prefix, utf8=True) if session.utf8 else string(mutf7.encode(prefix))
    shared = b"((" + quoted + b' "/"))'
    # A login with several delegated BALs and none of its own has no personal namespace.
    personal = b'(("" "/"))' if session.own_bal is not None else b"NIL"
    await session.untagged(b"NAMESPACE " + personal + b" NIL " + shared)
    return "NAMESPACE completed"
