"""RFC 5322 address lists as IMAP ENVELOPE sees them (RFC 3501 §7.4.2), groups included.

``email.utils.getaddresses`` drops group syntax (``team: a@b, c@d;``) and the comments that
old mailers put the display name in (``user@host (Real Name)``). ENVELOPE needs both: a group
is written as a start marker ``(NIL NIL "team" NIL)``, its members, and an end marker
``(NIL NIL NIL NIL)``, an empty group as the two markers alone. The parser is lenient, as a
mail store must be: it never rejects a header, it reads what can be read.

An address is ``[name, adl, mailbox, host]``; a group start is ``[None, None, name, None]``
and a group end ``[None, None, None, None]``. Names are kept as written (quotes removed,
RFC 2047 words left encoded, as ENVELOPE carries them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

Address = list[str | None]

_SPECIALS = '()<>[]:;@\\,."'


@dataclass(frozen=True)
class _Token:
    kind: str  # "atom", "quoted", "comment", "literal" (domain literal) or the special itself
    text: str


def _tokens(value: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        if char in " \t\r\n":
            i += 1
        elif char == '"':
            i, text = _delimited(value, i + 1, '"')
            out.append(_Token("quoted", text))
        elif char == "(":
            depth, j, chars = 1, i + 1, []
            while j < n and depth:
                c = value[j]
                if c == "\\" and j + 1 < n:
                    chars.append(value[j + 1])
                    j += 2
                    continue
                depth += c == "("
                depth -= c == ")"
                if depth:
                    chars.append(c)
                j += 1
            out.append(_Token("comment", " ".join("".join(chars).split())))
            i = j
        elif char == "[":
            i, text = _delimited(value, i + 1, "]")
            out.append(_Token("literal", "[" + text + "]"))
        elif char in _SPECIALS:
            out.append(_Token(char, char))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in " \t\r\n":
                j += 1
            out.append(_Token("atom", value[i:j]))
            i = j
    return out


def _delimited(value: str, i: int, end: str) -> tuple[int, str]:
    text: list[str] = []
    while i < len(value) and value[i] != end:
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        text.append(value[i])
        i += 1
    return i + 1, "".join(text)


def _words(tokens: list[_Token]) -> str | None:
    """A phrase: its words joined by one space (quoted strings unquoted, comments dropped)."""
    words = [t.text for t in tokens if t.kind in ("atom", "quoted", ".")]
    text = " ".join(words).replace(" . ", ".").strip()
    return text or None


def _addr_spec(tokens: list[_Token]) -> tuple[str | None, str | None]:
    """(local part, domain) of ``local@domain`` tokens; comments and spaces do not count."""
    parts = [t for t in tokens if t.kind != "comment"]
    at = max((i for i, t in enumerate(parts) if t.kind == "@"), default=-1)
    local = "".join(t.text if t.kind != "quoted" else _quote_local(t.text) for t in parts[:at] if at >= 0)
    if at < 0:
        local = "".join(t.text if t.kind != "quoted" else _quote_local(t.text) for t in parts)
        return local or None, None
    domain = "".join(t.text for t in parts[at + 1 :])
    return local or None, domain or None


def _quote_local(text: str) -> str:
    plain = text and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in text)
    return text if plain else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mailbox(tokens: list[_Token]) -> Address | None:
    """One mailbox: ``name <route:local@domain>`` or ``local@domain (comment)``."""
    if not tokens:
        return None
    opening = next((i for i, t in enumerate(tokens) if t.kind == "<"), None)
    if opening is not None:
        closing = next((i for i, t in enumerate(tokens) if t.kind == ">" and i > opening), len(tokens))
        inner = [t for t in tokens[opening + 1 : closing] if t.kind != "comment"]
        adl = None
        colon = next((i for i, t in enumerate(inner) if t.kind == ":"), None)
        if colon is not None and inner and inner[0].kind == "@":
            adl = "".join(t.text for t in inner[:colon]) or None
            inner = inner[colon + 1 :]
        local, domain = _addr_spec(inner)
        name = _words(tokens[:opening])
        if name is None:
            comments = [t.text for t in tokens[:opening] + tokens[closing + 1 :] if t.kind == "comment"]
            name = comments[-1] if comments and comments[-1] else None
        if local is None and domain is None and name is None:
            return None
        return [name, adl, local, domain if domain is not None else ""]
    local, domain = _addr_spec(tokens)
    comments = [t.text for t in tokens if t.kind == "comment" and t.text]
    if local is None and domain is None:
        return None
    return [comments[-1] if comments else None, None, local, domain if domain is not None else ""]


# Header values up to this long are parsed once for all (a From: or To: comes back with every
# message of its sender or recipient); 4,096 of them at most.
CACHED_VALUE_MAX = 256


def parse(value: str | None) -> list[Address] | None:
    """The ENVELOPE address list of a header value; None when it holds no address or group."""
    if not value:
        return None
    if len(value) > CACHED_VALUE_MAX:
        return _parse(value)
    parsed = _parsed(value)
    return None if parsed is None else [list(address) for address in parsed]


@functools.lru_cache(maxsize=4096)
def _parsed(value: str) -> tuple[tuple[str | None, ...], ...] | None:
    addresses = _parse(value)
    return None if addresses is None else tuple(tuple(address) for address in addresses)


def _parse(value: str) -> list[Address] | None:
    tokens = _tokens(value)
    out: list[Address] = []
    current: list[_Token] = []
    in_group = False
    angle = 0
    for token in tokens:
        kind = token.kind
        if kind == "<":
            angle += 1
        elif kind == ">":
            angle = max(0, angle - 1)
        if angle:
            current.append(token)
            continue
        if kind == ":" and not in_group and not any(t.kind == "<" for t in current):
            out.append([None, None, _words(current) or "", None])
            current, in_group = [], True
        elif kind == ";" and in_group:
            member = _mailbox(current)
            if member is not None:
                out.append(member)
            out.append([None, None, None, None])
            current, in_group = [], False
        elif kind == ",":
            member = _mailbox(current)
            if member is not None:
                out.append(member)
            current = []
        else:
            current.append(token)
    member = _mailbox(current)
    if member is not None:
        out.append(member)
    if in_group:
        out.append([None, None, None, None])
    return out or None


def searchable(addresses: list[Address] | None) -> str:
    """What SEARCH FROM/TO/CC/BCC match against: ``name <local@domain>`` per address, group
    names included, comments and routes left out (so ``user@host (x)`` is found as
    ``user@host``)."""
    pieces: list[str] = []
    for name, _adl, mailbox, host in addresses or ():
        if host is None:
            if mailbox:
                pieces.append(mailbox)  # a group's name
            continue
        spec = f"{mailbox or ''}@{host}" if host else (mailbox or "")
        pieces.append(f"{name} <{spec}>" if name else spec)
    return ", ".join(pieces)
