"""Owner-only files: the data directory 0700, everything in it 0600.

Mail bodies are encrypted, but the database still names who wrote to whom and when, the
key ring opens everything, and certificate keys impersonate the operator: nothing the server
writes is for other local users. The program sets a 0077 umask at start (``mssante.cli``),
and the files that matter most are also created or tightened with explicit modes here, so
that a library use or an installation made by an older version ends up the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger("mssante")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def sqlite_files(database_url: str) -> list[Path]:
    """The database file of an SQLite URL and its WAL companions (none for PostgreSQL)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return []
    db = Path(url.database)
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def create_private_db(path: Path) -> None:
    """Create an empty SQLite file 0600 (its -wal and -shm then inherit that mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def tighten(path: Path, mode: int) -> bool:
    """Remove group/other permissions from an existing path; True if it changed anything."""
    current = 0
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & 0o077:
            os.chmod(path, current & mode)
            return True
    except FileNotFoundError:
        pass
    except PermissionError:  # not ours (e.g. a shared parent set up by root): say so, go on
        log.warning("%s is readable by others (mode %o) and not ours to change", path, current)
    return False


def secure(data_dir: Path, database_url: str, keyring: Path) -> list[Path]:
    """Tighten the data directory, the SQLite files and the key ring; returns what changed."""
    if os.name != "posix":
        return []
    changed = [p for p in [data_dir] if tighten(p, DIR_MODE)]
    for path in [*sqlite_files(database_url), keyring]:
        if tighten(path, FILE_MODE):
            changed.append(path)
    return changed
