"""Server-side IMAP syntax: strings, flags, dates, ENVELOPE, BODYSTRUCTURE and body sections.

Everything is rendered from the parsed structure the store computed at delivery
(:func:`mssante.store.mime.analyse`), never by re-parsing MIME. Strings are written as
quoted strings when RFC 3501 allows it and as literals otherwise (CR, LF, NUL, 8-bit text,
quote-unfriendly length); absent values are ``NIL``. Output is ``bytes`` because a literal's
count is a byte count.

Sections (``BODY[1.2.MIME]``, ``HEADER.FIELDS``...) resolve to byte ranges of the raw
message so that the session can stream them from the blob store; only ``HEADER.FIELDS``
needs the header bytes themselves, to filter them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mssante.imap.commands.values import Section
from mssante.imap.reader import MONTHS

Json = dict[str, Any]

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_MAX_QUOTED = 1024

# Dovecot's stand-in for a multipart that has no parts: RFC 3501 needs at least one body.
_EMPTY_TEXT_PART = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'


def compress(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` → ``1:3,5`` (the UID sets of COPYUID)."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}:{prev}")
            start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


def string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """An IMAP string: quoted when possible, a literal otherwise."""
    if isinstance(value, str) and value.isascii() and value.isprintable() and len(value) <= _MAX_QUOTED:
        # The common case (printable ASCII: always quotable) without the regular expression.
        if "\\" in value or '"' in value:
            value = value.replace("\\", "\\\\").replace('"', '\\"')
        return b'"' + value.encode("ascii") + b'"'
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(raw) <= _MAX_QUOTED and _QUOTABLE.fullmatch(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if utf8 and len(raw) <= _MAX_QUOTED and b"\r" not in raw and b"\n" not in raw and b"\0" not in raw:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def _address(address: list[str | None], utf8: bool) -> bytes:
    return b"(" + b" ".join([b"NIL" if v is None else string(v, utf8=utf8) for v in address]) + b")"


def astring(value: str) -> bytes:
    """A mailbox name or atom-like value: bare when it is a plain atom, else a string."""
    raw = value.encode("utf-8", "surrogateescape")
    if raw and re.fullmatch(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]]+", raw):
        return raw
    return string(raw)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("ascii", "replace") + b")"


def internaldate(when: datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (date-time, RFC 3501 §9), in the date's own zone."""
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{when.day:2d}-{MONTHS[when.month - 1]}-{when.year:04d} '
        f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


# --- ENVELOPE -------------------------------------------------------------------------------


def _address_list(addresses: list[list[str | None]] | None, utf8: bool) -> bytes:
    if not addresses:
        return b"NIL"
    return b"(" + b"".join([_address(address, utf8) for address in addresses]) + b")"


_ADDRESS_FIELDS = ("from", "sender", "reply_to", "to", "cc", "bcc")


def envelope(env: Json, *, utf8: bool = False) -> bytes:
    """``(date subject from sender reply-to to cc bcc in-reply-to message-id)``."""
    fields = [nstring(env.get("date"), utf8=utf8), nstring(env.get("subject"), utf8=utf8)]
    previous: tuple[Any, bytes] | None = None
    for name in _ADDRESS_FIELDS:
        value = env.get(name)
        # Sender and Reply-To are most often From again (RFC 3501 §7.4.2 defaults): once.
        if previous is None or value != previous[0]:
            previous = (value, _address_list(value, utf8))
        fields.append(previous[1])
    fields.append(nstring(env.get("in_reply_to"), utf8=utf8))
    fields.append(nstring(env.get("message_id"), utf8=utf8))
    return b"(" + b" ".join(fields) + b")"


# --- BODYSTRUCTURE ---------------------------------------------------------------------------


def _params(params: list[list[str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(string(k) + b" " + string(v) for k, v in params) + b")"


def _disposition(value: list[Any] | None) -> bytes:
    if not value:
        return b"NIL"
    kind, params = value
    return b"(" + string(kind) + b" " + _params(params) + b")"


def _language(value: str | None) -> bytes:
    if not value:
        return b"NIL"
    tags = [t.strip() for t in value.split(",") if t.strip()]
    if not tags:
        return b"NIL"
    if len(tags) == 1:
        return string(tags[0])
    return b"(" + b" ".join(string(t) for t in tags) + b")"


def body_structure(part: Json, *, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of a part, recursively (RFC 3501 §7.4.2)."""
    if part["type"] == "multipart":
        children = part.get("parts") or []
        inner = (
            b"".join(body_structure(child, extended=extended) for child in children)
            if children
            else _EMPTY_TEXT_PART
        )
        out = b"(" + inner + b" " + string(part["subtype"])
        if extended:
            out += (
                b" "
                + _params(part["params"])
                + b" "
                + _disposition(part.get("disposition"))
                + b" "
                + _language(part.get("language"))
                + b" "
                + nstring(part.get("location"))
            )
        return out + b")"
    fields = [
        string(part["type"]),
        string(part["subtype"]),
        _params(part["params"]),
        nstring(part.get("id")),
        nstring(part.get("description")),
        string(part["encoding"]),
        str(part["size"]).encode(),
    ]
    message = part.get("message")
    if message is not None:
        fields.append(envelope(message["envelope"]))
        fields.append(body_structure(message["part"], extended=extended))
        fields.append(str(part["lines"]).encode())
    elif part["type"] == "text":
        fields.append(str(part["lines"]).encode())
    if extended:
        fields += [
            nstring(part.get("md5")),
            _disposition(part.get("disposition")),
            _language(part.get("language")),
            nstring(part.get("location")),
        ]
    return b"(" + b" ".join(fields) + b")"


# --- sections -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionRange:
    """Bytes ``[start, end)`` of the raw message; ``fields`` set means filter a header block."""

    start: int
    end: int
    fields: tuple[str, ...] | None = None
    exclude: bool = False

    @property
    def filtered(self) -> bool:
        return self.fields is not None


def _child(part: Json, number: int, *, nested: bool) -> Json | None:
    """Part ``number`` inside ``part`` (RFC 3501 §6.4.5 numbering).

    Below a part number, a message/rfc822 part is numbered through its encapsulated message;
    the top-level message is numbered through its own structure.
    """
    message = part.get("message") if nested else None
    if message is not None:
        part = message["part"]
    children = part.get("parts")
    if children is not None:
        return children[number - 1] if 0 < number <= len(children) else None
    # A non-multipart message (top-level or encapsulated) has one part, numbered 1: its body.
    return part if number == 1 and (message is not None or not nested) else None


def find_part(root: Json, numbers: tuple[int, ...]) -> Json | None:
    """The part a part number designates (``()`` is the message itself), or None."""
    part = root
    for depth, number in enumerate(numbers):
        found = _child(part, number, nested=depth > 0)
        if found is None:
            return None
        part = found
    return part


def section_range(root: Json, section: Section) -> SectionRange | None:
    """Where a section lies in the raw message, or None when the message has no such part."""
    part = root
    for depth, number in enumerate(section.part):
        found = _child(part, number, nested=depth > 0)
        if found is None:
            return None
        part = found
    text = section.text
    if not section.part:
        target = root
    elif text in (None, "MIME"):
        target = part
    else:
        # HEADER/TEXT of a part number only exist for an encapsulated message.
        message = part.get("message")
        if message is None:
            return None
        target = message["part"]
    if text is None:
        if not section.part:
            return SectionRange(target["header"][0], target["body"][1])
        return SectionRange(*target["body"])
    if text == "MIME":
        return SectionRange(*target["header"])
    if text == "TEXT":
        return SectionRange(*target["body"])
    start, end = target["header"]
    if text == "HEADER":
        return SectionRange(start, end)
    return SectionRange(start, end, tuple(section.fields), exclude=text == "HEADER.FIELDS.NOT")


def header_fields(block: bytes, names: Iterable[str], *, exclude: bool) -> bytes:
    """The fields of a header block named (or, with ``exclude``, not named), then a blank line."""
    wanted = {n.lower().encode("ascii", "replace") for n in names}
    out: list[bytes] = []
    keep = False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    return b"".join(out) + b"\r\n"


def apply_partial(start: int, end: int, partial: tuple[int, int] | None) -> tuple[int, int]:
    """Narrow ``[start, end)`` to ``<origin.length>``; past the end gives an empty range."""
    if partial is None:
        return start, end
    origin, length = partial
    low = min(start + origin, end)
    return low, min(low + length, end)
