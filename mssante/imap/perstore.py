"""What the IMAP side keeps in memory for one store, shared by every session of the process.

Folder ids and message content ids are only unique within one database, and a process may hold
several stores (the tests run servers side by side): such memory is kept per store, and goes
with it.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from mssante.store.store import MessageStore

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PerStore(Generic[T]):
    """One ``T``, made by ``make`` on first use, for each store."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._by_store: weakref.WeakKeyDictionary[MessageStore, T] = weakref.WeakKeyDictionary()

    def __call__(self, store: MessageStore) -> T:
        found = self._by_store.get(store)
        if found is None:
            found = self._by_store[store] = self._make()
        return found


class Bounded(Generic[K, V]):
    """Values by key, the least recently used dropped beyond ``limit`` bytes as ``weigh``
    counts an entry (the SORT keys, the header field answers). Used from the event loop's
    thread only."""

    def __init__(self, limit: int, weigh: Callable[[K, V], int]) -> None:
        self.limit = limit
        self.size = 0
        self._weigh = weigh
        self._kept: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._kept.get(key)
        if value is not None:
            self._kept.move_to_end(key)
        return value

    def add(self, key: K, value: V) -> None:
        replaced = self._kept.pop(key, None)
        if replaced is not None:
            self.size -= self._weigh(key, replaced)
        self._kept[key] = value
        self.size += self._weigh(key, value)
        while self.size > self.limit and self._kept:
            old_key, old = self._kept.popitem(last=False)
            self.size -= self._weigh(old_key, old)

    def __len__(self) -> int:
        return len(self._kept)
