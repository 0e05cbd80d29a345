"""A protocol-neutral SASL harness: drives the authenticator with the exact messages a client
sends, base64-encoded as SMTP and IMAP carry them. Used by the tests of the mechanisms until
(and beside) the real front doors."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mssante.auth.authenticator import AuthChallenge, Authenticator, AuthResult
from mssante.auth.devpki import DevCA, Issued
from mssante.tls import TLSInfo


@dataclass(frozen=True)
class DevPKI:
    ca: DevCA
    server: Issued
    client: Issued  # CN = an APP BAL address

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else "="


async def run_sasl(
    auth: Authenticator,
    mechanism: str,
    messages: Sequence[bytes | str],
    *,
    tls: TLSInfo,
    client_ip: str = "127.0.0.1",
    initial_response: bool = True,
    cleartext_ok: bool = False,
) -> tuple[AuthResult, list[bytes]]:
    """Drive one exchange as a client would: ``messages`` are what the client sends, in order
    (bytes are base64-encoded as SMTP/IMAP carry them; str is sent verbatim, e.g. "*" or bad
    base64). The first is the initial response unless ``initial_response`` is false. Returns the
    final result and the decoded challenges the server sent."""
    exchange = auth.begin(mechanism, tls=tls, client_ip=client_ip, cleartext_ok=cleartext_ok)
    wire = [m if isinstance(m, str) else b64(m) for m in messages]
    challenges: list[bytes] = []
    if initial_response and wire:
        result = await exchange.start(wire.pop(0))
    else:
        result = await exchange.start(None)
    while isinstance(result, AuthChallenge):
        challenges.append(base64.b64decode(result.challenge))
        if not wire:
            break
        result = await exchange.step(wire.pop(0))
    return result, challenges
