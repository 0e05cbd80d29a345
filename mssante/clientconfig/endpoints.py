"""The IMAP and submission endpoints a client is told about, as the listeners really are.

A running server describes its listeners once they are bound (the real ports, even when the
configuration asked for any free port); the command line, with no server running, describes
the configured ones. The host a client is sent to is the server's public name
(``server.hostname``), except for a listener bound to a loopback address, which nothing else can
reach: that address itself is the truth (the demo certificate names it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mssante.config import Settings

IMPLICIT, STARTTLS = "implicit", "starttls"


class ListenerFacts(Protocol):
    """What ``mssante.server.RunningListener`` tells about a bound listener."""

    name: str
    host: str
    port: int
    tls: str


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "imap" or "smtp" (submission)
    host: str
    port: int
    tls: str  # IMPLICIT (RFC 8314) or STARTTLS


@dataclass(frozen=True)
class Endpoints:
    """Each protocol's endpoints, preferred first: implicit TLS before STARTTLS (RFC 8314 §3)."""

    imap: tuple[Endpoint, ...]
    smtp: tuple[Endpoint, ...]


# Listener name → (protocol, TLS mode); the order is the order of preference.
CLIENT_LISTENERS: dict[str, tuple[str, str]] = {
    "imaps": ("imap", IMPLICIT),
    "imap": ("imap", STARTTLS),
    "submissions": ("smtp", IMPLICIT),
    "submission": ("smtp", STARTTLS),
}


def public_host(bind_host: str, hostname: str) -> str:
    """The name a client connects to for a listener bound to ``bind_host``."""
    if bind_host == "localhost":
        return bind_host
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        return hostname
    return bind_host if address.is_loopback else hostname


def _configured(settings: Settings) -> dict[str, tuple[str, int]]:
    smtp, imap = settings.smtp, settings.imap
    return {
        "imaps": (imap.host, imap.tls_port),
        "imap": (imap.host, imap.port),
        "submissions": (smtp.host, smtp.submissions_port),
        "submission": (smtp.host, smtp.submission_port),
    }


def endpoints(settings: Settings, listeners: Sequence[ListenerFacts] = ()) -> Endpoints:
    """The client endpoints: the bound ``listeners`` when given, else the configuration."""
    bound = {item.name: (item.host, item.port) for item in listeners if item.name in CLIENT_LISTENERS}
    where = bound or _configured(settings)
    found: dict[str, list[Endpoint]] = {"imap": [], "smtp": []}
    for name, (protocol, tls) in CLIENT_LISTENERS.items():
        if name in where:
            host, port = where[name]
            found[protocol].append(Endpoint(protocol, public_host(host, settings.server.hostname), port, tls))
    return Endpoints(tuple(found["imap"]), tuple(found["smtp"]))
