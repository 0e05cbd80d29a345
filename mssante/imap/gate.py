"""How the IMAP server asks "who is this?": the one interface between it and authentication.

The server never checks a password itself. It hands SASL exchanges (and LOGIN, as a PLAIN
exchange) to a :class:`Gate`, which answers with the :class:`Principal` the session acts as,
or a refusal. Production wires the authentication module (``mssante.auth``) and the policy
that maps an identity to its BAL behind this interface; tests plug a small in-memory gate.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mssante.auth.identity import Identity
from mssante.tls import TLSInfo


@dataclass(frozen=True)
class Principal:
    """Who the session acts as: ``actor`` for the audit trail, ``bal`` the mailbox it opens as
    its own (None: an identity with no BAL of its own, e.g. a secretary, who works in the
    shared namespace), ``identity`` for the rights questions."""

    actor: str
    bal: str | None
    identity: Identity | None = None


@dataclass(frozen=True)
class Refusal:
    """An authentication that did not succeed: ``status`` NO or BAD, an optional response code."""

    text: str
    code: str | None = "AUTHENTICATIONFAILED"
    status: str = "NO"
    delay: float = 0.0  # brute-force delay the server waits before answering


# Sends a base64 challenge (``+ <challenge>``) and returns the client's base64 answer line.
Respond = Callable[[str], Awaitable[str]]


class Gate(Protocol):
    def mechanisms(self, *, tls: TLSInfo) -> list[str]:
        """SASL mechanisms to advertise (``AUTH=...``) on this transport."""
        ...

    async def authenticate(
        self, mechanism: str, initial: str | None, respond: Respond, *, tls: TLSInfo, peer: str
    ) -> Principal | Refusal:
        """Run one SASL exchange; ``initial`` is the SASL-IR response (base64 or ``=``)."""
        ...


def plain_initial(user: str, password: str) -> str:
    """LOGIN as a SASL PLAIN initial response (RFC 4616), so one code path checks passwords."""
    # The parser keeps stray 8-bit bytes as surrogates: they go back on the wire unchanged.
    raw = (
        b"\0" + user.encode("utf-8", "surrogateescape") + b"\0" + password.encode("utf-8", "surrogateescape")
    )
    return base64.b64encode(raw).decode("ascii")


def decode_plain(text: str) -> tuple[str, str, str] | None:
    """(authzid, authcid, password) of a PLAIN response, or None when it is malformed."""
    try:
        raw = b"" if text == "=" else base64.b64decode(text, validate=True)
        authzid, authcid, password = raw.decode("utf-8").split("\0")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return authzid, authcid, password
