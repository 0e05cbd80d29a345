"""``BODY[HEADER.FIELDS (…)]`` answers kept per message content for every session of the process.

A webmail shows a folder page by page, and for each page asks the same header fields of the
same fifty messages (Roundcube: DATE FROM TO SUBJECT CONTENT-TYPE CC REPLY-TO …, with their
BODYSTRUCTURE). Each answer read the message's first chunk from the store, decrypted it and cut
the fields out of its header, after decoding its whole stored structure to find that header:
4–6 ms a page at every view, where Dovecot answers from its cache file in 0.5–0.7 ms (issue
20). A content never changes and a content id is never reused within a database, so an answer
is kept by content, part and field list in a cache bounded by bytes, the least recently used
dropped first, one per store (:mod:`mssante.imap.perstore`); a kept answer needs neither the
content nor its structure.
Only a session's access to the message leads to its content id: the cache decides nothing.
"""

from __future__ import annotations

from mssante.imap.perstore import Bounded, PerStore

# The memory the kept answers may take (:func:`footprint`): a page of Roundcube's list is about
# 50 × 700 bytes, so some 400 such pages stay in memory across every session of the process.
KEPT_BYTES = 16 * 2**20
# An answer larger than this (a header field list asking for nearly everything) is not kept.
LARGEST = 8 * 1024

Key = tuple[int, tuple[int, ...], tuple[str, ...], bool]  # content id, part, fields, NOT


def footprint(key: Key, data: bytes) -> int:
    """Bytes an entry takes in memory, its key and the cache's slot included (as measured with
    ``tracemalloc``, tests/test_imap_fieldcache.py); the field list is shared by the entries one
    command made."""
    return 260 + len(data)


class FieldCache(Bounded[Key, bytes]):
    """Answers by :data:`Key`, within ``limit`` bytes (:func:`footprint`)."""

    def __init__(self, limit: int = KEPT_BYTES) -> None:
        super().__init__(limit, footprint)

    def put(self, key: Key, data: bytes) -> None:
        if len(data) <= LARGEST:
            self.add(key, data)


field_cache = PerStore(FieldCache)  # the answers kept for each store
