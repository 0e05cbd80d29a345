"""What every command module shares: how a command fails, and which right a flag needs."""

from __future__ import annotations

from delegation.rights import Right
from mssante.store.types import FolderNotFound, StoreError

META_BATCH = 500
# RFC 4314: which right a flag change needs.
_FLAG_RIGHT = {"\\Seen": Right.KEEP_SEEN, "\\Deleted": Right.DELETE_MESSAGES}


class Bad(Exception):
    """A command that cannot run as asked: answered ``BAD``."""


class No(Exception):
    """A command that ran and failed: answered ``NO [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


class Cancelled(Exception):
    """The client cancelled a SASL exchange with ``*``."""


class Silent(Exception):
    """The handler already wrote its tagged response (STARTTLS)."""


def store_no(exc: StoreError, *, trycreate: bool = False) -> No:
    code = exc.code
    if trycreate and isinstance(exc, FolderNotFound):
        code = "TRYCREATE"
    return No(str(exc) or "Operation failed", code)


def flag_right(flag: str) -> Right:
    return _FLAG_RIGHT.get(flag, Right.WRITE_FLAGS)
