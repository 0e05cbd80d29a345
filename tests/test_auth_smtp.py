"""SASL over the real SMTP submission door of a running demo server (``serve --demo``): tokens
from ``mssante demo token``, the RFC 7628 error exchange, and a client certificate from an
untrusted CA."""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mssante.auth.devpki import DevCA
from mssante.auth.testidp import LocalIdP
from mssante.config import load_settings
from mssante.demo import MARTIN as MARTIN_PS
from tests.demo_server import DemoServer

MARTIN = "claire.martin@demo.mssante.fr"


def demo_token(demo: DemoServer, *args: str) -> str:
    """What a newcomer runs: ``mssante demo token --as IDNAT`` against the server's data dir."""
    result = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(demo.data_dir), "demo", "token", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def submission(demo: DemoServer, ctx: ssl.SSLContext | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=ctx or ssl.create_default_context(cafile=demo.ca_cert))
    client.ehlo("client.test")
    return client


def sasl(client: smtplib.SMTP, mechanism: str, response: str) -> tuple[int, bytes]:
    """AUTH without an initial response, then the response after the empty 334 challenge: what
    RFC 4954 §4 asks of a client whose response would not fit the 512-octet command line."""
    code, reply = client.docmd("AUTH", mechanism)
    assert (code, reply) == (334, b""), reply
    return client.docmd(response)


def test_oauthbearer_and_xoauth2_with_demo_tokens(demo: DemoServer) -> None:
    idnat = MARTIN_PS["idnat"]
    with submission(demo) as client:
        assert {"OAUTHBEARER", "XOAUTH2", "PLAIN"} <= set(client.esmtp_features["auth"].split())
        assert "LOGIN" not in client.esmtp_features["auth"].split()
        code, reply = sasl(client, "OAUTHBEARER", demo_token(demo, "--as", idnat, "--sasl", "OAUTHBEARER"))
        assert code == 235, reply
        # The token's IdNat is the professional who owns this BAL: the policy lets it send.
        code, reply = client.docmd("MAIL", f"FROM:<{MARTIN}>")
        assert code == 250, reply
    with submission(demo) as client:
        code, reply = sasl(client, "XOAUTH2", demo_token(demo, "--as", idnat, "--sasl", "XOAUTH2"))
        assert code == 235, reply


@pytest.mark.parametrize("problem", ["expired", "audience"])
def test_oauthbearer_error_exchange(demo: DemoServer, problem: str) -> None:
    idp = LocalIdP.for_settings(load_settings(None, server={"data_dir": str(demo.data_dir)}))
    idnat = MARTIN_PS["idnat"]
    token = (
        idp.token(idnat, now=time.time() - 7200, ttl=60)
        if problem == "expired"
        else idp.token(idnat, audience="x")
    )
    initial = base64.b64encode(f"n,,\x01auth=Bearer {token}\x01\x01".encode()).decode()
    with submission(demo) as client:
        code, reply = sasl(client, "OAUTHBEARER", initial)
        assert code == 334, reply
        assert json.loads(base64.b64decode(reply))["status"] == "invalid_token"
        code, reply = client.docmd(base64.b64encode(b"\x01").decode())
        assert (code, reply[:5]) == (535, b"5.7.8"), reply
        code, reply = client.docmd("MAIL", f"FROM:<{MARTIN}>")
        assert code == 530, reply  # still not authenticated


def test_external_with_a_certificate_from_an_untrusted_ca(demo: DemoServer, tmp_path: Path) -> None:
    rogue_ca = DevCA.create(tmp_path)
    rogue = rogue_ca.issue_client(tmp_path / "clients", "dpi@demo.mssante.fr")
    ctx = ssl.create_default_context(cafile=demo.ca_cert)
    ctx.load_cert_chain(rogue.cert_file, rogue.key_file)
    with (
        pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)),
        submission(demo, ctx) as client,
    ):
        client.docmd("AUTH", "EXTERNAL =")
