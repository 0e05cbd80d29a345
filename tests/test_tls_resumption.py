"""TLS session resumption on the mail listeners of ``mssante serve --demo``: a client that
comes back presents the session ticket it was given and skips the full handshake (the
certificate chain and the key exchange) — what makes a new connection per message cheap.

Real clients, smtplib and imaplib, with an ``SSLContext`` that offers the previous session
(Python's ``wrap_socket(session=…)``); TLS 1.3 (tickets after the handshake) and TLS 1.2.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from tests.demo_server import DemoServer


class ResumingContext(ssl.SSLContext):
    """A client context that offers the session kept from its last connection (``keep``)."""

    session: ssl.SSLSession | None = None
    version: str | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        if self.session is not None:
            kwargs.setdefault("session", self.session)
        return super().wrap_socket(*args, **kwargs)

    def keep(self, sock: Any) -> bool:
        """Before the connection closes: remember its session; whether it was resumed."""
        assert isinstance(sock, ssl.SSLSocket)
        self.session, self.version = sock.session, sock.version()
        return sock.session_reused


def client_context(demo: DemoServer, version: ssl.TLSVersion) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(demo.ca_cert)
    ctx.maximum_version = version
    return ctx


def smtp_starttls(demo: DemoServer, ctx: ResumingContext) -> bool:
    with smtplib.SMTP("localhost", demo.port("submission"), timeout=30) as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo()  # reads after the handshake: a TLS 1.3 ticket has arrived
        return ctx.keep(smtp.sock)


def smtps(demo: DemoServer, ctx: ResumingContext) -> bool:
    with smtplib.SMTP_SSL("localhost", demo.port("submissions"), timeout=30, context=ctx) as smtp:
        smtp.ehlo()
        return ctx.keep(smtp.sock)


def imap_starttls(demo: DemoServer, ctx: ResumingContext) -> bool:
    imap = imaplib.IMAP4("localhost", demo.port("imap"), timeout=30)
    imap.starttls(ctx)
    imap.capability()
    reused = ctx.keep(imap.sock)
    imap.logout()
    return reused


def imaps(demo: DemoServer, ctx: ResumingContext) -> bool:
    imap = imaplib.IMAP4_SSL("localhost", demo.port("imaps"), ssl_context=ctx, timeout=30)
    imap.capability()
    reused = ctx.keep(imap.sock)
    imap.logout()
    return reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
@pytest.mark.parametrize("connect", [smtp_starttls, smtps, imap_starttls, imaps])
def test_second_connection_resumes(
    demo: DemoServer, connect: Callable[[DemoServer, ResumingContext], bool], version: ssl.TLSVersion
) -> None:
    ctx = client_context(demo, version)
    assert connect(demo, ctx) is False  # a full handshake first
    assert connect(demo, ctx) is True  # then resumed from its ticket
    assert ctx.version == version.name.replace("_", ".")


def test_client_certificate_survives_resumption(demo: DemoServer) -> None:
    """An application that resumes still authenticates with its certificate (SASL EXTERNAL):
    the verified certificate travels in the ticket, it is not lost nor replaced."""
    app = next(a for a in demo.doc["accounts"] if a["kind"] == "app")
    ctx = client_context(demo, ssl.TLSVersion.TLSv1_3)
    ctx.load_cert_chain(app["client_cert"], app["client_key"])
    for resumed in (False, True):
        imap = imaplib.IMAP4_SSL("localhost", demo.port("imaps"), ssl_context=ctx, timeout=30)
        assert "AUTH=EXTERNAL" in imap.capabilities
        typ, _ = imap.authenticate("EXTERNAL", lambda _: b"")
        assert typ == "OK" and ctx.keep(imap.sock) is resumed
        imap.logout()
