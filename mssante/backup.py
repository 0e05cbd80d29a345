"""Consistent online backups, restore into an empty installation, and backup verification.

A backup is a directory: the database copy, ``manifest.json`` (what it holds, SHA-256 of each
file, and an audit checkpoint of the live trail taken just before the copy) and, unless sent
elsewhere, ``keyring.enc`` (the key ring sealed under a passphrase, see ``mssante.keyexport``).

- SQLite: the online backup API, in one step, from a read transaction: a snapshot of the
  committed state at that instant; the server's writers go on (WAL) while it is copied.
- PostgreSQL: ``pg_dump --format=custom``, which reads one repeatable-read snapshot;
  ``pg_restore`` restores it into an empty database. (``pg_basebackup`` and WAL archiving are
  the cluster administrator's tools for point-in-time recovery; they are not driven from here.)

Every message acknowledged before the backup started is in it: the 250 is sent after commit,
and the snapshot is taken after that commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from mssante import __version__, audit, keyexport
from mssante.audit import AuditEvent, AuditKey, Checkpoint
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.datadir import DIR_MODE, FILE_MODE, sqlite_files
from mssante.db import is_sqlite, make_engine, transaction
from mssante.keyexport import Passphrase
from mssante.schema import current_revision, head_revision

FORMAT = "mssante-backup/1"
MANIFEST, KEYRING_EXPORT = "manifest.json", "keyring.enc"
SQLITE_FILE, PG_FILE = "mssante.db", "database.pgdump"


class BackupError(Exception):
    """A backup that cannot be made, restored or verified, with the reason."""


# -- helpers ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore, the password in the environment (never in argv)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run_pg(tool: str, args: list[str], env: dict[str, str]) -> None:
    exe = shutil.which(tool)
    if exe is None:
        raise BackupError(f"{tool} is not installed (Debian: apt-get install postgresql-client)")
    done = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=24 * 3600)
    if done.returncode != 0:
        raise BackupError(f"{tool} failed: {done.stderr.strip()[-2000:]}")


def _sqlite_path(url: str) -> Path:
    files = sqlite_files(url)
    if not files:
        raise BackupError(f"{make_url(url).render_as_string()} is not an SQLite file database")
    return files[0]


def _read_head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).first()
    return (int(row[0]), str(row[1])) if row is not None else (0, audit.GENESIS)


# -- backup -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupReport:
    dest: str
    database: str
    database_file: str
    database_bytes: int
    schema: str | None
    audit_seq: int
    keyring_file: str
    seconds: float


def _copy_sqlite(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    src = sqlite3.connect(str(source), timeout=30)
    dst = sqlite3.connect(str(partial))
    try:
        # One step (pages=-1): one read transaction, hence one consistent snapshot; writers go on.
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()
    with partial.open("rb+") as fh:
        os.fsync(fh.fileno())
    partial.rename(target)


def create(
    settings: Settings, dest: Path, passphrase: Passphrase, actor: str, keyring_to: Path | None = None
) -> BackupReport:
    """Copy the database while the server runs, export the key ring sealed, write the manifest."""
    started = time.monotonic()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    ring = KeyRing.load(settings.keyring_path)
    key = AuditKey.from_ring(ring)
    url = settings.database_url
    engine = make_engine(url)
    try:
        schema = current_revision(engine)
        seq, mac = _read_head(engine)  # before the snapshot: the copy holds at least this
    finally:
        engine.dispose()
    point = Checkpoint(seq, mac, key.key_id, datetime.now(UTC).isoformat(timespec="seconds"))
    dest.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if is_sqlite(url):
        kind, db_file = "sqlite", dest / SQLITE_FILE
        _copy_sqlite(_sqlite_path(url), db_file)
    else:
        kind, db_file = "postgresql", dest / PG_FILE
        conninfo, env = _libpq(url)
        _run_pg(
            "pg_dump",
            [
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                "--file",
                str(db_file),
                "--dbname",
                conninfo,
            ],
            env,
        )
        os.chmod(db_file, FILE_MODE)
    export = keyexport.seal(ring, passphrase)
    ring_file = keyring_to if keyring_to is not None else dest / KEYRING_EXPORT
    _write_private(ring_file, export)
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mssante_version": __version__,
        "schema": schema,
        "database": {
            "kind": kind,
            "file": db_file.name,
            "sha256": _sha256(db_file),
            "bytes": db_file.stat().st_size,
        },
        "keyring": {
            "file": ring_file.name if ring_file.parent.resolve() == dest.resolve() else None,
            "sha256": hashlib.sha256(export).hexdigest(),
            "audit_key_id": key.key_id,
        },
        "audit_checkpoint": point.document(key),
    }
    _write_private(dest / MANIFEST, json.dumps(manifest, indent=2).encode())
    _fsync_dir(dest)
    writer = make_engine(url, writer=True)
    try:
        with transaction(writer) as session:
            detail = {"database": kind, "audit_seq": seq, "schema": schema}
            audit.append(
                session, AuditEvent(actor=actor, action="backup.create", object=str(dest), detail=detail)
            )
    finally:
        writer.dispose()
    return BackupReport(
        str(dest), kind, db_file.name, db_file.stat().st_size, schema, seq, str(ring_file),
        round(time.monotonic() - started, 3),
    )  # fmt: skip


# -- reading a backup ---------------------------------------------------------------------
def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a backup (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src / MANIFEST} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _open_ring(src: Path, manifest: dict[str, Any], passphrase: Passphrase, keyring_from: Path | None,
               ring_path: Path) -> KeyRing:  # fmt: skip
    path = keyring_from or (src / KEYRING_EXPORT if manifest["keyring"].get("file") else None)
    if path is None:
        raise BackupError(
            "the key ring export was written elsewhere at backup time: give it with --keyring FILE"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the key ring export {path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != manifest["keyring"]["sha256"]:
        raise BackupError(f"{path} is not the key ring export of this backup (SHA-256 differs)")
    ring = keyexport.open_export(data, passphrase, ring_path)
    if AuditKey.from_ring(ring).key_id != manifest["keyring"]["audit_key_id"]:
        raise BackupError("the key ring export does not belong to this backup (audit key id differs)")
    return ring


def _database_file(src: Path, manifest: dict[str, Any]) -> Path:
    kind = manifest["database"]["kind"]
    if kind not in ("sqlite", "postgresql"):
        raise BackupError(f"unknown database kind {kind!r} in the manifest")
    path = src / (SQLITE_FILE if kind == "sqlite" else PG_FILE)  # never a name read from the file
    if not path.is_file():
        raise BackupError(f"the database copy {path} is missing")
    if _sha256(path) != manifest["database"]["sha256"]:
        raise BackupError(f"the database copy {path} does not match the manifest (SHA-256 differs)")
    return path


def _is_empty_database(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return not inspect(conn).get_table_names()
    finally:
        engine.dispose()


def _load_into(url: str, kind: str, db_copy: Path) -> None:
    """Put the backup's database at ``url`` (an SQLite path that does not exist, or an empty
    PostgreSQL database)."""
    if kind == "sqlite":
        if not is_sqlite(url):
            raise BackupError("this backup is of an SQLite database; the configured database is PostgreSQL")
        target = _sqlite_path(url)
        if any(p.exists() for p in sqlite_files(url)):
            raise BackupError(f"{target} already exists: restore only into an empty installation")
        target.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        partial = target.with_name(target.name + ".partial")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        with db_copy.open("rb") as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        partial.rename(target)
        return
    if is_sqlite(url):
        raise BackupError("this backup is of a PostgreSQL database; the configured database is SQLite")
    if not _is_empty_database(url):
        raise BackupError("the configured PostgreSQL database is not empty: restore only into an empty one")
    conninfo, env = _libpq(url)
    args = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", "--dbname", conninfo]
    _run_pg("pg_restore", [*args, str(db_copy)], env)


# -- restore ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RestoreReport:
    data_dir: str
    database: str
    schema: str | None
    schema_current: bool
    audit_records: int
    keyring: str


def restore(
    settings: Settings, src: Path, passphrase: Passphrase, actor: str, keyring_from: Path | None = None
) -> RestoreReport:
    """Restore into an empty installation: data directory, key ring, database."""
    manifest = read_manifest(src)
    data_dir, ring_path, url = settings.data_dir, settings.keyring_path, settings.database_url
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(
            f"the data directory {data_dir} is not empty: restore only into an empty installation"
        )
    if ring_path.exists():
        raise BackupError(
            f"a key ring already exists at {ring_path}: restore only into an empty installation"
        )
    ring = _open_ring(src, manifest, passphrase, keyring_from, ring_path)
    db_copy = _database_file(src, manifest)
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _load_into(url, manifest["database"]["kind"], db_copy)
    ring.save()
    key = AuditKey.from_ring(ring)
    audit.bind(url, key)
    engine = make_engine(url, writer=True)
    try:
        schema = current_revision(engine)
        current = schema == head_revision()
        checked = _verify_chain(engine, key, manifest)
        if current:  # an older schema gets its trace once `mssante db upgrade` has run
            event = AuditEvent(
                actor=actor,
                action="backup.restore",
                object=str(src),
                detail={"backup_created_at": manifest["created_at"]},
            )
            with transaction(engine) as session:
                audit.append(session, event)
    finally:
        engine.dispose()
    return RestoreReport(
        str(data_dir), manifest["database"]["kind"], schema, current, checked, str(ring_path)
    )


def _verify_chain(engine: Engine, key: AuditKey, manifest: dict[str, Any]) -> int:
    against = Checkpoint.parse(json.dumps(manifest["audit_checkpoint"]), key)
    with Session(engine) as session:
        result = audit.verify(session, key, against)
    if not result.ok:
        raise BackupError(f"audit trail broken at record {result.broken_seq}: {result.reason}")
    return result.checked


# -- verify -------------------------------------------------------------------------------
_SAMPLE = text("SELECT id FROM blobs WHERE id IN (SELECT blob_id FROM messages) ORDER BY random() LIMIT :n")


@dataclass
class VerifyReport:
    database: str
    schema: str | None
    audit_records: int
    checkpoint_seq: int
    messages: int
    blobs: int
    sampled: int
    opened: int
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.opened == self.sampled

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@contextmanager
def _scratch_database(kind: str, db_copy: Path, settings: Settings, scratch_url: str | None) -> Iterator[str]:
    """The backup's database opened somewhere disposable."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mssante-verify-") as tmp:
            copy = Path(tmp) / SQLITE_FILE
            shutil.copyfile(db_copy, copy)
            yield f"sqlite:///{copy}"
        return
    if scratch_url is not None:
        _load_into(scratch_url, kind, db_copy)
        yield scratch_url
        return
    if is_sqlite(settings.database_url):
        raise BackupError(
            "verifying a PostgreSQL backup needs a server: give --scratch-url of an empty database"
        )
    name = f"mssante_verify_{uuid.uuid4().hex[:12]}"
    admin = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(settings.database_url).set(database=name).render_as_string(hide_password=False)
        try:
            _load_into(url, kind, db_copy)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def verify(
    settings: Settings,
    src: Path,
    passphrase: Passphrase,
    keyring_from: Path | None = None,
    sample: int = 20,
    scratch_url: str | None = None,
) -> VerifyReport:
    """Open a backup without touching the installation: files against the manifest, the key
    ring export with the passphrase, the audit chain against the checkpoint, and a random
    sample of stored messages decrypted in full (every chunk authenticated)."""
    from mssante.store.blobs import BlobReader

    manifest = read_manifest(src)
    db_copy = _database_file(src, manifest)
    with tempfile.TemporaryDirectory(prefix="mssante-ring-") as tmp:
        ring = _open_ring(src, manifest, passphrase, keyring_from, Path(tmp) / "keyring.json")
    key = AuditKey.from_ring(ring)
    kind = manifest["database"]["kind"]
    with _scratch_database(kind, db_copy, settings, scratch_url) as url:
        audit.bind(url, key)
        engine = make_engine(url)
        try:
            schema = current_revision(engine)
            report = VerifyReport(kind, schema, 0, int(manifest["audit_checkpoint"]["seq"]), 0, 0, 0, 0)
            try:
                report.audit_records = _verify_chain(engine, key, manifest)
            except BackupError as exc:
                report.failures.append(str(exc))
            reader = BlobReader(engine, ring)
            with Session(engine) as session:
                report.messages = int(session.execute(text("SELECT count(*) FROM messages")).scalar_one())
                report.blobs = int(session.execute(text("SELECT count(*) FROM blobs")).scalar_one())
                ids = session.execute(_SAMPLE, {"n": max(sample, 0)}).scalars().all()
                report.sampled = len(ids)
                for blob_id in ids:
                    try:
                        reader.read(session, blob_id)
                        reader.meta(session, [blob_id])
                        report.opened += 1
                    except Exception as exc:  # every failure is reported, none stops the check
                        report.failures.append(f"blob {blob_id}: {exc}")
        finally:
            engine.dispose()
    return report
