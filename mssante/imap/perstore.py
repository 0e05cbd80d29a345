"""What the IMAP side keeps in memory for one store, shared by every session of the process.

Folder ids and message content ids are only unique within one database, and a process may hold
several stores (the tests run servers side by side): such memory is kept per store, and goes
with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from mssante.store.store import MessageStore

T = TypeVar("T")


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
