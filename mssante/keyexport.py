"""The key ring sealed under a passphrase, for backups kept apart from the database.

Argon2id (RFC 9106's second recommended setting: 3 passes, 64 MiB, 4 lanes) turns the
passphrase into an AES-256-GCM key; the KDF parameters travel in the file and are
authenticated with it (as associated data), so that an export made today opens after the
defaults change, and a file whose parameters were edited is refused. Reading bounds the
parameters: a crafted file cannot make ``restore`` allocate gigabytes.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mssante.crypto import KeyRing

FORMAT = "mssante-keyring-export/1"
PASSPHRASE_ENV = "MSSANTE_BACKUP_PASSPHRASE"
MIN_PASSPHRASE = 12
DEFAULT_KDF = {"name": "argon2id", "time_cost": 3, "memory_kib": 64 * 1024, "parallelism": 4}
_MAX_MEMORY_KIB, _MAX_TIME = 1024 * 1024, 20


class ExportError(Exception):
    """A passphrase that is missing or too short, or an export that does not open."""


@dataclass(frozen=True)
class Passphrase:
    value: bytes
    source: str


def read_passphrase(file: Path | None, *, creating: bool) -> Passphrase:
    """From ``--passphrase-file`` (first line) or ``$MSSANTE_BACKUP_PASSPHRASE``; never argv."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r")
        except OSError as exc:
            raise ExportError(f"cannot read the passphrase file {file}: {exc.strerror}") from None
        source = str(file)
    elif os.environ.get(PASSPHRASE_ENV):
        text, source = os.environ[PASSPHRASE_ENV], f"${PASSPHRASE_ENV}"
    else:
        raise ExportError(f"a passphrase is needed: --passphrase-file FILE or ${PASSPHRASE_ENV}")
    if creating and len(text) < MIN_PASSPHRASE:
        raise ExportError(f"the passphrase ({source}) must have at least {MIN_PASSPHRASE} characters")
    return Passphrase(text.encode("utf-8"), source)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(passphrase: bytes, salt: bytes, kdf: dict[str, object]) -> bytes:
    if kdf.get("name") != "argon2id":
        raise ExportError(f"unknown key derivation {kdf.get('name')!r}")
    try:
        time_cost, memory, lanes = int(kdf["time_cost"]), int(kdf["memory_kib"]), int(kdf["parallelism"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        raise ExportError("key derivation parameters are unreadable") from None
    if not (1 <= time_cost <= _MAX_TIME and 8 * lanes <= memory <= _MAX_MEMORY_KIB and 1 <= lanes <= 64):
        raise ExportError("key derivation parameters are out of bounds")
    return hash_secret_raw(passphrase, salt, time_cost, memory, lanes, 32, Type.ID)


def seal(ring: KeyRing, passphrase: Passphrase) -> bytes:
    """The export file's content."""
    header = {"format": FORMAT, "kdf": dict(DEFAULT_KDF), "salt": _b64(secrets.token_bytes(16))}
    aad = json.dumps(header, sort_keys=True).encode()
    nonce = secrets.token_bytes(12)
    key = _derive(passphrase.value, base64.b64decode(str(header["salt"])), DEFAULT_KDF)
    sealed = AESGCM(key).encrypt(nonce, ring.to_bytes(), aad)
    return json.dumps({**header, "nonce": _b64(nonce), "ciphertext": _b64(sealed)}, indent=2).encode()


def open_export(data: bytes, passphrase: Passphrase, ring_path: Path) -> KeyRing:
    """The key ring of an export (not yet saved: ``ring.save()`` writes it to ``ring_path``)."""
    try:
        doc = json.loads(data)
        header = {"format": doc["format"], "kdf": doc["kdf"], "salt": doc["salt"]}
        nonce, sealed = base64.b64decode(doc["nonce"]), base64.b64decode(doc["ciphertext"])
        salt = base64.b64decode(doc["salt"])
    except (ValueError, KeyError, TypeError):
        raise ExportError("the key ring export is unreadable") from None
    if header["format"] != FORMAT or not isinstance(header["kdf"], dict):
        raise ExportError(f"not a {FORMAT} file")
    key = _derive(passphrase.value, salt, header["kdf"])
    try:
        raw = AESGCM(key).decrypt(nonce, sealed, json.dumps(header, sort_keys=True).encode())
    except InvalidTag:
        raise ExportError(
            "the key ring export does not open: wrong passphrase, or the file was altered"
        ) from None
    return KeyRing.from_bytes(ring_path, raw)
