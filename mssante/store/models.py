"""Tables of the message store: accounts (one per BAL), folders, messages, blobs, change feed.

IMAP semantics live in the columns: each folder has a UIDVALIDITY, a strictly increasing
UIDNEXT and a HIGHESTMODSEQ; each message a UID, flags and the MODSEQ of its last change.
A body is stored once (``blobs``, keyed by a keyed digest) however many mailboxes hold it,
encrypted in chunks (``blob_chunks``); its parsed structure is sealed beside it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from mssante.db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants 64-bit ids.
BigId = BigInteger().with_variant(Integer, "sqlite")


class MailAccount(Base):
    """The storage side of one BAL: its quota and usage counters."""

    __tablename__ = "mail_accounts"

    bal: Mapped[str] = mapped_column(String(320), primary_key=True)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    # The last UIDVALIDITY given to a folder of this BAL: a new one is always above it, so a
    # folder deleted and re-created within a second never reuses a value (RFC 3501 §2.3.1.1).
    last_uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Folder(Base):
    """An IMAP mailbox (folder) of a BAL; the name uses "/" as hierarchy delimiter."""

    __tablename__ = "folders"
    __table_args__ = (UniqueConstraint("bal", "name", name="uq_folders_bal_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bal: Mapped[str] = mapped_column(ForeignKey("mail_accounts.bal", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uidnext: Mapped[int] = mapped_column(BigInteger, default=1)
    highestmodseq: Mapped[int] = mapped_column(BigInteger, default=1)
    special_use: Mapped[str | None] = mapped_column(String(32))
    # Messages from this UID on are \Recent for the next session that selects the folder
    # (RFC 3501 §2.3.2: the first session to be told of a message sees it as recent).
    first_recent_uid: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Subscription(Base):
    """A subscribed mailbox name (RFC 3501 §6.3.6): a name, not a folder — it outlives a
    DELETE and may name a folder that does not exist."""

    __tablename__ = "mailbox_subscriptions"

    bal: Mapped[str] = mapped_column(ForeignKey("mail_accounts.bal", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(512), primary_key=True)


class Blob(Base):
    """One stored content, encrypted under its own data key wrapped by the key ring."""

    __tablename__ = "blobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    chunk_count: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    meta: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The header fields SEARCH matches (mssante.store.headerindex), sealed like ``meta``.
    search: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The keys SORT and THREAD compare (mssante.store.sortkeys), sealed like ``meta``.
    sortkeys: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlobIdHigh(Base):
    """The highest blob id ever given (one row), so SQLite never gives a collected blob's id
    to a new one (see ``blobs.put``)."""

    __tablename__ = "blob_id_high"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class BlobChunk(Base):
    __tablename__ = "blob_chunks"

    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


def has_flag(flag: str, dialect: str) -> str:
    """SQL that is true when a message's ``flags`` hold the system flag ``flag``.

    Flags are stored space-separated, system flags in their canonical case; a system flag's
    backslash is in no keyword, so finding its text is finding the flag. The same text is the
    predicate of ``ix_messages_deleted``, which a query must repeat word for word for SQLite
    (and PostgreSQL) to use that partial index."""
    if dialect == "sqlite":
        return f"instr(flags, '{flag}') > 0"
    return "strpos(flags, E'{}') > 0".format(flag.replace("\\", "\\\\"))


class Message(Base):
    """A message in a folder: the per-mailbox state of a shared blob."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid", name="uq_messages_folder_uid"),
        # EXPUNGE and CLOSE look for the folder's \Deleted messages: the few, not the folder.
        Index(
            "ix_messages_deleted",
            "folder_id",
            "uid",
            sqlite_where=text(has_flag("\\Deleted", "sqlite")),
            postgresql_where=text(has_flag("\\Deleted", "postgresql")),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    internaldate: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flags: Mapped[str] = mapped_column(Text, default="")
    modseq: Mapped[int] = mapped_column(BigInteger)


class Change(Base):
    """The change feed: what happened in a folder, in modseq order (IDLE, CONDSTORE, replicas)."""

    __tablename__ = "folder_changes"
    # What a session missed is read by folder and modseq (``changes_since``): with the folder
    # alone in the index, every change the folder ever had was read and filtered.
    __table_args__ = (Index("ix_folder_changes_folder_id_modseq", "folder_id", "modseq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    modseq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # append | expunge | flags
    uid: Mapped[int] = mapped_column(BigInteger)
    flags: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboundEntry(Base):
    """A message waiting to leave for another operator: one entry per (message, remote domain).

    Created in the same transaction that accepts the message, removed once delivered or
    bounced (with a DSN). Several server processes share the queue: a worker claims an entry
    with a lease (``claimed_until``) taken under a row lock.
    """

    __tablename__ = "outbound_queue"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_id: Mapped[int] = mapped_column(ForeignKey("blobs.id"), index=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    domain: Mapped[str] = mapped_column(String(253), index=True)
    recipients: Mapped[str] = mapped_column(Text)  # JSON list of addresses still to deliver
    message_id: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The node (server.hostname) holding the lease: a restarted node frees its own leases at once.
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    delay_warned: Mapped[bool] = mapped_column(Boolean, default=False)


class QueueDelivered(Base):
    """Entries of the submission queue (``smtp.acknowledge = "queued"``) already delivered:
    written in the transaction that delivers one, so that an entry that outlived its delivery
    (a crash between the commit and the entry's removal from ``queue.db``) is not delivered
    twice."""

    __tablename__ = "smtp_queue_delivered"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
