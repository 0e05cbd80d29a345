"""Folders of a BAL: listing, status, create, delete, rename, subscriptions and \\Recent."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.sqlfast import run
from mssante.store import blobs as blobstore
from mssante.store.core import (
    StoreCore,
    changes_t,
    folders_t,
    messages_t,
    subscriptions_t,
)
from mssante.store.feed import FolderChange
from mssante.store.models import has_flag
from mssante.store.types import (
    DELIMITER,
    INBOX,
    FolderExists,
    FolderInfo,
    FolderNotAllowed,
    FolderNotFound,
    FolderStatus,
)
from mssante.store.writer import Light, Notes

# FolderInfo's fields, in order, for driver SQL reads.
_FOLDER_COLUMNS = (
    "id, bal, name, uidvalidity, uidnext, highestmodseq, special_use, "
    "EXISTS (SELECT 1 FROM mailbox_subscriptions s WHERE s.bal = folders.bal AND s.name = folders.name), "
    "first_recent_uid"
)


_FOLDER_BY_NAME = f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE bal = :bal AND name = :name"
_ACCOUNT_EXISTS = "SELECT 1 FROM mail_accounts WHERE bal = :bal"


_STATUS_KEPT = 10_000  # folder states whose STATUS counts are kept (LRU)


@functools.cache
def _status_sql(dialect: str) -> str:
    """STATUS's counts of one folder in one statement: messages, size, unseen, recent, deleted."""
    seen, deleted = has_flag("\\Seen", dialect), has_flag("\\Deleted", dialect)
    return (
        "SELECT count(*), coalesce(sum(size), 0), "
        f"coalesce(sum(CASE WHEN {seen} THEN 0 ELSE 1 END), 0), "
        "coalesce(sum(CASE WHEN uid >= :recent THEN 1 ELSE 0 END), 0), "
        f"coalesce(sum(CASE WHEN {deleted} THEN 1 ELSE 0 END), 0) "
        "FROM messages WHERE folder_id = :f"
    )


def _folder_tuple(r: Any) -> FolderInfo:
    """FolderInfo from a driver-SQL row of ``_FOLDER_COLUMNS`` (SQLite gives 0/1 for booleans)."""
    return FolderInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8])


def _one_folder(rows: list[Any], name: str) -> FolderInfo:
    if not rows:
        raise FolderNotFound(f"no folder {name!r}")
    return _folder_tuple(rows[0])


class FolderOps(StoreCore):
    # -- folders ------------------------------------------------------------------------------
    async def ensure_account(self, bal: str) -> None:
        """Create the BAL's storage and default folders if absent (idempotent).

        Called at every IMAP login and for every other BAL a session opens. An account is
        never removed while a server runs, so one seen to exist is remembered by the process,
        and only a BAL that has none yet costs a job in the writer: that job would otherwise
        wait behind the writer's batch of deliveries (a login held up by incoming mail) and,
        on PostgreSQL, cost the writer three round trips for a read."""
        bal = bal.lower()
        if bal in self._accounts_seen:
            return
        if not await self.rows(_ACCOUNT_EXISTS, {"bal": bal}):
            await self.writer.run(Light(lambda s: self._ensure_account(s, bal)))
        self._accounts_seen.add(bal)

    async def folders(self, bal: str) -> list[FolderInfo]:
        def q(s: blobstore.Reads) -> list[FolderInfo]:
            rows = blobstore.rows_of(
                s,
                f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE bal = :bal ORDER BY name",
                {"bal": bal.lower()},
            )
            return [_folder_tuple(r) for r in rows]

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    @staticmethod
    def _folder_row(s: blobstore.Reads, bal: str, name: str) -> FolderInfo:
        return _one_folder(blobstore.rows_of(s, _FOLDER_BY_NAME, {"bal": bal.lower(), "name": name}), name)

    async def folder(self, bal: str, name: str) -> FolderInfo:
        return _one_folder(await self.rows(_FOLDER_BY_NAME, {"bal": bal.lower(), "name": name}), name)

    async def status(self, bal: str, name: str, *, count: bool = True) -> FolderStatus:
        """The folder's counts, summed by the database (the messages are not brought into
        Python to be counted), and kept by the folder's state: clients ask STATUS of every
        folder again and again (a webmail at each refresh, Thunderbird every few minutes), and
        a folder whose HIGHESTMODSEQ has not moved has the same counts (every change to its
        messages raises it), so a repeated STATUS reads the folder's row alone, as Dovecot
        reads its index header. ``count=False``: the folder's row alone (UIDNEXT, UIDVALIDITY,
        HIGHESTMODSEQ), the counts left at zero, for a client that asks nothing else."""
        info = await self.folder(bal, name)
        if not count:
            return FolderStatus(info, 0, 0, 0)
        state = (info.id, info.uidvalidity, info.highestmodseq, info.first_recent_uid)
        counts = self._status_counts.get(state)
        if counts is None:
            sql = _status_sql(self.engine.dialect.name)
            params = {"f": info.id, "recent": info.first_recent_uid}
            # (in a reader thread: a count over a large folder must not hold the event loop)
            rows = await self.read(lambda s: blobstore.rows_of(s, sql, params), kept=True)
            counts = tuple(int(value) for value in rows[0])
            if await self.folder(bal, name) == info:  # nothing changed between the two reads
                self._status_counts[state] = counts
                if len(self._status_counts) > _STATUS_KEPT:
                    self._status_counts.popitem(last=False)
        else:
            self._status_counts.move_to_end(state)
        messages, size, unseen, recent, deleted = counts
        return FolderStatus(info, messages, unseen, size, recent, deleted)

    async def create_folder(self, bal: str, name: str, special_use: str | None = None) -> FolderInfo:
        """Create a folder and any missing parents ("a/b/c" creates "a" and "a/b")."""
        bal = bal.lower()
        if name.upper() == INBOX or not name or name.endswith(DELIMITER):
            raise (
                FolderExists(f"folder {name!r} already exists")
                if name.upper() == INBOX
                else FolderNotAllowed(f"invalid folder name {name!r}")
            )

        def job(session: Session) -> FolderInfo:
            self._ensure_account(session, bal)
            exists = session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == name)
            ).first()
            if exists:
                raise FolderExists(f"folder {name!r} already exists")
            parts = name.split(DELIMITER)
            now = datetime.now(UTC)
            uidvalidity = self._next_uidvalidity(session, bal)
            rows = [
                {
                    "bal": bal,
                    "name": DELIMITER.join(parts[: i + 1]),
                    "uidvalidity": uidvalidity,
                    "uidnext": 1,
                    "highestmodseq": 1,
                    "special_use": special_use if i == len(parts) - 1 else None,
                    "first_recent_uid": 1,
                    "created_at": now,
                }
                for i in range(len(parts))
            ]
            self._insert_ignore(session, folders_t, rows)
            return self._folder_row(session, bal, name)

        return await self.writer.run(job)  # type: ignore[no-any-return]

    @staticmethod
    def _next_uidvalidity(session: Session, bal: str) -> int:
        """A UIDVALIDITY strictly above every one this BAL ever gave (deleted folders
        included: the counter lives on the account), and at least the current second.

        The UPDATE takes the account's row lock, so two processes never hand out one value."""
        row = run(
            session,
            "UPDATE mail_accounts SET last_uidvalidity = CASE WHEN last_uidvalidity >= :now "
            "THEN last_uidvalidity + 1 ELSE :now END WHERE bal = :bal RETURNING last_uidvalidity",
            {"now": int(time.time()), "bal": bal},
        ).first()
        if row is None:
            raise FolderNotFound(f"no mailbox storage for {bal}")
        return int(row[0])

    async def delete_folder(self, bal: str, name: str, *, actor: str, source: str | None = None) -> None:
        bal = bal.lower()
        if name.upper() == INBOX:
            raise FolderNotAllowed("INBOX cannot be deleted")

        def job(session: Session) -> tuple[None, Notes]:
            row = session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == name)
            ).first()
            if row is None:
                raise FolderNotFound(f"no folder {name!r}")
            fid = row.id
            usage = session.execute(
                select(func.count(), func.coalesce(func.sum(messages_t.c.size), 0)).where(
                    messages_t.c.folder_id == fid
                )
            ).one()
            blob_ids = list(
                session.execute(select(messages_t.c.blob_id).where(messages_t.c.folder_id == fid)).scalars()
            )
            session.execute(delete(messages_t).where(messages_t.c.folder_id == fid))
            session.execute(delete(changes_t).where(changes_t.c.folder_id == fid))
            session.execute(delete(folders_t).where(folders_t.c.id == fid))
            self._refund(session, bal, int(usage[1]), int(usage[0]))
            self.collect_blobs(session, blob_ids)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="folder.delete",
                    bal=bal,
                    object=name,
                    source=source,
                    detail={"messages": int(usage[0])},
                ),
            )
            return None, Notes([FolderChange(fid, 0, "deleted", 0)])

        await self.writer.run(job)

    async def rename_folder(
        self, bal: str, old: str, new: str, *, actor: str, source: str | None = None
    ) -> None:
        """Rename a folder and its children; renaming INBOX moves its messages (RFC 3501 §6.3.5)."""
        bal = bal.lower()
        if new.upper() == INBOX or not new:
            raise FolderExists("INBOX already exists")

        def job(session: Session) -> tuple[None, Notes]:
            src = session.execute(
                select(folders_t).where(folders_t.c.bal == bal, folders_t.c.name == old)
            ).first()
            if src is None:
                raise FolderNotFound(f"no folder {old!r}")
            if session.execute(
                select(folders_t.c.id).where(folders_t.c.bal == bal, folders_t.c.name == new)
            ).first():
                raise FolderExists(f"folder {new!r} already exists")
            notes = Notes()
            if old.upper() == INBOX:
                uidvalidity = self._next_uidvalidity(session, bal)
                dst_id = session.execute(
                    insert(folders_t)
                    .values(
                        bal=bal,
                        name=new,
                        uidvalidity=uidvalidity,
                        uidnext=src.uidnext,
                        highestmodseq=1,
                        special_use=None,
                        first_recent_uid=src.first_recent_uid,
                        created_at=datetime.now(UTC),
                    )
                    .returning(folders_t.c.id)
                ).scalar_one()
                uids = list(
                    session.execute(
                        select(messages_t.c.uid).where(messages_t.c.folder_id == src.id)
                    ).scalars()
                )
                session.execute(
                    update(messages_t).where(messages_t.c.folder_id == src.id).values(folder_id=dst_id)
                )
                modseq = self._bump_modseq(session, src.id)
                for uid in uids:
                    session.execute(
                        insert(changes_t).values(
                            folder_id=src.id, modseq=modseq, kind="expunge", uid=uid, at=datetime.now(UTC)
                        )
                    )
                    notes.append(FolderChange(src.id, modseq, "expunge", uid))
            else:
                children = session.execute(
                    select(folders_t.c.id, folders_t.c.name).where(
                        folders_t.c.bal == bal, folders_t.c.name.startswith(old + DELIMITER, autoescape=True)
                    )
                ).all()
                session.execute(update(folders_t).where(folders_t.c.id == src.id).values(name=new))
                self._rename_subscriptions(session, bal, old, new)
                for child in children:
                    session.execute(
                        update(folders_t)
                        .where(folders_t.c.id == child.id)
                        .values(name=new + child.name[len(old) :])
                    )
            audit.append(
                session,
                AuditEvent(
                    actor=actor, action="folder.rename", bal=bal, object=f"{old} -> {new}", source=source
                ),
            )
            return None, notes

        await self.writer.run(job)

    @staticmethod
    def _rename_subscriptions(session: Session, bal: str, old: str, new: str) -> None:
        """A renamed folder keeps its subscription, and so do its children (as Dovecot does)."""
        names = (
            session.execute(
                select(subscriptions_t.c.name).where(
                    subscriptions_t.c.bal == bal,
                    (subscriptions_t.c.name == old)
                    | subscriptions_t.c.name.startswith(old + DELIMITER, autoescape=True),
                )
            )
            .scalars()
            .all()
        )
        for name in names:
            session.execute(
                delete(subscriptions_t).where(subscriptions_t.c.bal == bal, subscriptions_t.c.name == name)
            )
        if names:
            StoreCore._insert_ignore_static(
                session, subscriptions_t, [{"bal": bal, "name": new + n[len(old) :]} for n in names]
            )

    async def set_subscribed(self, bal: str, name: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe a name; whether a folder has that name is not asked
        (RFC 3501 §6.3.6-7: a subscription outlives its folder)."""
        bal = bal.lower()

        def job(session: Session) -> None:
            self._ensure_account(session, bal)
            if subscribed:
                self._insert_ignore(session, subscriptions_t, [{"bal": bal, "name": name}])
            else:
                session.execute(
                    delete(subscriptions_t).where(
                        subscriptions_t.c.bal == bal, subscriptions_t.c.name == name
                    )
                )

        await self.writer.run(job)

    async def usage(self, bal: str) -> tuple[int, int | None, int]:
        """(bytes used, quota in bytes or None for none, messages) of a BAL."""

        def q(s: blobstore.Reads) -> tuple[int, int | None, int]:
            rows = blobstore.rows_of(
                s,
                "SELECT used_bytes, quota_bytes, message_count FROM mail_accounts WHERE bal = :bal",
                {"bal": bal.lower()},
            )
            if not rows:
                return 0, self.default_quota, 0
            used, quota, count = rows[0]
            return int(used), None if quota is None else int(quota), int(count)

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    async def subscriptions(self, bal: str) -> list[str]:
        """The names a BAL subscribed to, existing folders or not (LSUB)."""

        def q(s: blobstore.Reads) -> list[str]:
            rows = blobstore.rows_of(
                s,
                "SELECT name FROM mailbox_subscriptions WHERE bal = :bal ORDER BY name",
                {"bal": bal.lower()},
            )
            return [r[0] for r in rows]

        return await self.read(q, small=True)  # type: ignore[no-any-return]

    async def claim_recent(self, folder_id: int, upto_uid: int) -> int:
        """Take the \\Recent messages of a folder up to ``upto_uid`` (exclusive) for one session.

        Returns the first UID that is recent for the caller: messages from it up to
        ``upto_uid`` are recent to this session and to no other (RFC 3501 §2.3.2). Under the
        folder's row lock, so two sessions — of one process or several — never both get one."""

        def job(session: Session) -> int:
            first = session.execute(
                select(folders_t.c.first_recent_uid).where(folders_t.c.id == folder_id).with_for_update()
            ).scalar()
            if first is None or first >= upto_uid:
                return upto_uid
            session.execute(
                update(folders_t).where(folders_t.c.id == folder_id).values(first_recent_uid=upto_uid)
            )
            return int(first)

        return await self.writer.run(Light(job))  # type: ignore[no-any-return]
