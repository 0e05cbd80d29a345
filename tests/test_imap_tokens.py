"""Pro Santé Connect-style tokens over IMAP: OAUTHBEARER and XOAUTH2 against the demo server,
with tokens from `mssante demo token` (the demo identity provider the demo server trusts)."""

from __future__ import annotations

import imaplib
import ssl

import pytest

from tests.demo_server import DemoServer

MARTIN = "claire.martin@demo.mssante.fr"
MARTIN_IDNAT = "810100000011"


def connect(demo: DemoServer) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=demo.ca_cert)
    return imaplib.IMAP4_SSL("127.0.0.1", demo.port("imaps"), ssl_context=ctx, timeout=30)


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_token_login_opens_the_professionals_bal(demo: DemoServer, mechanism: str) -> None:
    jwt = demo.token(MARTIN_IDNAT)
    if mechanism == "OAUTHBEARER":
        initial = f"n,a={MARTIN},\x01auth=Bearer {jwt}\x01\x01"
    else:
        initial = f"user={MARTIN}\x01auth=Bearer {jwt}\x01\x01"
    client = connect(demo)
    try:
        assert mechanism in client.capabilities or f"AUTH={mechanism}" in client.capabilities
        typ, _ = client.authenticate(mechanism, lambda _challenge: initial.encode())
        assert typ == "OK"
        typ, _ = client.select("INBOX")
        assert typ == "OK"
    finally:
        client.logout()


def test_a_forged_token_is_refused(demo: DemoServer) -> None:
    jwt = demo.token(MARTIN_IDNAT)
    header, payload, signature = jwt.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    client = connect(demo)
    try:
        with pytest.raises(imaplib.IMAP4.error) as refused:
            client.authenticate(
                "OAUTHBEARER", lambda _c: f"n,a={MARTIN},\x01auth=Bearer {forged}\x01\x01".encode()
            )
        assert "AUTHENTICATIONFAILED" in str(refused.value)
    finally:
        client.shutdown()
