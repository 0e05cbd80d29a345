"""Messages of a folder: their rows, structures and content, flags, expunge, copy and move,
and the durable change feed a session re-reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from mssante import audit
from mssante.audit import AuditEvent
from mssante.sqlfast import dialect_of, run
from mssante.store import blobs as blobstore
from mssante.store.core import (
    INLINE_READ_BYTES,
    INLINE_READ_META,
    StoreCore,
    changes_t,
    folders_t,
    messages_t,
)
from mssante.store.feed import FolderChange
from mssante.store.models import has_flag
from mssante.store.types import (
    CopyResult,
    FolderNotFound,
    MessageGone,
    MessageRow,
    normalise_flags,
    split_flags,
    stored_time,
)
from mssante.store.writer import Light, Notes

# Flag changes of at most this many messages are written in one statement on PostgreSQL.
_ONE_STATEMENT_MAX = 64


def _write_flag_changes(
    session: Session, folder_id: int, modseq: int, changed: list[tuple[int, int, str]], now: datetime
) -> Sequence[Any] | None:
    """PostgreSQL: the messages' new flags and MODSEQ, the folder's HIGHESTMODSEQ, the change
    feed's rows and the audit chain's head taken for the STORE's record (``audit.TAKE_HEAD``,
    its row returned) in one statement, four round trips in one (a STORE is a third of the
    mixed IMAP workload's writes). ``changed``: (message id, uid, flags)."""
    params: dict[str, Any] = {"f": folder_id, "m": modseq, "at": now, "n": 1}
    values, feed = [], []
    for i, (mid, uid, text) in enumerate(changed):
        params |= {f"id{i}": mid, f"uid{i}": uid, f"fl{i}": text}
        values.append(f"(CAST(:id{i} AS BIGINT), CAST(:fl{i} AS TEXT))")
        feed.append(f"(:f, :m, 'flags', :uid{i}, :fl{i}, :at)")
    return run(
        session,
        "WITH bumped AS (UPDATE folders SET highestmodseq = :m WHERE id = :f), "
        "flagged AS (UPDATE messages SET flags = v.flags, modseq = :m "
        f"FROM (VALUES {', '.join(values)}) AS v (id, flags) WHERE messages.id = v.id), "
        "fed AS (INSERT INTO folder_changes (folder_id, modseq, kind, uid, flags, at) "
        f"VALUES {', '.join(feed)}) " + audit.TAKE_HEAD,
        params,
    ).first()


def _locked_flags(
    session: Session, folder_id: int, uids: list[int]
) -> tuple[int, Iterable[Iterable[Any]]] | None:
    """The folder's HIGHESTMODSEQ under its row lock, and (id, uid, flags, modseq) of the
    messages among ``uids``, groups of rows as read; None for a folder that is gone.

    The folder's lock comes first, then the messages are read, so that flags are tested and
    rewritten with no other writer in between. On PostgreSQL, for up to
    ``_ONE_STATEMENT_MAX`` messages, one statement does both (a round trip fewer per STORE,
    a fifth of the mixed IMAP workload): it locks the folder's row and the messages' rows,
    the folder's first (the order of the two statements, and of the UPDATE that follows:
    no new deadlock), and ``FOR UPDATE`` returns the latest committed version of each row
    it locked, so flags another process changed while this waited for the lock are the ones
    read. No row means the folder is gone or none of the messages is left: nothing to change.
    """
    if dialect_of(session) == "postgresql" and len(uids) <= _ONE_STATEMENT_MAX:
        rows = run(
            session,
            "SELECT f.highestmodseq, m.id, m.uid, m.flags, m.modseq FROM folders f "
            "JOIN messages m ON m.folder_id = f.id "
            "WHERE f.id = :f AND m.uid = ANY(CAST(:uids AS BIGINT[])) ORDER BY m.id FOR UPDATE",
            {"f": folder_id, "uids": uids},
        ).all()
        if not rows:
            return None
        return int(rows[0][0]), [[tuple(r[1:]) for r in rows]]
    highest = session.execute(
        select(folders_t.c.highestmodseq).where(folders_t.c.id == folder_id).with_for_update()
    ).scalar()
    if highest is None:
        return None
    groups = (
        session.execute(
            select(messages_t.c.id, messages_t.c.uid, messages_t.c.flags, messages_t.c.modseq).where(
                messages_t.c.folder_id == folder_id, messages_t.c.uid.in_(uids[i : i + 500])
            )
        )
        for i in range(0, len(uids), 500)
    )
    return int(highest), groups


class MessageOps(StoreCore):
    # -- messages ---------------------------------------------------------------------------
    async def messages(self, folder_id: int, since_uid: int = 0) -> list[MessageRow]:
        """The folder's messages in UID order (flags, sizes, dates; no content), UIDs > ``since_uid``."""

        def q(s: blobstore.Reads) -> list[MessageRow]:
            rows = blobstore.rows_iter(
                s,
                "SELECT uid, flags, size, internaldate, modseq, blob_id FROM messages "
                "WHERE folder_id = :f AND uid > :since ORDER BY uid",
                {"f": folder_id, "since": since_uid},
            )
            return [
                MessageRow(uid, split_flags(flags), size, stored_time(at), modseq, blob_id)
                for uid, flags, size, at, modseq, blob_id in rows
            ]

        return await self.read(q, kept=True)  # type: ignore[no-any-return]

    async def meta(self, blob_ids: list[int], only: str | None = None) -> dict[int, dict[str, Any]]:
        """Parsed structures (envelope, body structure, header index) of several messages;
        ``only="envelope"`` when nothing else is needed (cheaper to parse)."""
        if len(blob_ids) <= INLINE_READ_META:
            rows = await self.rows(*self.reader.meta_query(blob_ids))
            return self.reader.open_meta(rows, blobstore.meta_parser(only))
        return await self.read(lambda s: self.reader.meta(s, blob_ids, only), kept=True)  # type: ignore[no-any-return]

    async def body(self, blob_id: int, start: int = 0, end: int | None = None) -> bytes:
        """Plaintext bytes ``[start, end)`` of a message (a section or a partial fetch);
        :class:`MessageGone` when it was expunged and its content collected meanwhile."""
        if end is not None and end - start <= INLINE_READ_BYTES:
            return (await self._window(blob_id, start, end))[0]
        try:
            return await self.read(lambda s: self.reader.read(s, blob_id, start, end), kept=True)  # type: ignore[no-any-return]
        except NoResultFound:
            raise MessageGone(f"message content {blob_id} no longer exists") from None

    async def _window(self, blob_id: int, start: int, end: int) -> tuple[bytes, int]:
        """``[start, end)`` of a blob (a few chunks) and the blob's size, in one statement."""
        if start >= end:
            return b"", 0
        rows = await self.rows(blobstore.READ, blobstore.read_params(blob_id, start, end))
        try:
            data = b"".join(self.reader.chunks_of(blob_id, rows, start, end))
        except NoResultFound:
            raise MessageGone(f"message content {blob_id} no longer exists") from None
        return data, int(rows[0][0])

    async def stream(self, blob_id: int, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Plaintext by windows of four chunks, a chunk decrypted at a time: a large body never
        sits whole in memory. The first window's read also gives the size (READ's rows carry
        the blob's header): a message of up to four chunks, the usual one, is one statement
        (on PostgreSQL one round trip, where a read of the header came first)."""
        step = self.chunk_size * 4
        pos, stop = start, end
        while stop is None or pos < stop:
            upto = pos + step if stop is None else min(pos + step, stop)
            data, size = await self._window(blob_id, pos, upto)
            stop = size if stop is None else min(stop, size)
            if data:
                yield data
            pos = upto

    async def store_flags(
        self,
        folder_id: int,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: Iterable[str],
        *,
        actor: str,
        bal: str | None = None,
        source: str | None = None,
        unchanged_since: int | None = None,
        modified: list[int] | None = None,
    ) -> list[tuple[int, tuple[str, ...], int]]:
        """Change flags; returns (uid, flags, modseq) of every message whose flags changed.

        With ``unchanged_since`` (CONDSTORE), a message whose MODSEQ is above it is left as it
        is and its UID added to ``modified`` — decided under the folder's lock, so the test
        and the change are one step for every session and process."""
        wanted = normalise_flags(flags)
        wanted_l = {f.lower() for f in wanted}
        uid_list = sorted(set(uids))

        def job(session: Session) -> tuple[list[tuple[int, tuple[str, ...], int]], Notes]:
            changed: list[tuple[int, int, str]] = []  # (message id, uid, new flags)
            if modified is not None:
                modified.clear()  # a light job may run twice (see Light)
            # The folder's row lock first (PostgreSQL; SQLite's writer is alone anyway): flags
            # are read, tested against UNCHANGEDSINCE and rewritten with no other process in
            # between, so no change is lost and MODSEQs follow the order of the changes. Under
            # that lock, the HIGHESTMODSEQ read with it is the one to raise.
            found = _locked_flags(session, folder_id, uid_list)
            if found is None:
                return [], Notes()
            highest, rows_found = found
            for rows in rows_found:
                for row in rows:
                    mid, uid, flags_text, row_modseq = row
                    if unchanged_since is not None and row_modseq > unchanged_since:
                        if modified is not None:
                            modified.append(uid)
                        continue
                    current = split_flags(flags_text)
                    if mode == "add":
                        new = normalise_flags((*current, *wanted))
                    elif mode == "remove":
                        new = tuple(f for f in current if f.lower() not in wanted_l)
                    else:
                        new = wanted
                    if new != current:
                        changed.append((mid, uid, " ".join(new)))
            if not changed:
                return [], Notes()
            modseq = int(highest) + 1
            now = datetime.now(UTC)
            taken = None
            if dialect_of(session) == "postgresql" and len(changed) <= _ONE_STATEMENT_MAX:
                taken = _write_flag_changes(session, folder_id, modseq, changed, now)
            else:
                run(
                    session,
                    "UPDATE messages SET flags = :flags, modseq = :modseq WHERE id = :id",
                    [{"flags": text, "modseq": modseq, "id": mid} for mid, _, text in changed],
                )
                run(
                    session,
                    "UPDATE folders SET highestmodseq = :m WHERE id = :f",
                    {"m": modseq, "f": folder_id},
                )
                session.execute(
                    insert(changes_t),
                    [
                        {
                            "folder_id": folder_id,
                            "modseq": modseq,
                            "kind": "flags",
                            "uid": uid,
                            "flags": text,
                            "at": now,
                        }
                        for _, uid, text in changed
                    ],
                )
            notes = Notes()
            notes.extend(FolderChange(folder_id, modseq, "flags", uid, text) for _, uid, text in changed)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="message.flags",
                    bal=bal,
                    source=source,
                    object=f"folder:{folder_id}",
                    detail={"mode": mode, "flags": list(wanted), "count": len(changed)},
                ),
                taken=taken,
            )
            return [(uid, split_flags(text), modseq) for _, uid, text in changed], notes

        return await self.writer.run(Light(job))  # type: ignore[no-any-return]

    async def expunge(
        self,
        folder_id: int,
        uids: Sequence[int] | None = None,
        *,
        actor: str,
        bal: str | None = None,
        source: str | None = None,
    ) -> list[int]:
        """Remove the messages flagged \\Deleted (only among ``uids`` when given); returns their UIDs."""

        def job(session: Session) -> tuple[list[int], Notes]:
            # Only the folder's \Deleted messages are read (``ix_messages_deleted``), not all.
            query = select(
                messages_t.c.id, messages_t.c.uid, messages_t.c.flags, messages_t.c.size, messages_t.c.blob_id
            ).where(messages_t.c.folder_id == folder_id, sql_text(has_flag("\\Deleted", dialect_of(session))))
            if uids is not None:
                query = query.where(messages_t.c.uid.in_(list(uids)))
            doomed = [r for r in session.execute(query) if "\\Deleted" in split_flags(r.flags)]
            if not doomed:
                return [], Notes()
            return self._remove(session, folder_id, doomed, actor, bal, source, "message.expunge")

        return await self.writer.run(job)  # type: ignore[no-any-return]

    def _remove(
        self,
        session: Session,
        folder_id: int,
        rows: list[Any],
        actor: str,
        bal: str | None,
        source: str | None,
        action: str,
    ) -> tuple[list[int], Notes]:
        owner = session.execute(select(folders_t.c.bal).where(folders_t.c.id == folder_id)).scalar_one()
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 500):
            session.execute(delete(messages_t).where(messages_t.c.id.in_(ids[i : i + 500])))
        modseq = self._bump_modseq(session, folder_id)
        now = datetime.now(UTC)
        uids = sorted(r.uid for r in rows)
        session.execute(
            insert(changes_t),
            [
                {
                    "folder_id": folder_id,
                    "modseq": modseq,
                    "kind": "expunge",
                    "uid": uid,
                    "flags": None,
                    "at": now,
                }
                for uid in uids
            ],
        )
        self._refund(session, owner, sum(r.size for r in rows), len(rows))
        self.collect_blobs(session, [r.blob_id for r in rows])
        audit.append(
            session,
            AuditEvent(
                actor=actor,
                action=action,
                bal=bal or owner,
                source=source,
                object=f"folder:{folder_id}",
                detail={"count": len(uids)},
            ),
        )
        return uids, Notes(FolderChange(folder_id, modseq, "expunge", uid) for uid in uids)

    async def copy(
        self,
        src_folder_id: int,
        uids: Sequence[int],
        dst_bal: str,
        dst_name: str,
        *,
        actor: str,
        move: bool = False,
        source: str | None = None,
    ) -> CopyResult:
        """COPY or MOVE messages to another folder (of the same or another BAL); blobs are shared."""
        dst_bal = dst_bal.lower()
        uid_list = sorted(set(uids))

        def job(session: Session) -> tuple[CopyResult, Notes]:
            dst = session.execute(
                select(folders_t.c.id, folders_t.c.uidvalidity).where(
                    folders_t.c.bal == dst_bal, folders_t.c.name == dst_name
                )
            ).first()
            if dst is None:
                raise FolderNotFound(f"no folder {dst_name!r}")
            rows: list[Any] = []
            for i in range(0, len(uid_list), 500):
                rows.extend(
                    session.execute(
                        select(
                            messages_t.c.id,
                            messages_t.c.uid,
                            messages_t.c.flags,
                            messages_t.c.size,
                            messages_t.c.blob_id,
                            messages_t.c.internaldate,
                        ).where(
                            messages_t.c.folder_id == src_folder_id,
                            messages_t.c.uid.in_(uid_list[i : i + 500]),
                        )
                    )
                )
            rows.sort(key=lambda r: r.uid)
            if not rows:
                return CopyResult(int(dst.uidvalidity), []), Notes()
            self._charge(session, dst_bal, sum(r.size for r in rows), len(rows))
            allocated = self._allocate(session, len(rows), folder_id=dst.id)
            assert allocated is not None  # the row was just read in this transaction
            dst_id, first_uid, modseq = allocated
            now = datetime.now(UTC)
            pairs = [(r.uid, first_uid + n) for n, r in enumerate(rows)]
            session.execute(
                insert(messages_t),
                [
                    {
                        "folder_id": dst_id,
                        "uid": first_uid + n,
                        "blob_id": r.blob_id,
                        "size": r.size,
                        "internaldate": r.internaldate,
                        "flags": r.flags,
                        "modseq": modseq,
                    }
                    for n, r in enumerate(rows)
                ],
            )
            session.execute(
                insert(changes_t),
                [
                    {
                        "folder_id": dst_id,
                        "modseq": modseq,
                        "kind": "append",
                        "uid": new_uid,
                        "flags": r.flags,
                        "at": now,
                    }
                    for r, (_, new_uid) in zip(rows, pairs, strict=True)
                ],
            )
            notes = Notes(FolderChange(dst_id, modseq, "append", new_uid) for _, new_uid in pairs)
            audit.append(
                session,
                AuditEvent(
                    actor=actor,
                    action="message.move" if move else "message.copy",
                    bal=dst_bal,
                    source=source,
                    object=f"{dst_name}",
                    detail={"count": len(rows), "from_folder": src_folder_id},
                ),
            )
            if move:
                _, removed = self._remove(
                    session, src_folder_id, rows, actor, None, source, "message.move_out"
                )
                notes.extend(removed)
            return CopyResult(int(dst.uidvalidity), pairs), notes

        return await self.writer.run(job)  # type: ignore[no-any-return]

    async def changes_since(self, folder_id: int, modseq: int, *, recent: bool = False) -> list[FolderChange]:
        """Durable changes of a folder after ``modseq`` (what a session missed, or another node did).

        ``recent``: ``modseq`` is the caller's up-to-date view (NOOP, a poke from another
        node), so the answer is a few rows: read as a small statement, on PostgreSQL on the
        loop's asynchronous connection rather than through a reader thread (the hop cost as
        much as the statement), on SQLite at once."""
        sql = (
            "SELECT folder_id, modseq, kind, uid, flags FROM folder_changes "
            "WHERE folder_id = :f AND modseq > :m ORDER BY id"
        )
        params = {"f": folder_id, "m": modseq}
        if recent:
            return [FolderChange(*r) for r in await self.rows(sql, params)]

        def q(s: blobstore.Reads) -> list[FolderChange]:
            return [FolderChange(*r) for r in blobstore.rows_of(s, sql, params)]

        return await self.read(q, kept=True)  # type: ignore[no-any-return]
