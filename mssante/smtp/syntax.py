"""What an SMTP command line and a HELO/EHLO name may look like (RFC 5321 §2.3.8, §4.1.1.1).

Commands end with CRLF and nothing else: a bare CR or LF inside a line, or a line ended by a
bare LF, is how smuggled commands and header injections ride through one server and are read
differently by the next. Control characters have no place in any command either. The HELO/EHLO
name is copied into the ``Received:`` trace header, so it must be a domain or an address
literal, never arbitrary text.
"""

from __future__ import annotations

import ipaddress
import re

# Any C0 control (TAB included: RFC 5321 separates with SP) or DEL.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# RFC 5321 sub-domain; "_" is tolerated inside a label (Windows host names use it; it is inert).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_DOMAIN = 255


def command_line_problem(line: bytes) -> str | None:
    """The reply refusing a command line read up to its LF, or None when it is well formed."""
    if not line.endswith(b"\r\n"):
        return "500 5.5.2 Bare LF in a command line: commands end with <CR><LF>"
    match = _CONTROL.search(line, 0, len(line) - 2)
    if match is None:
        return None
    if match.group() == b"\r":
        return "500 5.5.2 Bare CR in a command line: commands end with <CR><LF>"
    return f"500 5.5.2 Control character 0x{match.group()[0]:02X} in a command line"


def valid_helo(name: str) -> bool:
    """A domain (RFC 5321 ``Domain``) or an address literal (``[192.0.2.1]``, ``[IPv6:…]``)."""
    if len(name) > MAX_DOMAIN or not name.isascii():
        return False
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        try:
            if literal[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    return _DOMAIN.fullmatch(name) is not None


HELO_REFUSAL = (
    "501 5.5.2 Invalid HELO/EHLO name: give a domain or an address literal such as [192.0.2.1]"
    " (RFC 5321 4.1.1.1)"
)
