"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3).

IMAP4rev1 clients name mailboxes in this encoding; the store keeps names as Unicode, so the
parser decodes on the way in and the renderer encodes on the way out. Decoding is strict:
RFC 3501 forbids encoding printable ASCII, unterminated shifts and padding bits, and a name
that breaks those rules is a syntax error rather than something to guess at.
"""

from __future__ import annotations

import base64
import binascii


class MUTF7Error(ValueError):
    """A mailbox name that is not valid modified UTF-7."""


def _b64_chunk(text: str) -> bytes:
    raw = text.encode("utf-16-be")
    return base64.b64encode(raw).rstrip(b"=").replace(b"/", b",")


def encode(name: str) -> str:
    """Unicode name → modified UTF-7 (printable ASCII is kept, "&" becomes "&-")."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            out.append("&" + _b64_chunk("".join(pending)).decode("ascii") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Modified UTF-7 → Unicode; raises :class:`MUTF7Error` on anything RFC 3501 forbids."""
    out: list[str] = []
    i = 0
    length = len(name)
    while i < length:
        char = name[i]
        if not 0x20 <= ord(char) <= 0x7E:
            raise MUTF7Error("mailbox name contains a character that is not printable ASCII outside a shift")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end == -1:
            raise MUTF7Error("unterminated modified UTF-7 shift")
        chunk = name[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        out.append(_decode_chunk(chunk))
        # Two shifted sequences back to back must have been written as one.
        if i < length and name[i] == "&" and name[i + 1 : i + 2] != "-":
            raise MUTF7Error("adjacent modified UTF-7 shifts")
    return "".join(out)


def _decode_chunk(chunk: str) -> str:
    if any(c not in _B64_ALPHABET for c in chunk):
        raise MUTF7Error("invalid character in modified UTF-7 shift")
    b64 = chunk.replace(",", "/")
    bits = len(b64) * 6
    if bits % 16 >= 6:  # more leftover bits than padding allows
        raise MUTF7Error("truncated modified UTF-7 shift")
    padded = b64 + "=" * (-len(b64) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise MUTF7Error("invalid modified UTF-7 shift") from exc
    if len(raw) % 2:
        raise MUTF7Error("truncated modified UTF-7 shift")
    # Leftover padding bits must be zero (RFC 2152 canonical form).
    leftover = bits % 16
    if leftover and _B64_VALUE[chunk[-1]] & ((1 << leftover) - 1):
        raise MUTF7Error("non-zero padding bits in modified UTF-7 shift")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise MUTF7Error("invalid UTF-16 in modified UTF-7 shift") from exc
    if any(0x20 <= ord(c) <= 0x7E for c in text):
        raise MUTF7Error("printable ASCII must not be shifted in modified UTF-7")
    return text


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}
