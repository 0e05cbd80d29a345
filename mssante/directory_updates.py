"""The scheduled fetch of the national lists, run inside ``mssante serve`` like a listener.

The work itself (download, import, state) is :mod:`annuaire.updates`; this module only runs it
on a timer, off the event loop, and tells the process's annuaire cache when a list changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from annuaire.updates import refresh, scheduled_lists, status
from mssante.listening import RunningListener
from mssante.runtime import Runtime

log = logging.getLogger("mssante.annuaire.updates")

# How often the worker looks whether a list is due; the interval of each list decides the fetch.
CHECK_SECONDS = 30.0


async def start_directory_updates(runtime: Runtime) -> list[RunningListener]:
    items = scheduled_lists(runtime.settings)
    if not items:
        return []
    work_dir = runtime.settings.server.data_dir / "updates"
    check = min(CHECK_SECONDS, *(item.interval.total_seconds() for item in items))
    stop = asyncio.Event()

    async def run() -> None:
        while not stop.is_set():
            for item in items:
                outcome = await asyncio.to_thread(refresh, runtime.writer_engine, item, work_dir)
                if outcome.status == "imported":
                    runtime.annuaire.invalidate()
                if outcome.status != "not-due":
                    for state in await asyncio.to_thread(status, runtime.engine, [item]):
                        if state["stale"]:
                            log.warning(
                                "%s is stale: last success %s (stale after %d s)",
                                item.name, state["last_success"] or "never",
                                int(item.stale_after.total_seconds()),
                            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check)

    task = asyncio.create_task(run(), name="directory-updates")

    async def close() -> None:
        stop.set()
        await task

    return [RunningListener("directory-updates", "https", "-", 0, "required", close, public=False)]
