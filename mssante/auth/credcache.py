"""A short-lived memory of passwords already verified, so a login costs milliseconds, not an
argon2 hash (Dovecot's ``auth_cache``).

What is kept is never the password: an entry is keyed by HMAC-SHA256(login, password) under a
random key drawn when the process starts (so a memory dump cannot be brute-forced offline
against the key-less hash, and nothing survives a restart), and holds the expiry and a digest
of the stored hash it was verified against. An entry only counts while the account row still
holds that very hash: a password change (new salt, new hash) makes every entry of the account
miss at once, in every process, since each login reads the row anyway. The caller also drops a
login's entries when it is blocked, and does not consult the cache for a disabled account or one
with a second factor.

Bounded: at most ``max_entries`` (the oldest insertions go first); ``ttl_seconds`` after a
verification the entry is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    hash_digest: bytes
    login: str


class VerifiedCredentials:
    def __init__(self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.max_entries, self.clock = ttl_seconds, max_entries, clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # used from worker threads

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def _digest(self, login: str, password: str) -> bytes:
        message = login.encode("utf-8") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, hashlib.sha256)

    def _hash_digest(self, stored_hash: str) -> bytes:
        return hmac.digest(self._key, b"hash\0" + stored_hash.encode("ascii", "replace"), hashlib.sha256)

    def hit(self, login: str, password: str, stored_hash: str) -> bool:
        """Whether this password was verified against this stored hash less than ttl ago."""
        if not self.enabled:
            return False
        digest = self._digest(login, password)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            if entry.expires <= self.clock():
                del self._entries[digest]
                return False
            return hmac.compare_digest(entry.hash_digest, self._hash_digest(stored_hash))

    def remember(self, login: str, password: str, stored_hash: str) -> None:
        if not self.enabled:
            return
        entry = _Entry(self.clock() + self.ttl, self._hash_digest(stored_hash), login)
        digest = self._digest(login, password)
        with self._lock:
            self._entries.pop(digest, None)
            self._entries[digest] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, login: str) -> int:
        """Drop every entry of ``login`` (it was blocked, disabled or its password changed)."""
        with self._lock:
            gone = [d for d, e in self._entries.items() if e.login == login]
            for digest in gone:
                del self._entries[digest]
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)
