"""APPEND of binary content (RFC 3516 §4.4): parts sent raw in a literal8 are stored base64.

A part with ``Content-Transfer-Encoding: binary`` (or holding NUL bytes) cannot be returned by
``BODY[...]``, whose literals may not carry NUL; as Dovecot does, such a part is re-encoded
in base64 when the message is stored, with its header saying so. ``BINARY[...]`` undoes the
encoding, so a client that sent binary gets its bytes back; others get valid 7-bit MIME.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from mssante.store.mime import analyse
from mssante.store.spooled import Raw

_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[^\n]*\n(?:[ \t][^\n]*\n)*")


def _binary_leaves(part: dict[str, Any], raw: Raw) -> list[dict[str, Any]]:
    if "parts" in part:
        return [leaf for child in part["parts"] for leaf in _binary_leaves(child, raw)]
    message = part.get("message")
    if message is not None:
        return _binary_leaves(message["part"], raw)
    start, end = part["body"]
    return [part] if part.get("encoding") == "binary" or raw.find(b"\0", start, end) != -1 else []


def encode_binary_parts(raw: Raw) -> Raw:
    """The message with every binary leaf part base64-encoded (unchanged when there is none)."""
    leaves = _binary_leaves(analyse(raw)["part"], raw)
    if not leaves:
        return raw
    out = bytearray()
    position = 0
    for leaf in sorted(leaves, key=lambda p: p["header"][0]):
        header_start, header_end = leaf["header"]
        body_start, body_end = leaf["body"]
        header = _CTE_FIELD.sub(b"", raw[header_start:header_end].rstrip(b"\r\n") + b"\r\n")
        if header == b"\r\n":
            header = b""
        out += raw[position:header_start]
        out += header + b"Content-Transfer-Encoding: base64\r\n\r\n"
        out += base64.encodebytes(raw[body_start:body_end]).replace(b"\n", b"\r\n")
        position = body_end
    out += raw[position:]
    return bytes(out)
