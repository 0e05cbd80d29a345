"""Which SASL mechanisms a front door may offer on a connection: the one place that decides it.

Nothing is offered in clear text — a password or a token must never cross the network
unencrypted — except on a loopback listener when ``auth.cleartext_on_loopback`` is set for
tests. EXTERNAL is offered only when the transport holds a *verified* client certificate.
"""

from __future__ import annotations

import ipaddress

from mssante.config import AuthSection
from mssante.tls import TLSInfo


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cleartext_allowed(auth: AuthSection, listener_host: str) -> bool:
    """Whether a listener bound to ``listener_host`` may authenticate without TLS (tests only)."""
    return auth.cleartext_on_loopback and is_loopback(listener_host)


def offered_mechanisms(
    auth: AuthSection, tls: TLSInfo, *, cleartext_ok: bool = False, tokens: bool = True
) -> list[str]:
    """Mechanisms to advertise (SMTP EHLO ``AUTH``, IMAP ``AUTH=`` capabilities), in preference
    order; empty before TLS. ``tokens`` is false when no token issuer is configured."""
    if not (tls.active or cleartext_ok):
        return []
    offered: list[str] = []
    for name in auth.mechanisms:
        if name == "EXTERNAL" and tls.peer is None:
            continue
        if name in ("OAUTHBEARER", "XOAUTH2") and not tokens:
            continue
        offered.append(name)
    return offered
