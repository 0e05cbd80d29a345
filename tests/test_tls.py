"""TLS policy on real loopback sockets: ``openssl s_client`` proves old protocols and weak
suites are refused, and client certificates are verified before SASL EXTERNAL may map them."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mssante.auth import accounts
from mssante.auth.authenticator import Authenticator, AuthSuccess
from mssante.auth.devpki import DevCA
from mssante.auth.harness import DevPKI, run_sasl
from mssante.auth.identity import IdentityKind
from mssante.config import MSSANTE_CIPHERS, Settings, TLSSection
from mssante.db import transaction
from mssante.tls import (
    ClientCertMode,
    TLSConfigError,
    client_context,
    describe_certificate,
    server_context,
    tls_info,
)

OPENSSL = shutil.which("openssl")


def tls_section(pki: DevPKI) -> TLSSection:
    return TLSSection(cert_file=pki.server.cert_file, key_file=pki.server.key_file, ca_file=pki.ca_file)


class HandshakeServer:
    """A loopback listener that only performs TLS handshakes with the given context."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"OK\n")
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def policy_server(dev_pki: DevPKI) -> Iterator[HandshakeServer]:
    server = HandshakeServer(server_context(tls_section(dev_pki)))
    yield server
    server.close()


@pytest.fixture
def permissive_server(dev_pki: DevPKI) -> Iterator[HandshakeServer]:
    """Control: a context accepting anything, to prove the client really offers what we test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(dev_pki.server.cert_file, dev_pki.server.key_file)
    server = HandshakeServer(ctx)
    yield server
    server.close()


def s_client(port: int, *args: str, tmp: Path) -> bool:
    """Whether ``openssl s_client`` completes a handshake (system openssl.cnf neutralised)."""
    assert OPENSSL is not None
    conf = tmp / "openssl.cnf"
    conf.write_text("")
    result = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args],
        input=b"",
        capture_output=True,
        timeout=20,
        env={"OPENSSL_CONF": str(conf), "PATH": "/usr/bin:/bin"},
    )
    # "New, TLSv1.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256" once a handshake completed.
    return (
        re.search(r"^New, \S+, Cipher is (?!\(NONE\))", result.stdout.decode(errors="replace"), re.M)
        is not None
    )


OLD_PROTOCOLS = [("-tls1", "ALL:@SECLEVEL=0"), ("-tls1_1", "ALL:@SECLEVEL=0")]
WEAK_SUITES = [
    "AES128-SHA",  # static RSA key exchange, no forward secrecy
    "AES256-GCM-SHA384",  # static RSA
    "ECDHE-RSA-AES128-SHA",  # CBC with SHA-1
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-CHACHA20-POLY1305",  # strong, but not in the MSSanté list
    "AES128-SHA256",  # static RSA with CBC
]


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_old_protocols_refused(
    policy_server: HandshakeServer, permissive_server: HandshakeServer, tmp_path: Path
) -> None:
    for flag, ciphers in OLD_PROTOCOLS:
        assert s_client(permissive_server.port, flag, "-cipher", ciphers, tmp=tmp_path), f"control {flag}"
        assert not s_client(policy_server.port, flag, "-cipher", ciphers, tmp=tmp_path), flag


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_weak_suites_refused_and_mssante_suites_accepted(
    policy_server: HandshakeServer, permissive_server: HandshakeServer, tmp_path: Path
) -> None:
    for suite in WEAK_SUITES:
        assert s_client(permissive_server.port, "-tls1_2", "-cipher", suite, tmp=tmp_path), f"control {suite}"
        assert not s_client(policy_server.port, "-tls1_2", "-cipher", suite, tmp=tmp_path), suite
    for suite in MSSANTE_CIPHERS.split(":"):
        assert s_client(policy_server.port, "-tls1_2", "-cipher", suite, tmp=tmp_path), suite
    assert s_client(policy_server.port, "-tls1_3", tmp=tmp_path)


def test_describe_certificate(dev_pki: DevPKI) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(dev_pki.server.cert_file.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    peer = describe_certificate(der)
    assert peer.fingerprint == dev_pki.server.fingerprint
    assert peer.dns_names == ("localhost",)  # 127.0.0.1 is an IP entry, not a DNS name
    assert peer.issuer == dev_pki.ca.cert.subject.rfc4514_string()


def test_contexts_refuse_bad_configuration(dev_pki: DevPKI) -> None:
    with pytest.raises(TLSConfigError, match="cert_file is not set"):
        server_context(TLSSection())
    with pytest.raises(TLSConfigError, match="ca_file"):
        server_context(
            TLSSection(cert_file=dev_pki.server.cert_file, key_file=dev_pki.server.key_file),
            client_certs="required",
        )
    with pytest.raises(TLSConfigError, match=r"tls\.ciphers"):
        server_context(
            TLSSection(
                cert_file=dev_pki.server.cert_file, key_file=dev_pki.server.key_file, ciphers="NO-SUCH-SUITE"
            )
        )
    with pytest.raises(TLSConfigError, match="does not exist"):
        server_context(TLSSection(cert_file=Path("/nonexistent.pem")))
    ctx = server_context(tls_section(dev_pki), client_certs=ClientCertMode.OPTIONAL)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2 and ctx.verify_mode is ssl.CERT_OPTIONAL


def test_tls13_suites_versions_and_tickets_from_the_policy(dev_pki: DevPKI) -> None:
    def tls13(ctx: ssl.SSLContext) -> list[str]:
        return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]

    ctx = server_context(tls_section(dev_pki))
    assert tls13(ctx) == ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"]  # no CHACHA20
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
    assert ctx.num_tickets == 2 and not ctx.options & ssl.OP_NO_TICKET
    chacha = tls_section(dev_pki).model_copy(update={"ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"})
    assert tls13(server_context(chacha)) == ["TLS_CHACHA20_POLY1305_SHA256"]
    assert tls13(client_context(chacha)) == ["TLS_CHACHA20_POLY1305_SHA256"]
    strict = tls_section(dev_pki).model_copy(update={"max_version": "TLSv1.2", "session_tickets": 0})
    ctx = server_context(strict)
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_2 and ctx.options & ssl.OP_NO_TICKET
    with pytest.raises(TLSConfigError, match=r"tls\.ciphersuites"):
        server_context(tls_section(dev_pki).model_copy(update={"ciphersuites": "TLS_NO_SUCH_SUITE"}))
    with pytest.raises(ValueError, match="below min_version"):
        TLSSection(min_version="TLSv1.3", max_version="TLSv1.2")


# -- client certificates and SASL EXTERNAL over a real handshake ---------------------------------
async def external_over_tls(
    auth: Authenticator, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> str:
    """A minimal front door: TLS handshake, then SASL EXTERNAL from the transport's certificate.
    Returns what the client read ("" when the handshake was refused)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = tls_info(writer.get_extra_info("ssl_object"))
        result, _ = await run_sasl(auth, "EXTERNAL", [b""], tls=info, client_ip="127.0.0.1")
        answer = f"OK {result.identity.principal}" if isinstance(result, AuthSuccess) else f"NO {result.kind}"
        writer.write(answer.encode() + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
            )
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            return ""
        return line.decode().strip()
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def app_account(auth_engine: Engine, dev_pki: DevPKI) -> str:
    with transaction(auth_engine) as s:
        accounts.create(s, "dpi", IdentityKind.APPLICATION)
        accounts.add_certificate(s, "dpi", dev_pki.client.cert_file.read_bytes())
    return f"application:{dev_pki.client.fingerprint}"


async def test_external_with_trusted_certificate(
    settings: Settings, auth_engine: Engine, dev_pki: DevPKI, app_account: str
) -> None:
    tls = tls_section(dev_pki)
    client = client_context(tls, cert_file=dev_pki.client.cert_file, key_file=dev_pki.client.key_file)
    auth = Authenticator(auth_engine, settings)
    for mode in ("optional", "required"):
        answer = await external_over_tls(auth, server_context(tls, client_certs=mode), client)
        assert answer == f"OK {app_account}"


async def test_external_with_untrusted_ca_refused(
    settings: Settings, auth_engine: Engine, dev_pki: DevPKI, app_account: str, tmp_path: Path
) -> None:
    rogue_ca = DevCA.create(tmp_path / "rogue")
    # Same subject as the genuine APP certificate, signed by a CA the server does not trust.
    rogue = rogue_ca.issue_client(tmp_path / "rogue", "dpi@ch-test.demo.mssante.fr")
    tls = tls_section(dev_pki)
    client = client_context(tls, cert_file=rogue.cert_file, key_file=rogue.key_file)
    auth = Authenticator(auth_engine, settings)
    # A verifying listener refuses the handshake itself.
    for mode in ("optional", "required"):
        assert await external_over_tls(auth, server_context(tls, client_certs=mode), client) == ""
    # A listener that does not verify client certificates never lets EXTERNAL use one.
    answer = await external_over_tls(auth, server_context(tls, client_certs="none"), client)
    assert answer == "NO unsupported"
    # Without any client certificate, a "required" listener refuses the handshake.
    # (client_context would present tls.cert_file, the operator certificate, which is also a valid
    # client certificate for the relay: build a context with no certificate at all.)
    bare = ssl.create_default_context(cafile=str(tls.ca_file))
    assert await external_over_tls(auth, server_context(tls, client_certs="required"), bare) == ""


async def test_client_context_verifies_the_server(dev_pki: DevPKI, tmp_path: Path) -> None:
    """The relay's client side: the peer must chain to our trust store and match its name."""
    server = await asyncio.start_server(
        lambda r, w: None, "127.0.0.1", 0, ssl=server_context(tls_section(dev_pki))
    )
    port = server.sockets[0].getsockname()[1]
    other_ca = DevCA.create(tmp_path / "other")
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=client_context(TLSSection(ca_file=other_ca.cert_file)),
                server_hostname="127.0.0.1",
            )
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(tls_section(dev_pki)), server_hostname="mx.other.fr"
            )
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(tls_section(dev_pki)), server_hostname="localhost"
        )
        writer.close()
    finally:
        server.close()
