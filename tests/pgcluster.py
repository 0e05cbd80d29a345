"""A PostgreSQL 15 primary and its streaming-replication hot standby, made for one test on
their own loopback ports with the Debian binaries (initdb, pg_ctl, pg_basebackup).

PostgreSQL refuses to run as root: when the tests run as root, the clusters belong to the
``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def pg_binary(name: str) -> str | None:
    for directory in BIN_DIRS:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def missing_tools() -> str | None:
    """Why the clusters cannot be made here, or None."""
    for name in ("initdb", "pg_ctl", "pg_basebackup"):
        if pg_binary(name) is None:
            return f"{name} (PostgreSQL 15 server binaries) not found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres system user"
        if shutil.which("runuser") is None:
            return "running as root without runuser"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    directory: Path
    port: int


class PrimaryStandby:
    """``start()`` a primary, a database, a standby streaming from it; ``fail_over()`` stops the
    primary abruptly (a crash) and promotes the standby."""

    def __init__(self, database: str = "mssante") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mssante-pg-"))
        self.database = database
        self.primary = Node(self.root / "primary", _free_port())
        self.standby = Node(self.root / "standby", _free_port())
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, name: str, *args: str) -> str:
        command = [pg_binary(name) or name, *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stdout}\n{done.stderr}")
        return done.stdout

    def _configure(self, node: Node) -> None:
        settings = (
            f"\nport = {node.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
            "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\nshared_buffers = 16MB\n"
            "max_connections = 60\n"
        )
        with (node.directory / "postgresql.conf").open("a") as f:  # root may write postgres's files
            f.write(settings)

    def _ctl(self, node: Node, *args: str) -> None:
        self._run("pg_ctl", "-D", str(node.directory), "-l", str(node.directory) + ".log", "-w", *args)

    def sql(self, node: Node, statement: str, database: str = "postgres") -> str:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=node.port, user="postgres", dbname=database, autocommit=True
        ) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return str(cur.fetchone()[0]) if cur.description else ""  # type: ignore[index]

    def start(self) -> None:
        self._run(
            "initdb", "-D", str(self.primary.directory), "-U", "postgres", "--auth=trust", "-E", "UTF8", "-N"
        )
        self._configure(self.primary)
        self._ctl(self.primary, "start")
        self.sql(self.primary, f'CREATE DATABASE "{self.database}"')
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
            "-D", str(self.standby.directory), "-R", "-X", "stream", "-c", "fast",
        )  # fmt: skip
        # The copy keeps the primary's settings but not its port.
        self._configure(self.standby)
        self._ctl(self.standby, "start")
        # Acknowledged means on both machines: the primary waits for the standby at each commit.
        # Set after the copy, so that the standby (once promoted, alone) does not wait for anyone.
        self.sql(self.primary, "ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.sql(self.primary, "SELECT pg_reload_conf()")

    def url(self, driver: str = "postgresql+psycopg") -> str:
        """A libpq multi-host URL that follows whichever node accepts writes."""
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in (self.primary, self.standby))
        return (
            f"{driver}://postgres@/{self.database}?{hosts}&target_session_attrs=read-write&connect_timeout=2"
        )

    def fail_over(self) -> None:
        """The primary crashes (immediate stop, no checkpoint); the standby is promoted."""
        self._ctl(self.primary, "stop", "-m", "immediate")
        self._ctl(self.standby, "promote")

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            if (node.directory / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError):
                    self._ctl(node, "stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
