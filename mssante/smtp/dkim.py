"""DKIM (RFC 6376) with dkimpy: sign what leaves for another operator, verify what comes in.

One RSA-2048 key per domain, in ``<dkim.keys_dir>/<domain>.<selector>.key`` (0600); the DNS
TXT record to publish is printed by ``mssante dkim keygen DOMAIN``. Verification results are
written to an ``Authentication-Results`` header (RFC 8601) by the relay-in front door.

dkimpy is given the header block only. The body hash is computed here, a window of about
32 KiB at a time read from the message buffer (or its spool file): dkimpy splits a message into one object per
line and canonicalises the body by whole-body regular expression substitutions, some 35 times
the size of a 20 MiB message in memory (measured: +700 MiB to sign or verify one). The
canonicalisation gives dkimpy's results (same rules, same treatment of trailing empty lines;
checked against it), applied to windows that end at a line end, which no whitespace run
crosses. The content has CRLF line ends (the SMTP session stores it so).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

from mssante.store.mime import parse_headers
from mssante.store.spooled import Raw, SpooledMessage

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
        return self.signature(message, domain) + message

    def signature(self, message: Raw, domain: str, start: int = 0) -> bytes:
        """The DKIM-Signature field for the message at ``message[start:]`` (b"" if no key for
        ``domain``), read in place: the message is neither copied nor changed."""
        key = self._key(domain.lower())
        if key is None:
            return b""
        # Oversign (RFC 6376 §8.15): each name is listed once more than it occurs, so a Subject:
        # or To: added above a signed one (or where there was none) breaks the signature.
        checker = _Windowed(message, start)
        present = Counter(name.lower().encode() for name, _ in parse_headers(checker.header_block))
        include = [name for name in SIGNED_HEADERS for _ in range(present[name] + 1)]
        return checker.sign_windowed(self.selector.encode(), domain.lower().encode(), key, include)


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


def verify(message: Raw, dnsfunc: object | None = None, start: int = 0) -> Verification:
    """Verify the first DKIM signature of the message at ``message[start:]``, read in place.
    ``dnsfunc`` resolves TXT records (tests, closed networks)."""
    try:
        checker = _Windowed(message, start)
    except dkim.MessageFormatError as exc:
        return Verification("permerror", None, str(exc)[:100])
    if b"dkim-signature:" not in checker.header_block.lower():
        return Verification("none", None, "no signature")
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


# -- the body hash, window by window -------------------------------------------------------------

Buffer = bytes | bytearray
# A window is copied out of the message (as ``bytes``: a replacement that finds nothing then
# gives the same object back) and relaxed canonicalisation may copy it twice more: at 256 KiB
# that was 1 MiB of the heap in flight (5 % of a 20 MiB message, measured), at 32 KiB it is a
# tenth of a MiB; the hash costs the same, the loop's own cost (640 turns for 20 MiB) nothing.
WINDOW = 32 * 1024


def _relaxed(window: bytes) -> bytes:
    """dkimpy's relaxed body canonicalisation (``[\\t ]+\\r\\n`` → CRLF, ``[\\t ]+`` → one
    space) by whole-window replacements: a regular expression substitution builds one object
    per match, some 15 times the window in memory on text with a blank every few words."""
    window = window.replace(b"\t", b" ")
    while b"  " in window:
        window = window.replace(b"  ", b" ")
    return window.replace(b" \r\n", b"\r\n")


def _windows(message: Raw, start: int) -> Iterator[bytes]:
    """``message[start:]`` in pieces of about :data:`WINDOW` bytes, each but the last ending
    right after a line feed (one line longer than a window makes a longer piece)."""
    size = len(message)
    pos = start
    while pos < size:
        stop = min(pos + WINDOW, size)
        if stop < size:
            cut = message.rfind(b"\n", pos, stop)
            if cut == -1:
                cut = message.find(b"\n", stop)
            stop = size if cut == -1 else cut + 1
        if isinstance(message, SpooledMessage):
            yield message.read(pos, stop)
        else:
            yield bytes(memoryview(message)[pos:stop])
        pos = stop


def _trailing_line_ends(window: Buffer) -> int:
    """How many CRLF pairs end ``window``."""
    body = window.rstrip(b"\r\n")
    tail = len(window) - len(body)
    while tail and window.count(b"\r\n", len(window) - tail) * 2 != tail:
        tail -= 1  # a CR or LF of the text itself (not a CRLF pair)
    return tail // 2


def body_hash(
    message: Raw, start: int, relaxed: bool, hasher: Callable[[], Any], length: int | None = None
) -> bytes:
    """Digest of the canonical body (RFC 6376 §3.4.3–3.4.4, as dkimpy canonicalises it) of the
    message body at ``message[start:]``; ``length`` is an ``l=`` tag's limit."""
    digest = hasher()
    left = length

    def feed(data: Buffer | memoryview) -> None:
        nonlocal left
        if left is not None:
            data = data[:left]
            left -= len(data)
        digest.update(data)

    held = 0  # empty lines seen last: in the body only if some text follows them
    text = False
    for window in _windows(message, start):
        if relaxed:
            window = _relaxed(window)
        ends = _trailing_line_ends(window)
        content = memoryview(window)[: len(window) - 2 * ends]  # no copy of the window
        if content:
            while held:
                step = min(held, WINDOW // 2)
                feed(b"\r\n" * step)
                held -= step
            feed(content)
            text = True
        held += ends
    if text or not relaxed:  # an empty body is one CRLF (simple) or nothing (relaxed)
        feed(b"\r\n")
    return bytes(digest.digest())


class _Windowed(dkim.DKIM):  # type: ignore[misc]
    """dkimpy holding the header block only; the body hash comes from :func:`body_hash`."""

    def __init__(self, message: Raw, start: int) -> None:
        end = message.find(b"\r\n\r\n", start)
        self.body_start = len(message) if end == -1 else end + 4
        self.header_block = bytes(message[start : self.body_start])
        self.message = message
        super().__init__(self.header_block if end != -1 else self.header_block + b"\r\n\r\n")

    def verify_sig_process(
        self, sig: dict[bytes, bytes], include_headers: Any, sig_header: Any, dnsfunc: Any
    ) -> Any:
        if b"bh" in sig:
            try:
                policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
            except InvalidCanonicalizationPolicyError as exc:
                raise dkim.MessageFormatError(f"invalid c= value: {exc.args[0]}") from None
            length = int(sig[b"l"]) if b"l" in sig and not self.tlsrpt else None
            relaxed = policy.body_algorithm.name == b"relaxed"
            found = body_hash(self.message, self.body_start, relaxed, HASH_ALGORITHMS[sig[b"a"]], length)
            try:
                expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            except (TypeError, ValueError) as exc:
                raise dkim.MessageFormatError(str(exc)) from None
            if found != expected:
                raise dkim.ValidationError("body hash mismatch")
            sig = {k: v for k, v in sig.items() if k != b"bh"}  # checked: dkimpy does the rest
        return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)

    def sign_windowed(self, selector: bytes, domain: bytes, key: bytes, include: list[bytes]) -> bytes:
        """dkimpy's ``sign`` (rsa-sha256, relaxed/relaxed) with the body hash computed here."""
        self.signature_algorithm = b"rsa-sha256"
        self.hasher = hashlib.sha256
        policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        include = [name.lower() for name in include]
        self.include_headers = tuple(include)
        bodyhash = base64.b64encode(body_hash(self.message, self.body_start, True, hashlib.sha256))
        fields = [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", policy.to_c_value()),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bodyhash),
            (b"b", b"0" * 60),  # folded onto its own line, as dkimpy does
        ]
        signed = self.gen_header(fields, include, policy, b"DKIM-Signature", parse_pem_private_key(key))
        self.domain, self.selector = domain, selector
        return b"DKIM-Signature: " + bytes(signed)
