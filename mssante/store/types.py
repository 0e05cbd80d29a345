"""What the store hands out and refuses: folder and message values, flag rules, the errors
protocol code maps to its own answers (IMAP response codes)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from mssante.sqlfast import utc
from mssante.store.spooled import Raw

INBOX = "INBOX"
DELIMITER = "/"
# Folders every BAL gets, with their RFC 6154 special use.
DEFAULT_FOLDERS: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
)
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


class StoreError(Exception):
    """Base of the store's refusals; ``code`` is an IMAP response code when one fits."""

    code: str | None = None


class FolderNotFound(StoreError):
    code = "NONEXISTENT"


class FolderExists(StoreError):
    code = "ALREADYEXISTS"


class FolderNotAllowed(StoreError):
    code = "CANNOT"


class MessageGone(StoreError):
    """The message was expunged (its content collected) while a session still numbered it."""

    code = "EXPUNGEISSUED"


class QuotaExceeded(StoreError):
    code = "OVERQUOTA"

    def __init__(self, bal: str) -> None:
        super().__init__(f"mailbox {bal} is over its quota")
        self.bal = bal


@dataclass(frozen=True)
class FolderInfo:
    id: int
    bal: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool
    first_recent_uid: int = 1


@dataclass(frozen=True)
class FolderStatus:
    folder: FolderInfo
    messages: int
    unseen: int
    size: int
    recent: int = 0
    deleted: int = 0  # messages flagged \\Deleted (STATUS DELETED, RFC 9051)


class MessageRow(NamedTuple):
    """A message without its content; a named tuple because a SELECT builds thousands."""

    uid: int
    flags: tuple[str, ...]
    size: int
    internaldate: datetime
    modseq: int
    blob_id: int


@dataclass(frozen=True)
class AppendResult:
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Outbound:
    """What leaves for other operators: the message, the recipients by domain, and the
    DKIM-Signature field to put on top of it (stored together as the queue's own copy)."""

    raw: Raw
    recipients: dict[str, list[str]]
    signature: bytes = b""


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int
    pairs: list[tuple[int, int]]  # (source uid, destination uid)


def normalise_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """System flags in their canonical case, keywords as given; duplicates removed."""
    seen: dict[str, str] = {}
    for flag in flags:
        canonical = SYSTEM_FLAGS.get(flag.lower(), flag)
        seen.setdefault(canonical.lower(), canonical)
    return tuple(sorted(seen.values(), key=str.lower))


def flags_text(flags: Iterable[str]) -> str:
    return " ".join(normalise_flags(flags))


def split_flags(text: str) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def stored_time(value: datetime | str) -> datetime:
    """A timestamp read with driver SQL: SQLite gives SQLAlchemy's naive UTC text."""
    if isinstance(value, str):
        # Naive text is UTC; parsing it with its offset written out is 4x faster than replace().
        if len(value) <= 26:
            return datetime.fromisoformat(value + "+00:00")
        return utc(datetime.fromisoformat(value))
    return utc(value)
