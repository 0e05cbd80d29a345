"""Small builders shared by tests."""

from __future__ import annotations

from email.utils import formatdate, make_msgid


def make_message(
    sender: str = "dr.martin@demo.mssante.fr",
    to: str = "dr.durand@demo.mssante.fr",
    subject: str = "Compte rendu",
    body: str = "Bonjour,\r\nci-joint le compte rendu.\r\n",
    size: int | None = None,
) -> bytes:
    """An RFC 5322 message with CRLF line ends, padded to ``size`` bytes when given."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        f"Message-ID: {make_msgid(domain='demo.mssante.fr')}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    data = head + body.encode()
    if size is not None and len(data) < size:
        line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod.\r\n"
        data += line * ((size - len(data)) // len(line) + 1)
        data = data[: size - 2] + b"\r\n"
    return data
