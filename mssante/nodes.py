"""Node identity: each ``mssante serve`` process holds its name (``server.hostname``) in the
shared database while it runs, by a heartbeat row.

The name is what the outbound queue's leases carry (a restarting node frees its own leases
at once) and what ``/health`` and the logs show, so two live nodes must never share it: a
node refuses to start while another instance has beaten under the same name within
``STALE_SECONDS``. A node that stops cleanly removes its row; one killed leaves a row that
goes stale, after which the name is free again (at once for a restart on the same machine,
where the dead process can be seen to be gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, Engine, Integer, String, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from mssante import __version__
from mssante.db import Base
from mssante.listening import RunningListener, repeating

if TYPE_CHECKING:
    from mssante.runtime import Runtime

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 10.0
# The heartbeat's and the leave's statements run in a session that loaded no node: nothing for
# the ORM to synchronise (by default it would build a Python evaluator of the WHERE clause at
# each beat, every two seconds, as garbage).
_NOTHING_LOADED = {"synchronize_session": False}


class ClusterNode(Base):
    """A serving node, alive while ``heartbeat_at`` is recent."""

    __tablename__ = "cluster_nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    instance: Mapped[str] = mapped_column(String(32))  # this run of the process
    machine: Mapped[str] = mapped_column(String(255))  # the operating system's host name
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NodeNameInUse(OSError):
    """Another live node already serves under this name (like an address already in use)."""


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _dead_here(row: ClusterNode) -> bool:
    """The row's process ran on this machine and is gone (killed, crashed): a restart under
    the same name need not wait for its heartbeat to go stale."""
    if row.machine != socket.gethostname():
        return False
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


class NodeIdentity:
    """This process's claim on its name."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.instance = uuid.uuid4().hex

    def claim(self) -> None:
        """Take the name, or raise :class:`NodeNameInUse` if a live node holds it."""
        try:
            self._claim()
        except IntegrityError:  # another node inserted the name between our read and write
            raise NodeNameInUse(f"server.hostname {self.name!r} was just taken by another node") from None

    def _claim(self) -> None:
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            row = session.execute(
                select(ClusterNode).where(ClusterNode.name == self.name).with_for_update()
            ).scalar_one_or_none()
            if row is not None and row.instance != self.instance:
                age = (now - _utc(row.heartbeat_at)).total_seconds()
                if age < STALE_SECONDS and not _dead_here(row):
                    raise NodeNameInUse(
                        f"server.hostname {self.name!r} is used by a live node (pid {row.pid}, "
                        f"version {row.version}, heartbeat {age:.1f} s ago): give each node its own "
                        f"name, or wait {STALE_SECONDS:.0f} s after a crashed node"
                    )
                session.delete(row)
                session.flush()
            if row is None or row.instance != self.instance:
                session.add(
                    ClusterNode(
                        name=self.name,
                        instance=self.instance,
                        machine=socket.gethostname(),
                        pid=os.getpid(),
                        version=__version__,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

    def beat(self) -> bool:
        """Refresh the heartbeat; False if our row was taken over (we then claim it back)."""
        with Session(self.engine) as session, session.begin():
            done = session.execute(
                update(ClusterNode)
                .where(ClusterNode.name == self.name, ClusterNode.instance == self.instance)
                .values(heartbeat_at=datetime.now(UTC)),
                execution_options=_NOTHING_LOADED,
            )
            return bool(getattr(done, "rowcount", 0))

    def leave(self) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                delete(ClusterNode).where(
                    ClusterNode.name == self.name, ClusterNode.instance == self.instance
                ),
                execution_options=_NOTHING_LOADED,
            )


def live_nodes(engine: Engine) -> list[str]:
    """Names of the nodes that beat recently (for ``/health`` and operators)."""
    since = datetime.now(UTC) - timedelta(seconds=STALE_SECONDS)
    with Session(engine) as session:
        return list(session.scalars(select(ClusterNode.name).where(ClusterNode.heartbeat_at >= since)))


async def start_node_identity(runtime: Runtime) -> list[RunningListener]:
    """Claim ``server.hostname`` before any door opens, and keep beating while serving."""
    identity = NodeIdentity(runtime.writer_engine, runtime.settings.server.hostname)
    await asyncio.to_thread(identity.claim)

    def heartbeat() -> None:
        if not identity.beat():
            identity.claim()

    # (the database away, a failover: it beats again at the next turn)
    stop_beating = repeating("node heartbeat", HEARTBEAT_SECONDS, heartbeat, log)

    async def close() -> None:
        await stop_beating()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(identity.leave)

    return [
        RunningListener("node", "cluster", runtime.settings.server.hostname, 0, "none", close, public=False)
    ]
