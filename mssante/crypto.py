"""Encryption at rest: a key ring outside the database and AES-256-GCM envelope encryption.

Each stored blob (a message body, a DMP document) gets its own random data key; the blob is
sealed in fixed-size chunks so that it can be streamed and read by range, and the data key
is wrapped by the ring's active key. Rotation adds a key and re-wraps the (small) data keys:
content is never re-encrypted and the server keeps running, because it re-reads the ring
when it meets a key id it does not know yet.

A copied database file therefore reveals nothing without the key ring file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32  # AES-256
_META_NONCE = b"M" + bytes(11)


class KeyRingError(Exception):
    """The key ring is missing, unreadable, or does not hold a needed key."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class SealedKey:
    """A data key wrapped by one key of the ring."""

    key_id: str
    wrapped: bytes


class KeyRing:
    """Key-encryption keys, one of them active, plus the key of the deduplication digest."""

    def __init__(self, path: Path, keys: dict[str, bytes], active: str, digest_key: bytes) -> None:
        self.path = path
        self._keys = keys
        self.active = active
        self._digest_key = digest_key
        self._lock = threading.Lock()

    # -- file ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path) -> KeyRing:
        """Create a new ring with one key, readable by its owner only (0600)."""
        if path.exists():
            raise KeyRingError(f"key ring {path} already exists; refusing to overwrite it")
        ring = cls(path, {cls._new_id(1): secrets.token_bytes(KEY_BYTES)}, "", secrets.token_bytes(32))
        ring.active = next(iter(ring._keys))
        ring.save()
        return ring

    @classmethod
    def from_bytes(cls, path: Path, raw: bytes) -> KeyRing:
        """A ring read from ``raw`` (e.g. a decrypted export) that will be saved to ``path``."""
        keys, active, digest_key = cls._parse(path, raw)
        return cls(path, keys, active, digest_key)

    def to_bytes(self) -> bytes:
        """The ring file's content (for an encrypted export; never written anywhere in clear)."""
        return json.dumps(self._document(), indent=2).encode()

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        keys, active, digest_key = cls._read(path)
        return cls(path, keys, active, digest_key)

    @staticmethod
    def _read(path: Path) -> tuple[dict[str, bytes], str, bytes]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyRingError(
                f"key ring {path} is missing: without it stored mail cannot be read "
                "(restore it from backup, or run `mssante init` for a new installation)"
            ) from None
        except OSError as exc:
            raise KeyRingError(f"key ring {path} cannot be read: {exc.strerror}") from None
        return KeyRing._parse(path, raw)

    @staticmethod
    def _parse(path: Path, raw: bytes) -> tuple[dict[str, bytes], str, bytes]:
        try:
            doc = json.loads(raw)
            keys = {kid: _unb64(value) for kid, value in doc["keys"].items()}
            active = doc["active"]
            digest_key = _unb64(doc["digest_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRingError(f"key ring {path} is corrupt ({exc.__class__.__name__})") from None
        if active not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise KeyRingError(f"key ring {path} is corrupt (bad active key or key length)")
        return keys, active, digest_key

    def save(self) -> None:
        """Write atomically with 0600 permissions (write to a temporary file, then rename)."""
        doc = self._document()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _document(self) -> dict[str, object]:
        return {
            "format": 1,
            "active": self.active,
            "digest_key": _b64(self._digest_key),
            "keys": {kid: _b64(k) for kid, k in self._keys.items()},
        }

    @staticmethod
    def _new_id(n: int) -> str:
        return f"k{n}-{datetime.now(UTC):%Y%m%d}"

    def add_key(self) -> str:
        """Add a fresh key, make it active, save; returns its id."""
        kid = self._new_id(len(self._keys) + 1)
        self._keys[kid] = secrets.token_bytes(KEY_BYTES)
        self.active = kid
        self.save()
        return kid

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _key(self, key_id: str) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            # Another process may have rotated: re-read the file once.
            with self._lock:
                keys, active, _ = self._read(self.path)
                self._keys, self.active = keys, active
            key = self._keys.get(key_id)
            if key is None:
                raise KeyRingError(f"key {key_id!r} is not in the key ring {self.path}")
        return key

    def derive(self, purpose: str) -> bytes:
        """A 256-bit key for one purpose (HKDF-SHA256 over the ring's stable secret).

        The secret is the one of the deduplication digest, which ``add_key`` never changes: a
        derived key (the audit chain's) stays the same across ``mssante keys rotate``, so what
        was sealed with it stays verifiable. Distinct purposes give independent keys.
        """
        return HKDF(hashes.SHA256(), 32, salt=b"mssante key ring", info=purpose.encode()).derive(
            self._digest_key
        )

    # -- data keys ----------------------------------------------------------------------
    def wrap(self, data_key: bytes) -> SealedKey:
        nonce = secrets.token_bytes(12)
        kid = self.active
        wrapped = nonce + AESGCM(self._keys[kid]).encrypt(nonce, data_key, kid.encode())
        return SealedKey(kid, wrapped)

    def unwrap(self, sealed: SealedKey) -> bytes:
        key = self._key(sealed.key_id)
        try:
            return AESGCM(key).decrypt(sealed.wrapped[:12], sealed.wrapped[12:], sealed.key_id.encode())
        except InvalidTag:
            raise KeyRingError(f"key {sealed.key_id!r} of the key ring does not open this data") from None

    def digest(self, data: bytes | bytearray | Iterable[bytes | bytearray]) -> bytes:
        """Keyed content digest for deduplication: equal contents match, guesses cannot."""
        mac = hmac.new(self._digest_key, digestmod=hashlib.sha256)
        if isinstance(data, bytes | bytearray):
            mac.update(data)
        else:
            for part in data:
                mac.update(part)
        return mac.digest()


# -- sealing content --------------------------------------------------------------------
def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _chunk_nonce(seq: int) -> bytes:
    return b"\x00" * 4 + seq.to_bytes(8, "big")


def _chunk_aad(seq: int, last: bool) -> bytes:
    # Binding the position and the "last" mark refuses reordered or truncated chunk lists.
    return b"mssante-chunk" + seq.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def seal_chunks(data_key: bytes, data: bytes, chunk_size: int) -> list[bytes]:
    """Encrypt ``data`` as a list of independently authenticated chunks."""
    count = max(1, -(-len(data) // chunk_size))
    pieces = (data[i * chunk_size : (i + 1) * chunk_size] for i in range(count))
    return list(seal_each(data_key, pieces, count))


def seal_each(data_key: bytes, chunks: Iterable[bytes | memoryview], count: int) -> Iterator[bytes]:
    """Encrypt ``count`` plaintext chunks one at a time, as :func:`seal_chunks` would: a large
    content is sealed as it is stored, never held sealed whole."""
    aead = AESGCM(data_key)
    for i, chunk in enumerate(chunks):
        yield aead.encrypt(_chunk_nonce(i), chunk, _chunk_aad(i, i == count - 1))


def open_chunks(data_key: bytes, chunks: Iterable[tuple[int, bytes]], count: int) -> Iterator[bytes]:
    """Decrypt chunks given as (sequence number, ciphertext), in order."""
    aead = AESGCM(data_key)
    for seq, sealed in chunks:
        try:
            yield aead.decrypt(_chunk_nonce(seq), sealed, _chunk_aad(seq, seq == count - 1))
        except InvalidTag:
            raise KeyRingError(f"chunk {seq} failed authentication: stored data was altered") from None


# The small companion values of a blob, each under its own nonce (never a chunk's: those start
# with a zero byte) and its own associated data, so that one cannot be read as the other.
_SMALL = {
    "meta": (_META_NONCE, b"mssante-meta"),
    "search": (b"S" + bytes(11), b"mssante-search"),
    "sort": (b"K" + bytes(11), b"mssante-sort"),
}


def seal_small(data_key: bytes, data: bytes, kind: str = "meta") -> bytes:
    """Encrypt a small companion value under a blob's data key: its parsed structure
    (``meta``), the header fields SEARCH matches (``search``) or the keys SORT and THREAD
    compare (``sort``). Each kind has its own nonce: the key is the blob's alone, each value is
    sealed once under it."""
    nonce, aad = _SMALL[kind]
    return AESGCM(data_key).encrypt(nonce, data, aad)


def open_small(data_key: bytes, sealed: bytes, kind: str = "meta") -> bytes:
    nonce, aad = _SMALL[kind]
    try:
        return AESGCM(data_key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise KeyRingError("stored structure failed authentication: stored data was altered") from None
