"""Pytest fixtures for authentication: a test identity provider, a development PKI, a database.

Load the fixtures with ``pytest_plugins = ("mssante.auth.testing",)`` in a conftest, or import
them by name. Only tests import this module (it needs pytest).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssante.auth.devpki import DevCA
from mssante.auth.harness import DevPKI
from mssante.auth.testidp import LocalIdP
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.schema import upgrade


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


@pytest.fixture
def auth_engine(settings: Settings) -> Iterator[Engine]:
    """An engine on the (parametrised) test database with the schema at head, and the key ring
    of ``settings`` (which seals TOTP secrets)."""
    if not settings.keyring_path.exists():
        KeyRing.create(settings.keyring_path)
    engine = make_engine(settings.database_url, writer=True)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
