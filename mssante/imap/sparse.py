"""Sets that most sessions never fill: the shared empty ``frozenset`` until a first element.

An idle IMAP session used to hold eight empty sets (expunged-elsewhere, ``\\Recent``, flag news,
pending audit records…), some 2 KB of its 13 KB of small Python objects. Those objects come
from CPython's small-object arenas, and an arena a burst of logins filled is returned to the
system only once every object in it is freed: one long-lived object made during the burst
keeps a whole 1 MiB arena. Measured (``bench/idle_restarts.py`` style, 1,000 sessions on a
20,000-message INBOX), the memory kept after the logouts grows byte for byte with a session's
small objects (ten more empty sets a session: +2.2 MiB kept), so every object an idle session
does not make is memory given back.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar

T = TypeVar("T", bound=Hashable)

EMPTY: frozenset[Any] = frozenset()  # (CPython's one empty frozenset: nothing is made)


def added(items: AbstractSet[T], item: T) -> set[T]:
    """``items`` with ``item``: the set itself, or a set of its own for the shared empty one."""
    if isinstance(items, set):
        items.add(item)
        return items
    return {*items, item}


def removed(items: AbstractSet[T], item: T) -> AbstractSet[T]:
    """``items`` without ``item`` (only a set of its own can hold one)."""
    if item in items:
        assert isinstance(items, set)
        items.discard(item)
    return items
