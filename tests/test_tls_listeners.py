"""Every TLS listener of a running server (``mssante serve --demo``) applies the TLS policy:
``openssl s_client`` is refused TLS 1.0, TLS 1.1 and weak suites, and accepted with the
MSSanté suites — directly on implicit-TLS ports, after STARTTLS on the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from mssante.config import MSSANTE_CIPHERS
from tests.demo_server import DemoServer
from tests.test_tls import OPENSSL, s_client

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def test_every_tls_listener_applies_the_policy(demo: DemoServer, tmp_path: Path) -> None:
    checked = []
    for listener in demo.doc["listeners"]:
        if listener["tls"] == "none":
            continue
        port = int(listener["port"])
        starttls = ["-starttls", listener["protocol"]] if listener["tls"] == "starttls" else []
        name = f"{listener['name']} ({listener['protocol']}, {listener['tls']})"
        first_suite = MSSANTE_CIPHERS.split(":")[0]
        assert s_client(port, *starttls, "-tls1_2", "-cipher", first_suite, tmp=tmp_path), name
        for refused in (
            ["-tls1", "-cipher", "ALL:@SECLEVEL=0"],
            ["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
            ["-tls1_2", "-cipher", "AES128-SHA"],
            ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"],
        ):
            assert not s_client(port, *starttls, *refused, tmp=tmp_path), f"{name} accepted {refused}"
        checked.append(listener["name"])
    # Whatever listeners the server runs are all checked; SMTP has both kinds of TLS at least.
    kinds = {(item["protocol"], item["tls"]) for item in demo.doc["listeners"] if item["name"] in checked}
    assert {("smtp", "implicit"), ("smtp", "starttls")} <= kinds
