"""DATA hygiene: what a message must look like before it may enter the trust space.

The session hands over content whose lines all end in CRLF (``MSSanteSMTP.smtp_DATA``). The
header must then read the same to this server and to every reader: each line a ``Name:
value`` field or a continuation, no control character but TAB (RFC 5322 allows none), 8-bit
text only in an SMTPUTF8 transaction (RFC 6532). ``From:`` and ``Date:`` must be present,
once, and valid. The server then adds what a mail system owes the reader: ``Received:``
(trace), ``Message-ID:`` when missing, ``Sender:`` when a delegate writes on behalf of the
BAL (the one ``Sender:``: a client's own is kept or dropped as the policy says).
"""

from __future__ import annotations

import email.policy
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import format_datetime, getaddresses, make_msgid, parsedate_to_datetime

from mssante.policy import MessageFacts
from mssante.store.mime import analyse, attachment_types, parse_headers
from mssante.store.spooled import Raw

_MSGID = re.compile(r"<[^<>\s]+>")
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # a CR or LF left after the split is bare
# Unicode controls (C1 among them: NEL), line and paragraph separators: line breaks to some readers.
_UNICODE_BREAKS = frozenset(("Cc", "Zl", "Zp"))
# ``From:`` as nearly every client writes it: ``local@domain`` or ``Plain Words <local@domain>``
# (dot-atoms, ASCII words only): both parsers of ``from_addresses`` read it the same way, with
# no defect, so it is read without them (they cost half a millisecond per message).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_FROM = re.compile(
    rf"[ \t]*(?:({_SIMPLE_ADDRESS})|[A-Za-z0-9_-]+(?:[ \t]+[A-Za-z0-9_-]+)*[ \t]*<({_SIMPLE_ADDRESS})>)[ \t]*"
)


@dataclass(frozen=True)
class Problem:
    status: str
    reason: str

    @property
    def smtp(self) -> str:
        return f"550 {self.status} {self.reason}"


def header_block(data: Raw, start: int = 0) -> bytes:
    end = data.find(b"\r\n\r\n", start)
    return bytes(data[start:] if end == -1 else data[start : end + 2])


def header_problem(block: bytes, *, smtputf8: bool) -> Problem | None:
    """Why the header block (CRLF line ends) cannot be read unambiguously, or None."""
    lines = block.split(b"\r\n")
    for number, line in enumerate(lines, 1):
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                return Problem("5.6.0", "the header starts with a continuation line")
        elif _FIELD.match(line) is None:
            return Problem("5.6.0", f"header line {number} is not a 'Name: value' field (RFC 5322 2.2)")
        control = _CONTROL.search(line)
        if control is not None:
            byte = control.group()[0]
            return Problem(
                "5.6.0", f"control character 0x{byte:02X} in header line {number} (RFC 5322 allows none)"
            )
        if line.isascii():
            continue
        if not smtputf8:
            return Problem(
                "5.6.7",
                f"8-bit text in header line {number} needs an SMTPUTF8 transaction (RFC 6532);"
                " otherwise use RFC 2047 encoded words",
            )
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Problem("5.6.7", f"header line {number} is not valid UTF-8 (RFC 6532)")
        if any(unicodedata.category(c) in _UNICODE_BREAKS for c in text):
            return Problem("5.6.0", f"Unicode control or line separator in header line {number}")
    return None


def from_addresses(value: str) -> tuple[str, ...]:
    """The ``From:`` addresses as readers will show them; () when that is not certain.

    Python's header parser (the default policy, as in clients and scripts) and the classic
    ``getaddresses`` (what IMAP ENVELOPE is built with) must both read the value without a
    defect and find the same addresses: an address only one of them sees is a spoofing tool.
    """
    if (simple := _SIMPLE_FROM.fullmatch(value)) is not None:
        return (simple.group(1) or simple.group(2),)
    header = email.policy.default.header_factory("From", value)
    if header.defects:
        return ()
    modern = tuple(a.addr_spec for a in header.addresses)
    classic = tuple(addr for _, addr in getaddresses([value]) if addr)
    if [a.lower() for a in modern] != [a.lower() for a in classic]:
        return ()
    return modern


def report_type(content_type: str | None) -> str | None:
    """The ``report-type`` of a ``multipart/report`` top-level type, else None."""
    if not content_type or "report" not in content_type.lower():
        return None  # (the usual message: no parse)
    message = Message()
    message["Content-Type"] = content_type
    if message.get_content_type() != "multipart/report":
        return None
    value = message.get_param("report-type")
    return value.lower() if isinstance(value, str) else None


def _by_name(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The values of each field name (lower case), in order."""
    named: dict[str, list[str]] = {}
    for key, value in fields:
        named.setdefault(key.lower(), []).append(value)
    return named


def inspect(
    data: Raw, *, count_attachments: bool = False, smtputf8: bool = False, start: int = 0
) -> tuple[MessageFacts, Problem | None, bool]:
    """Parse what the policy needs of the message at ``data[start:]``; returns (facts, problem
    or None, has Message-ID).

    Only the header block is parsed, unless the policy needs the attachment count (patient
    senders): the full MIME analysis is done once, by the store, on the final message.
    """
    empty = MessageFacts(from_addresses=())
    block = header_block(data, start)
    problem = header_problem(block, smtputf8=smtputf8)
    if problem is not None:
        return empty, problem, False
    fields = parse_headers(block)
    named = _by_name(fields)
    froms = named.get("from", [])
    if len(froms) != 1:
        return empty, Problem("5.6.0", "the message must have exactly one From: header"), False
    addresses = from_addresses(froms[0])
    if not addresses or any("@" not in a for a in addresses):
        return empty, Problem("5.6.0", "the From: header holds no valid address"), False
    dates = named.get("date", [])
    if len(dates) != 1:
        return empty, Problem("5.6.0", "the message must have exactly one Date: header"), False
    try:
        parsedate_to_datetime(dates[0])
    except (TypeError, ValueError):
        return empty, Problem("5.6.0", f"the Date: header {dates[0][:60]!r} is not an RFC 5322 date"), False
    analysis = analyse(data, start) if count_attachments else None
    content_types = named.get("content-type", [])
    facts = MessageFacts(
        from_addresses=addresses,
        in_reply_to=tuple(_MSGID.findall(" ".join(named.get("in-reply-to", [])))),
        references=tuple(_MSGID.findall(" ".join(named.get("references", [])))),
        attachments=int(analysis["attachments"]) if analysis else 0,
        attachment_types=attachment_types(analysis["part"]) if analysis else (),
        headers={k.lower(): v for k, v in fields},
        sender_fields=tuple(addr for _, addr in getaddresses(named.get("sender", []))),
        report_type=report_type(content_types[0]) if len(content_types) == 1 else None,
    )
    return facts, None, bool(named.get("message-id", []))


def new_message_id(domain: str) -> str:
    return make_msgid(domain=domain)


_date_text: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The current time as a header date: the same text for a whole second, formatted once."""
    global _date_text
    second = int(time.time())
    if _date_text[0] != second:
        _date_text = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_text[1]


def trace_headers(
    *,
    hostname: str,
    helo: str,
    peer_ip: str,
    protocol: str,
    recipient: str | None,
    session_id: str,
    tls: str | None,
    authenticated: str | None,
    on_behalf_of: str | None,
    new_message_id: str | None,
) -> bytes:
    """The header lines this server adds on top of an accepted message."""
    now = _date_now()
    tls_part = f"\r\n\t(using {tls})" if tls else ""
    auth_part = f"\r\n\t(authenticated as {authenticated})" if authenticated else ""
    for_part = f"\r\n\tfor <{recipient}>" if recipient else ""
    lines = [
        f"Received: from {helo} ([{peer_ip}]){tls_part}{auth_part}\r\n"
        f"\tby {hostname} (mssante) with {protocol} id {session_id}{for_part};\r\n\t{now}\r\n"
    ]
    if on_behalf_of:
        lines.append(f"Sender: {on_behalf_of}\r\n")
    if new_message_id:
        lines.append(f"Message-ID: {new_message_id}\r\n")
    return "".join(lines).encode("utf-8")
