"""Shared fixtures: a fresh database per test on SQLite, and on PostgreSQL when
``MSSANTE_TEST_PG_URL`` is set (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mssante import audit
from mssante.audit import AuditKey
from mssante.config import Settings, load_settings
from mssante.runtime import Runtime, initialise, open_runtime
from tests.demo_server import DemoServer, start_demo

# Fixtures of the areas (test identity provider and PKI, DMP seeds), for every test module.
pytest_plugins = ("mssante.auth.testing", "dmp.testing")

PG_URL = os.environ.get("MSSANTE_TEST_PG_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    if not PG_URL:
        pytest.skip("MSSANTE_TEST_PG_URL is not set")
    return PG_URL


def _create_pg_database() -> tuple[str, str]:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"mssante_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(name: str) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _bind_test_audit_key(url: str, ring: Path) -> None:
    """Tests that write audit records on a bare engine chain them under the key ring the
    ``settings`` fixture names if it exists by then, else under a fixed test key."""

    def load() -> AuditKey:
        return AuditKey.from_ring_file(ring) if ring.exists() else AuditKey(b"t" * 32, b"c" * 32)

    audit.bind(url, load)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'mssante.db'}"
        _bind_test_audit_key(url, tmp_path / "data" / "keyring.json")
        yield url
        return
    name, url = _create_pg_database()
    _bind_test_audit_key(url, tmp_path / "data" / "keyring.json")
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """Settings with a private data directory and the parametrised database."""
    return load_settings(
        None,
        server={"data_dir": str(tmp_path / "data")},
        database={"url": db_url},
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    initialise(settings)
    rt = open_runtime(settings)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One ``mssante serve --demo`` process shared by the end-to-end tests of a run (of a worker)."""
    yield from shared_demo(tmp_path_factory, "demo")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium (:mod:`tests.browser`, which the module using it imports), one per module."""
    from tests.browser import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a browser test's screenshots go: ``docs/screenshots/`` when ``MSSANTE_SCREENSHOTS=1``
    (the README shows them), else a temporary directory."""
    if os.environ.get("MSSANTE_SCREENSHOTS") == "1":
        from tests.browser import SHOTS

        SHOTS.mkdir(parents=True, exist_ok=True)
        return SHOTS
    return tmp_path_factory.mktemp("screenshots")


# Every test connects from 127.0.0.1: the per-address limits (connections, brute-force delays
# and lockout, tested on servers of their own) would otherwise make tests wait on each other.
DEMO_ENV = {
    "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "200",
    "MSSANTE_IMAP__MAX_CONNECTIONS_PER_IP": "200",
    "MSSANTE_AUTH__BRUTEFORCE__BASE_DELAY_SECONDS": "0.01",
    "MSSANTE_AUTH__BRUTEFORCE__MAX_DELAY_SECONDS": "0.05",
    "MSSANTE_AUTH__BRUTEFORCE__IP_LOCKOUT_FAILURES": "100000",
}


def shared_demo(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[DemoServer]:
    """A demo server with the shared one's settings: for a module whose assertions count what
    the demo's patients hold, which the other modules of a worker also write to."""
    server = start_demo(tmp_path_factory.mktemp(name) / "data", DEMO_ENV)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"demo server exited with {code}:\n{server.log()}"
