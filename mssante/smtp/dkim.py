"""DKIM (RFC 6376) with dkimpy: sign what leaves for another operator, verify what comes in.

One RSA-2048 key per domain, in ``<dkim.keys_dir>/<domain>.<selector>.key`` (0600); the DNS
TXT record to publish is printed by ``mssante dkim keygen DOMAIN``. Verification results are
written to an ``Authentication-Results`` header (RFC 8601) by the relay-in front door.
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mssante.store.mime import parse_headers

# Headers covered by our signatures (From is mandatory; the rest protect what readers see).
SIGNED_HEADERS = [
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"sender",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"x-mss-ins",
    b"x-mss-codecda",
    b"x-mss-mes",
]


class DKIMError(Exception):
    """A key that cannot be created or used."""


def key_path(keys_dir: Path, domain: str, selector: str) -> Path:
    return keys_dir / f"{domain.lower()}.{selector}.key"


def generate_key(keys_dir: Path, domain: str, selector: str) -> tuple[Path, str]:
    """Create the domain's key (if absent) and return (path, DNS TXT record)."""
    path = key_path(keys_dir, domain, selector)
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    return path, txt_record(path, domain, selector)


def txt_record(path: Path, domain: str, selector: str) -> str:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f'{selector}._domainkey.{domain}. IN TXT "v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"'


class Signer:
    """Signs outgoing messages with the key of their sender's domain, when one exists."""

    def __init__(self, keys_dir: Path, selector: str) -> None:
        self.keys_dir = keys_dir
        self.selector = selector
        self._keys: dict[str, bytes | None] = {}

    def _key(self, domain: str) -> bytes | None:
        if domain not in self._keys:
            path = key_path(self.keys_dir, domain, self.selector)
            self._keys[domain] = path.read_bytes() if path.exists() else None
        return self._keys[domain]

    def sign(self, message: bytes, domain: str) -> bytes:
        """``message`` with a DKIM-Signature header prepended (unchanged if no key for ``domain``)."""
        key = self._key(domain.lower())
        if key is None:
            return message
        # Oversign (RFC 6376 §8.15): each name is listed once more than it occurs, so a Subject:
        # or To: added above a signed one (or where there was none) breaks the signature.
        end = message.find(b"\r\n\r\n")
        present = Counter(name.lower().encode() for name, _ in parse_headers(message[: end + 2]))
        include = [name for name in SIGNED_HEADERS for _ in range(present[name] + 1)]
        signature = dkim.sign(
            message,
            self.selector.encode(),
            domain.lower().encode(),
            key,
            include_headers=include,
            canonicalize=(b"relaxed", b"relaxed"),
        )
        return bytes(signature) + message


@dataclass(frozen=True)
class Verification:
    result: str  # pass | fail | none | permerror | temperror (RFC 8601)
    domain: str | None
    reason: str = ""

    def header(self, authserv_id: str) -> bytes:
        domain = f" header.d={self.domain}" if self.domain else ""
        reason = f' reason="{self.reason}"' if self.reason else ""
        return f"Authentication-Results: {authserv_id}; dkim={self.result}{reason}{domain}\r\n".encode()


def _domain(checker: dkim.DKIM) -> str | None:
    return checker.domain.decode() if checker.domain else None


def verify(message: bytes, dnsfunc: object | None = None) -> Verification:
    """Verify the first DKIM signature. ``dnsfunc`` resolves TXT records (tests, closed networks)."""
    if b"dkim-signature:" not in message[: message.find(b"\r\n\r\n") + 2].lower():
        return Verification("none", None, "no signature")
    checker = dkim.DKIM(message)
    try:
        ok = checker.verify(dnsfunc=dnsfunc) if dnsfunc is not None else checker.verify()
    except dkim.DnsTimeoutError as exc:
        return Verification("temperror", _domain(checker), str(exc)[:100])
    except dkim.ValidationError:  # e.g. the body hash does not match: the message was altered
        return Verification("fail", _domain(checker), "signature did not verify")
    except dkim.DKIMException as exc:  # malformed signature or key
        return Verification("permerror", _domain(checker), str(exc)[:100])
    domain = _domain(checker)
    return Verification("pass" if ok else "fail", domain, "" if ok else "signature did not verify")
