"""Python's cyclic garbage collector, kept from stalling the event loop.

A full collection visits every container object the process holds, and runs on whichever
thread allocated last, the event loop's as often as not: every session waits for it. A served
process holds some 170,000 such objects loaded at start (modules, SQLAlchemy's tables and
mappers, pydantic's models, the annuaire) and kept for its lifetime. Measured with IMAP clients
on a 10,000-message folder (issue 20, seventh pass): a full collection every one or two
seconds, 70–94 ms each, none of them finding anything to free,
which showed as one repeated `UID SEARCH SUBJECT` in three taking 90 ms instead of 15.

:func:`settle`, once the server has loaded what it keeps, collects and then freezes that heap
(``gc.freeze``: moved out of the collector's sight, still freed by its reference counts), so a
full collection visits what came after (13,000 objects in that run: 10-20 ms); and it makes
young collections rarer (Python's default is one every 700 allocations net of frees), so that
the objects of a command in progress are seldom promoted on their way to being freed, which is
what filled the old generation and called the full collections.
"""

from __future__ import annotations

import gc

# Python's defaults are (700, 10, 10).
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Freeze what the server has loaded and space out young collections (once, at start)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()
    gc.freeze()
