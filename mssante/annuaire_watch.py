"""The annuaire's cached answers kept checked in the background.

Each process answers annuaire questions from memory (``annuaire.lookup.Annuaire``) and
compares that memory with the database's change counter at most every ``refresh_interval``
(one second), so that an import by the CLI or another node is seen within that delay. Left to
the look-ups, the check fell on whichever command came after the second: the event loop could
not answer it from memory, a worker thread read the counter (three round trips on PostgreSQL),
and that command waited for both (issue 20). This task checks twice per interval in a worker
thread, so that the answers are never due when a command asks; should it fall behind, a
look-up checks itself, as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mssante.listening import RunningListener, repeating

if TYPE_CHECKING:
    from mssante.runtime import Runtime

log = logging.getLogger("mssante.annuaire")


async def start_annuaire_watch(runtime: Runtime) -> list[RunningListener]:
    annuaire = runtime.annuaire
    stop = repeating("annuaire check", annuaire.refresh_interval / 2, annuaire.check, log)
    return [RunningListener("annuaire-watch", "internal", "", 0, "none", stop, public=False)]
