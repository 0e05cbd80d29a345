"""Reading what the server stored, from the test side (until IMAP covers every case)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mssante.config import load_settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.store.blobs import BlobReader
from mssante.store.models import Folder, Message, OutboundEntry


class StoredMail:
    """Read-only view of a data directory's store (SQLite), safe beside a running server."""

    def __init__(self, data_dir: Path) -> None:
        settings = load_settings(None, server={"data_dir": str(data_dir)})
        self.engine = make_engine(settings.database_url)
        self.reader = BlobReader(self.engine, KeyRing.load(settings.keyring_path))

    def messages(self, bal: str, folder: str = "INBOX") -> list[bytes]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(Message.blob_id)
                .join(Folder, Folder.id == Message.folder_id)
                .where(Folder.bal == bal.lower(), Folder.name == folder)
                .order_by(Message.uid)
            ).scalars()
            return [self.reader.read(s, blob_id) for blob_id in rows]

    def with_subject(self, bal: str, subject: str) -> list[bytes]:
        needle = f"Subject: {subject}\r\n".encode()
        return [m for m in self.messages(bal) if needle in m]

    def queued(self) -> list[tuple[str, list[str], bytes]]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(OutboundEntry.domain, OutboundEntry.recipients, OutboundEntry.blob_id)
            ).all()
            return [(r.domain, json.loads(r.recipients), self.reader.read(s, r.blob_id)) for r in rows]

    def close(self) -> None:
        self.engine.dispose()


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` until true (for effects that follow an acknowledgement)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
