"""Parse a message once, at delivery, into what IMAP FETCH and SEARCH need.

The result is a JSON-serialisable dict, sealed beside the body, so that ENVELOPE,
BODYSTRUCTURE, ``BODY[section]`` (through byte offsets into the raw message) and header
SEARCH never re-parse MIME. Parsing is by byte offsets on the raw message, which is the only
way to serve IMAP sections byte-exactly.
"""

from __future__ import annotations

import email.utils
import functools
import re
from email.header import decode_header, make_header
from email.message import Message
from typing import Any

from mssante.store import addresses
from mssante.store.spooled import Raw

MAX_DEPTH = 32  # MIME nesting deeper than this is treated as an opaque body
MAX_PARTS = 2000

Json = dict[str, Any]


def _header_end(raw: Raw, start: int, end: int) -> tuple[int, int]:
    """Return (end of the header block including the blank line, start of the body)."""
    if raw.startswith(b"\r\n", start) and start < end:
        return start + 2, start + 2
    if raw.startswith(b"\n", start) and start < end:
        return start + 1, start + 1
    crlf = raw.find(b"\r\n\r\n", start, end)
    # A bare-LF blank line counts only before the first CRLF one (not looked for after it:
    # in the usual CRLF message that search would read the whole body).
    lf = raw.find(b"\n\n", start, end if crlf == -1 else crlf + 2)
    if crlf == -1 and lf == -1:
        return end, end
    if lf == -1:
        return crlf + 4, crlf + 4
    return lf + 2, lf + 2


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# RFC 5322 field name (printable US-ASCII but ":"), right before its colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")


def parse_headers(block: bytes) -> list[tuple[str, str]]:
    """Unfold a header block into (name, raw value) pairs, in order, names as written.

    Lines are cut where standard parsers (Python's ``email``, mail clients) cut them: at CRLF,
    CR or LF, never at the other characters ``str.splitlines`` also breaks on (FF, FS, NEL,
    U+2028…). A line that is neither a field nor a continuation ends the header, as it does
    for those parsers: the reader and this server must see the same ``From:``.
    """
    text = block.decode("utf-8", errors="surrogateescape")
    fields: list[tuple[str, str]] = []
    for line in _LINE_BREAK.split(text):
        if not line:
            break
        if line[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + " " + line.strip())
            continue
        if _FIELD_NAME.match(line) is None:
            break
        name, _, value = line.partition(":")
        fields.append((name, value.strip()))
    return fields


def decode_value(value: str) -> str:
    """RFC 2047 decoding for searching and display; undecodable words are kept as written."""
    if "=?" not in value and value.isascii():
        return value  # no encoded word: what decoding would give back (most fields)
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


class _Named:
    """The first field of each name (case-insensitive), looked up by lower-case name."""

    __slots__ = ("_first",)

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        first: dict[str, str] = {}
        for key, value in fields:
            first.setdefault(key.lower(), value)
        self._first = first

    def get(self, lname: str) -> str | None:
        value = self._first.get(lname)
        if value is None or value.isascii():
            return value
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def envelope(fields: list[tuple[str, str]] | _Named) -> Json:
    """Raw envelope fields in IMAP ENVELOPE order; From defaults Sender and Reply-To."""
    named = fields if isinstance(fields, _Named) else _Named(fields)
    from_ = addresses.parse(named.get("from"))
    return {
        "date": named.get("date"),
        "subject": named.get("subject"),
        "from": from_,
        "sender": addresses.parse(named.get("sender")) or from_,
        "reply_to": addresses.parse(named.get("reply-to")) or from_,
        "to": addresses.parse(named.get("to")),
        "cc": addresses.parse(named.get("cc")),
        "bcc": addresses.parse(named.get("bcc")),
        "in_reply_to": named.get("in-reply-to"),
        "message_id": named.get("message-id"),
    }


def _params(header_value: str | None, header: str = "content-type") -> tuple[str | None, list[list[str]]]:
    if header_value is None:
        return None, []
    if len(header_value) > addresses.CACHED_VALUE_MAX:
        return _parse_params(header_value, header)
    main, rest = _parsed_params(header_value, header)
    return main, [list(pair) for pair in rest]


@functools.lru_cache(maxsize=1024)
def _parsed_params(header_value: str, header: str) -> tuple[str | None, tuple[tuple[str, ...], ...]]:
    """A short Content-Type or Content-Disposition, parsed once (``text/plain; charset=utf-8``
    comes back with most messages)."""
    main, rest = _parse_params(header_value, header)
    return main, tuple(tuple(pair) for pair in rest)


def _parse_params(header_value: str, header: str) -> tuple[str | None, list[list[str]]]:
    msg = Message()
    msg[header] = header_value
    params = msg.get_params(header=header) or []
    if not params:
        return None, []
    main = params[0][0].strip().lower() or None
    rest = []
    for key, val in params[1:]:
        if isinstance(val, tuple):  # RFC 2231 encoded
            val = email.utils.collapse_rfc2231_value(val)
        rest.append([key.lower(), str(val)])
    return main, rest


class _Counter:
    parts = 0


def _part(
    raw: Raw,
    start: int,
    end: int,
    default_type: str,
    depth: int,
    counter: _Counter,
    fields: list[tuple[str, str]] | None = None,
) -> Json:
    """One MIME part (``fields``: its header, when the caller already parsed it)."""
    counter.parts += 1
    header_end, body_start = _header_end(raw, start, end)
    named = _Named(parse_headers(bytes(raw[start:header_end])) if fields is None else fields)
    ctype, params = _params(named.get("content-type"))
    if not ctype or "/" not in ctype:
        ctype, params = default_type, ([["charset", "us-ascii"]] if default_type == "text/plain" else [])
    maintype, _, subtype = ctype.partition("/")
    disp_type, disp_params = _params(named.get("content-disposition"), "content-disposition")
    # Counted in place: slicing a 20 MiB attachment's body would copy it.
    lines = raw.count(b"\n", body_start, end)
    if end > body_start and raw[end - 1 : end] != b"\n":
        lines += 1
    part: Json = {
        "header": [start, header_end],
        "body": [body_start, end],
        "type": maintype,
        "subtype": subtype,
        "params": params,
        "id": named.get("content-id"),
        "description": named.get("content-description"),
        "encoding": (named.get("content-transfer-encoding") or "7bit").lower(),
        "size": end - body_start,
        "lines": lines,
        "md5": named.get("content-md5"),
        "disposition": [disp_type, disp_params] if disp_type else None,
        "language": named.get("content-language"),
        "location": named.get("content-location"),
    }
    if depth >= MAX_DEPTH or counter.parts >= MAX_PARTS:
        return part
    if maintype == "multipart":
        boundary = dict((k, v) for k, v in params).get("boundary")
        if boundary:
            child_default = "message/rfc822" if subtype == "digest" else "text/plain"
            part["parts"] = [
                _part(raw, s, e, child_default, depth + 1, counter)
                for s, e in _split_multipart(raw, body_start, end, boundary.encode("utf-8", "replace"))
            ]
    elif maintype == "message" and subtype in ("rfc822", "global"):
        inner_end, _ = _header_end(raw, body_start, end)
        inner_fields = parse_headers(bytes(raw[body_start:inner_end]))
        part["message"] = {
            "envelope": envelope(inner_fields),
            "part": _part(raw, body_start, end, "text/plain", depth + 1, counter),
        }
    return part


def _split_multipart(raw: Raw, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the body parts between ``--boundary`` delimiter lines."""
    delim = b"--" + boundary
    spans: list[tuple[int, int]] = []
    # Delimiters: at the very start of the body, or right after a line break.
    pos = start if raw.startswith(delim, start) else raw.find(b"\n" + delim, start, end)
    if pos == -1:
        return spans
    if pos != start:
        pos += 1
    part_start: int | None = None
    while pos != -1 and pos < end:
        if part_start is not None:
            # The line break before a delimiter belongs to the delimiter.
            part_end = pos - 1
            if part_end > part_start and raw[part_end - 1 : part_end] == b"\r":
                part_end -= 1
            spans.append((part_start, max(part_start, part_end)))
        after = pos + len(delim)
        if raw.startswith(b"--", after):
            break
        line_end = raw.find(b"\n", after, end)
        if line_end == -1:
            break
        part_start = line_end + 1
        nxt = raw.find(b"\n" + delim, part_start - 1, end)
        pos = nxt + 1 if nxt != -1 else -1
    return spans


def analyse(raw: Raw, start: int = 0) -> Json:
    """Everything FETCH and SEARCH need, computed once, in place (offsets count from ``start``
    of ``raw``: the message is never copied whole)."""
    header_end, _ = _header_end(raw, start, len(raw))
    fields = parse_headers(bytes(raw[start:header_end]))
    root = _part(raw, start, len(raw), "text/plain", 0, _Counter(), fields)
    return {
        "envelope": envelope(fields),
        "headers": [[name, decode_value(value)] for name, value in fields],
        "part": root,
        "attachments": count_attachments(root),
    }


def count_attachments(part: Json) -> int:
    """Parts a reader would call attachments: declared so, or non-text leaves with a file name."""
    if "parts" in part:
        return sum(count_attachments(p) for p in part["parts"])
    disposition = part.get("disposition")
    if disposition and disposition[0] == "attachment":
        return 1
    has_name = any(k in ("name", "filename") for k, _ in part.get("params", [])) or bool(
        disposition and any(k == "filename" for k, _ in disposition[1])
    )
    return 1 if has_name and part["type"] != "text" else 0


def attachment_types(part: Json) -> tuple[str, ...]:
    """``type/subtype`` of each part :func:`count_attachments` counts, in order."""
    if "parts" in part:
        return tuple(t for p in part["parts"] for t in attachment_types(p))
    if count_attachments(part):
        return (f"{part['type']}/{part['subtype']}".lower(),)
    return ()
