"""What every TLS port of ``mssante serve --demo`` offers, as a scanner sees it, with
``openssl s_client`` (STARTTLS spoken by OpenSSL itself on submission, relay and IMAP).

The policy (``mssante/tls.py``, the defaults of ``[tls]``): TLS 1.0 and 1.1 refused; TLS 1.2
with exactly the MSSanté suites of Référentiel #2, in that order of preference; TLS 1.3 with
its two AES-GCM suites only (no CHACHA20-POLY1305, no CCM) — the same on every port, HTTPS
included. TLS 1.2 suites are enumerated the way sslscan does: offer everything OpenSSL knows,
note the suite the server picks, remove it, again until the server refuses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from mssante.config import MSSANTE_CIPHERS, TLS13_SUITES
from tests.demo_server import DemoServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

PORTS = {  # listener → how TLS starts
    "submission": ["-starttls", "smtp"],
    "submissions": [],
    "relay": ["-starttls", "smtp"],
    "imap": ["-starttls", "imap"],
    "imaps": [],
    "http": [],
}
ALL_TLS13 = [
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
]
_NEGOTIATED = re.compile(r"^New, (\S+), Cipher is (\S+)", re.MULTILINE)


def handshake(demo: DemoServer, name: str, *args: str) -> tuple[str, str] | None:
    """(protocol, suite) the server agreed to, or None if it refused the handshake."""
    command = [
        "openssl", "s_client", "-connect", f"127.0.0.1:{demo.port(name)}", "-servername", "localhost",
        "-CAfile", demo.ca_cert, *PORTS[name], *args,
    ]  # fmt: skip
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    found = _NEGOTIATED.search(done.stdout)
    if found is None or found[2] == "(NONE)":
        return None
    return found[1], found[2]


def every_tls12_suite() -> list[str]:
    out = subprocess.run(
        ["openssl", "ciphers", "-s", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [name for name in out.strip().split(":") if name and not name.startswith("TLS_")]


def scan(demo: DemoServer, name: str) -> dict[str, object]:
    old = {
        version: handshake(demo, name, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        for version, flag in (("TLSv1", "-tls1"), ("TLSv1.1", "-tls1_1"))
    }
    remaining, tls12 = every_tls12_suite(), []
    assert "ECDHE-RSA-CHACHA20-POLY1305" in remaining  # the client does offer it
    while (
        agreed := handshake(demo, name, "-tls1_2", "-cipher", ":".join(remaining) + ":@SECLEVEL=0")
    ) is not None:
        assert agreed[0] == "TLSv1.2" and agreed[1] in remaining
        tls12.append(agreed[1])
        remaining.remove(agreed[1])
    tls13 = [s for s in ALL_TLS13 if handshake(demo, name, "-tls1_3", "-ciphersuites", s) is not None]
    default = handshake(demo, name)
    return {"old": old, "tls12": tls12, "tls13": tls13, "default": default}


def test_every_tls_port_offers_exactly_the_policy(demo: DemoServer) -> None:
    with ThreadPoolExecutor(len(PORTS)) as pool:
        found = dict(zip(PORTS, pool.map(lambda name: scan(demo, name), PORTS), strict=True))
    expected = {
        "old": {"TLSv1": None, "TLSv1.1": None},
        "tls12": MSSANTE_CIPHERS.split(":"),
        "tls13": TLS13_SUITES.split(":"),
        "default": ("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    }
    assert found == dict.fromkeys(PORTS, expected)
