"""Test helpers for authentication: pytest fixtures and a protocol-neutral SASL harness.

Load the fixtures with ``pytest_plugins = ("mssante.auth.testing",)`` in a conftest, or import
them by name. Only tests import this module (it needs pytest).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssante.auth.authenticator import AuthChallenge, Authenticator, AuthResult
from mssante.auth.devpki import DevCA, Issued
from mssante.auth.testidp import LocalIdP
from mssante.config import Settings
from mssante.db import make_engine
from mssante.schema import upgrade
from mssante.tls import TLSInfo


@dataclass(frozen=True)
class DevPKI:
    ca: DevCA
    server: Issued
    client: Issued  # CN = an APP BAL address

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file


@pytest.fixture
def test_idp(tmp_path: Path) -> LocalIdP:
    """A local identity provider (ES256) whose ``issuers()`` a test configures as trusted."""
    return LocalIdP(tmp_path / "idp", "https://idp.test/demo-idp")


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A development CA with a server certificate for localhost/127.0.0.1 and an APP client."""
    directory = tmp_path_factory.mktemp("pki")
    ca = DevCA.create(directory)
    server = ca.issue_server(directory, ["localhost", "127.0.0.1"])
    client = ca.issue_client(directory / "clients", "dpi@ch-test.demo.mssante.fr")
    return DevPKI(ca, server, client)


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


@pytest.fixture
def auth_engine(settings: Settings) -> Iterator[Engine]:
    """An engine on the (parametrised) test database with the schema at head."""
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
