"""The national lists fetched by the server itself: the extraction and the liste blanche.

A stale whitelist silently blocks new operators or keeps removed ones, and a stale annuaire
refuses new colleagues: both are published on a schedule by the ANS, so the server fetches
them rather than waiting for someone to run an import. Each fetch:

- goes over HTTPS only, the certificate verified against ``ca_file`` (or the system's store);
- is conditional (``If-None-Match`` / ``If-Modified-Since`` with what the source said last time),
  so an unchanged list costs one small request;
- is bounded (``max_bytes``, checked on the announced length and again while reading) and
  written to a private file of the data directory, never held in memory;
- is imported as a *complete* list in one transaction (:func:`annuaire.importer.import_extraction`
  with ``full``, :func:`annuaire.whitelist.import_whitelist`): the new list replaces the old one
  at the commit, or not at all. A download or a file that does not parse keeps the last good list
  and records the error.

Several server nodes share one database: the node whose ``UPDATE … WHERE attempted_at < due``
changes the row makes the attempt, the others skip it, so a list is fetched once per interval.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, func, or_, select, update

from annuaire.extraction import ImportFileError
from annuaire.importer import ImportReport, import_extraction
from annuaire.models import SOURCE_ANS, Bal, DirectorySource, OperatorDomain
from annuaire.whitelist import import_whitelist
from mssante.db import transaction
from mssante.sqlfast import utc

log = logging.getLogger("mssante.annuaire.updates")

ACTOR = "system:scheduled-update"
EXTRACTION, WHITELIST = "extraction", "whitelist"


class FetchError(Exception):
    """The list could not be downloaded; the last good one stays in force."""


@dataclass(frozen=True, slots=True)
class ScheduledList:
    """One list the server fetches, with its schedule and bounds (from the configuration)."""

    name: str
    url: str
    interval: timedelta
    stale_after: timedelta
    ca_file: Path | None
    max_bytes: int
    timeout: float
    load: Callable[[Engine, Path], ImportReport]
    count: Callable[[Engine], int]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one refresh did: ``not-due``, ``not-modified``, ``imported`` or ``failed``."""

    name: str
    status: str
    report: ImportReport | None = None
    error: str | None = None


def _count_bals(engine: Engine) -> int:
    with engine.connect() as conn:
        query = select(func.count()).where(Bal.active.is_(True), Bal.source == SOURCE_ANS)
        return int(conn.execute(query).scalar_one())


def _count_domains(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(OperatorDomain.active.is_(True))).scalar_one())


def scheduled_lists(settings: Any) -> list[ScheduledList]:
    """The lists this configuration asks the server to fetch (none when no URL is set)."""
    found: list[ScheduledList] = []
    a, w = settings.annuaire, settings.whitelist
    if a.extraction_url:
        found.append(
            ScheduledList(
                EXTRACTION, a.extraction_url, timedelta(seconds=a.interval_seconds),
                timedelta(seconds=a.stale_after_seconds), a.ca_file, a.max_bytes, a.timeout_seconds,
                lambda engine, path: import_extraction(engine, path, full=True, actor=ACTOR), _count_bals,
            )
        )  # fmt: skip
    if w.url:
        found.append(
            ScheduledList(
                WHITELIST, w.url, timedelta(seconds=w.interval_seconds),
                timedelta(seconds=w.stale_after_seconds), w.ca_file, w.max_bytes, w.timeout_seconds,
                lambda engine, path: import_whitelist(engine, path, actor=ACTOR), _count_domains,
            )
        )  # fmt: skip
    return found


def _claim(engine: Engine, item: ScheduledList, now: datetime, force: bool) -> DirectorySource | None:
    """Take this round's attempt (one node per interval), returning the source's last state."""
    with transaction(engine) as session:
        state = session.get(DirectorySource, item.name)
        if state is None:
            session.add(DirectorySource(name=item.name, url=item.url, attempted_at=now))
            return DirectorySource(name=item.name, url=item.url)
        due = now - item.interval
        query = update(DirectorySource).where(DirectorySource.name == item.name)
        if not force:
            query = query.where(
                or_(DirectorySource.attempted_at.is_(None), DirectorySource.attempted_at <= due)
            )
        claimed = session.execute(query.values(attempted_at=now).execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        if state.url != item.url:  # a new source: its validators mean nothing for this one
            state.etag = state.last_modified = None
            state.url = item.url
        return DirectorySource(
            name=state.name, url=state.url, etag=state.etag, last_modified=state.last_modified
        )


def _download(item: ScheduledList, known: DirectorySource, dest: Path) -> dict[str, str] | None:
    """Fetch the list into ``dest``; None when the source says it has not changed (304)."""
    if not item.url.startswith("https://"):
        raise FetchError(f"{item.url}: only https:// sources are fetched")
    context = ssl.create_default_context(cafile=str(item.ca_file) if item.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    headers = {"User-Agent": "mssante scheduled update"}
    if known.etag:
        headers["If-None-Match"] = known.etag
    if known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    try:
        with (
            httpx.Client(verify=context, timeout=item.timeout, follow_redirects=False) as client,
            client.stream("GET", item.url, headers=headers) as response,
        ):
            if response.status_code == 304:
                return None
            if response.status_code != 200:
                raise FetchError(f"{item.url}: HTTP {response.status_code}")
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit() and int(announced) > item.max_bytes:
                raise FetchError(
                    f"{item.url}: {announced} bytes announced, more than max_bytes={item.max_bytes}"
                )
            size = 0
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > item.max_bytes:
                        raise FetchError(f"{item.url}: more than max_bytes={item.max_bytes} bytes")
                    out.write(chunk)
            return {
                k: response.headers[h] for k, h in (("etag", "ETag"), ("last_modified", "Last-Modified"))
                if h in response.headers
            }  # fmt: skip
    except httpx.HTTPError as exc:
        raise FetchError(f"{item.url}: {exc.__class__.__name__}: {exc}") from exc


def _record(engine: Engine, name: str, **values: Any) -> None:
    with transaction(engine) as session:
        session.execute(update(DirectorySource).where(DirectorySource.name == name).values(**values))


def refresh(engine: Engine, item: ScheduledList, work_dir: Path, *, force: bool = False) -> Outcome:
    """One scheduled round for one list: claim, download, import, record. Never raises for a
    bad source: the error is logged, recorded, and the last good list stays in force."""
    now = datetime.now(UTC)
    known = _claim(engine, item, now, force)
    if known is None:
        return Outcome(item.name, "not-due")
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest = work_dir / f"{item.name}.download"
    try:
        validators = _download(item, known, dest)
        if validators is None:
            _record(engine, item.name, succeeded_at=now, last_error=None, entries=item.count(engine))
            log.info("%s: %s not modified", item.name, item.url)
            return Outcome(item.name, "not-modified")
        report = item.load(engine, dest)
    except (FetchError, ImportFileError, OSError) as exc:
        _record(engine, item.name, last_error=str(exc))
        log.warning("%s: update failed, the last good list stays in force: %s", item.name, exc)
        return Outcome(item.name, "failed", error=str(exc))
    finally:
        dest.unlink(missing_ok=True)
    _record(
        engine, item.name, succeeded_at=now, last_error=None, entries=item.count(engine),
        etag=validators.get("etag"), last_modified=validators.get("last_modified"),
        **({"changed_at": now} if report.changed else {}),
    )  # fmt: skip
    log.info("%s: imported from %s: %s", item.name, item.url, report.counts())
    return Outcome(item.name, "imported", report=report)


def status(engine: Engine, items: list[ScheduledList]) -> list[dict[str, Any]]:
    """What an operator watches: each source, its last success, age, entries, last error."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(select(DirectorySource))}
    found = []
    for item in items:
        row = rows.get(item.name)
        succeeded = utc(row.succeeded_at) if row is not None and row.succeeded_at else None
        age = (now - succeeded).total_seconds() if succeeded else None
        found.append(
            {
                "name": item.name,
                "url": item.url,
                "last_success": succeeded.isoformat() if succeeded else None,
                "age_seconds": round(age) if age is not None else None,
                "stale": age is None or age > item.stale_after.total_seconds(),
                "entries": row.entries if row is not None else None,
                "last_error": row.last_error if row is not None else None,
            }
        )
    return found
