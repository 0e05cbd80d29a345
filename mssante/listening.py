"""What a front door (SMTP, IMAP, HTTP, the relay worker) hands back to ``mssante serve``.

Its own module so that imports flow one way: the server imports the listeners, the
listeners import this, never the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mssante.runtime import Runtime


@dataclass
class RunningListener:
    name: str
    protocol: str
    host: str
    port: int
    tls: str
    close: Callable[[], Awaitable[None]]
    # False for background workers (outbound relay): not a port anyone connects to.
    public: bool = True


ListenerStarter = Callable[["Runtime"], Awaitable[list[RunningListener]]]
