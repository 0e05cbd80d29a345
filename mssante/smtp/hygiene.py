"""DATA hygiene: what a message must look like before it may enter the trust space.

Bare CR or bare LF anywhere is refused outright: SMTP smuggling hides a second message behind
line ends that one server reads as the end of data and the next does not. ``From:`` and
``Date:`` must be present and valid. The server then adds what a mail system owes the reader:
``Received:`` (trace), ``Message-ID:`` when missing, ``Sender:`` when a delegate writes on
behalf of the BAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses, make_msgid, parsedate_to_datetime

from mssante.policy import MessageFacts
from mssante.store.mime import analyse, attachment_types, parse_headers

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_MSGID = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class Problem:
    status: str
    reason: str

    @property
    def smtp(self) -> str:
        return f"550 {self.status} {self.reason}"


def bare_line_end(data: bytes) -> int | None:
    """Offset of the first bare CR or bare LF, or None when every line ends in CRLF."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return None  # three passes in C: the common, clean case
    match = _BARE.search(data)
    return match.start() if match else None


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end == -1 else data[: end + 2]


def _values(fields: list[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in fields if k.lower() == lname]


def inspect(data: bytes, *, count_attachments: bool = False) -> tuple[MessageFacts, Problem | None, bool]:
    """Parse what the policy needs; returns (facts, problem or None, has Message-ID).

    Only the header block is parsed, unless the policy needs the attachment count (patient
    senders): the full MIME analysis is done once, by the store, on the final message.
    """
    offset = bare_line_end(data)
    empty = MessageFacts(from_addresses=())
    if offset is not None:
        return empty, Problem("5.6.0", f"bare CR or LF at byte {offset}: lines must end with CRLF"), False
    fields = parse_headers(header_block(data))
    froms = _values(fields, "From")
    if len(froms) != 1:
        return empty, Problem("5.6.0", "the message must have exactly one From: header"), False
    addresses = tuple(addr for _, addr in getaddresses(froms) if addr)
    if not addresses or any("@" not in a for a in addresses):
        return empty, Problem("5.6.0", "the From: header holds no valid address"), False
    dates = _values(fields, "Date")
    if len(dates) != 1:
        return empty, Problem("5.6.0", "the message must have exactly one Date: header"), False
    try:
        parsedate_to_datetime(dates[0])
    except (TypeError, ValueError):
        return empty, Problem("5.6.0", f"the Date: header {dates[0][:60]!r} is not an RFC 5322 date"), False
    analysis = analyse(data) if count_attachments else None
    facts = MessageFacts(
        from_addresses=addresses,
        in_reply_to=tuple(_MSGID.findall(" ".join(_values(fields, "In-Reply-To")))),
        references=tuple(_MSGID.findall(" ".join(_values(fields, "References")))),
        attachments=int(analysis["attachments"]) if analysis else 0,
        attachment_types=attachment_types(analysis["part"]) if analysis else (),
        headers={k.lower(): v for k, v in fields},
    )
    return facts, None, bool(_values(fields, "Message-ID"))


def new_message_id(domain: str) -> str:
    return make_msgid(domain=domain)


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
    now = format_datetime(datetime.now(UTC))
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
