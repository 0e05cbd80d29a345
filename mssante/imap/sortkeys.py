"""The SORT and THREAD keys IMAP has read, kept in memory for every session of the process.

Webmail asks the same ``SORT`` at every page, over the whole folder. A message's content never
changes, so its keys (:mod:`mssante.store.sortkeys`) are kept by content id in a bounded
:class:`KeyCache`, one per store, that every session of the process shares; evicted keys are
read again from the store.
"""

from __future__ import annotations

from collections.abc import Iterable

from mssante.imap.perstore import Bounded, PerStore
from mssante.store.sortkeys import SortKeys

# The memory the kept keys may take, estimated (:func:`footprint`): about 650 bytes a message,
# 1,100 with a References field of five ids; 50,000 messages or so sort from memory, and a folder
# larger than that reads again, at each SORT, the share that no longer fits.
KEPT_BYTES = 32 * 2**20


def footprint(keys: SortKeys) -> int:
    """Bytes the keys read from the store take in the cache, its entry included, as measured
    with ``tracemalloc`` (within 10 %, tests/test_imap_sortkeys.py): a long References field is
    what makes a message's keys large."""
    addresses = (keys.first_from, keys.first_to, keys.first_cc, keys.display_from, keys.display_to)
    text = len(keys.subject) + sum(len(a) for a in addresses)
    parents = keys.parents or ()
    return 550 + text + len(keys.message_id or "") + sum(60 + len(p) for p in parents)


class KeyCache(Bounded[int, SortKeys]):
    """Keys by message content id (never reused within a database), the least recently used
    dropped beyond ``limit`` bytes (:func:`footprint`)."""

    def __init__(self, limit: int = KEPT_BYTES) -> None:
        super().__init__(limit, lambda _blob_id, keys: footprint(keys))

    def lookup(self, blob_ids: Iterable[int], *, threads: bool) -> dict[int, SortKeys]:
        """The keys kept of ``blob_ids`` (``threads``: only those with their thread links)."""
        kept, found = self._kept, {}
        for blob_id in blob_ids:
            keys = kept.get(blob_id)
            if keys is not None and not (threads and keys.parents is None):
                kept.move_to_end(blob_id)
                found[blob_id] = keys
        return found


key_cache = PerStore(KeyCache)  # the keys kept for each store
