"""Every ``ssl.SSLContext`` of the product is built here, so the TLS policy has one home.

Policy (FACTS.md §Security), the same on every listener — SMTP, IMAP, HTTPS — and for the
relay's outgoing connections: TLS 1.2 minimum (``tls.min_version``), TLS 1.3 allowed
(``tls.max_version``); for TLS 1.2 only the MSSanté suite list (``tls.ciphers``, ECDHE-RSA
with AES-GCM / AES-SHA2), for TLS 1.3 ``tls.ciphersuites`` (AES-GCM: CHACHA20 only if listed);
no compression, no renegotiation. Servers hand out session tickets (``tls.session_tickets``)
so that a client reconnecting resumes without a full handshake. Client certificates are
verified against ``tls.ca_file`` (IGC-Santé in production, the development CA of
``mssante certs dev`` otherwise) in the mode each listener asks for.
"""

from __future__ import annotations

import _ssl
import ctypes
import hashlib
import ssl
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509

from mssante.config import TLSSection


class TLSConfigError(Exception):
    """A TLS setting that cannot work (missing certificate, unreadable key, bad cipher list)."""


class ClientCertMode(StrEnum):
    """How a listener treats client certificates.

    ``none``: not asked for (plain submission with tokens/passwords); ``optional``: asked for and
    verified when sent (submission/IMAP offering SASL EXTERNAL to applications); ``required``:
    the handshake fails without a valid one (relay between operators).
    """

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_HARDENING = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
_HARDENING |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def _base(purpose: ssl._SSLMethod, tls: TLSSection) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    ctx.options |= _HARDENING
    try:
        ctx.set_ciphers(tls.ciphers)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"tls.ciphers: OpenSSL accepts none of {tls.ciphers!r} ({exc})") from None
    if tls.max_version == "TLSv1.3":
        _set_tls13_suites(ctx, tls.ciphersuites)
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        # Python's server default is already 2 tickets and a server-side session cache; say so.
        ctx.num_tickets = tls.session_tickets
        if tls.session_tickets == 0:
            ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _tls13_suites(ctx: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"]


def _set_tls13_suites(ctx: ssl.SSLContext, suites: str) -> None:
    """``SSL_CTX_set_ciphersuites`` — which Python's ``ssl`` does not expose (``set_ciphers``
    only governs TLS ≤ 1.2) — called on the context's own ``SSL_CTX`` through the OpenSSL that
    ``_ssl`` is linked with. The result is read back with ``get_ciphers()``: a policy that
    cannot be applied stops the server (deny by default) rather than silently offering more."""
    wanted = [name for name in suites.split(":") if name]
    if _tls13_suites(ctx) == wanted:
        return
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        get_options, set_suites = lib.SSL_CTX_get_options, lib.SSL_CTX_set_ciphersuites
    except (OSError, AttributeError):
        raise TLSConfigError(
            "tls.ciphersuites: this Python's OpenSSL cannot be configured (set tls.max_version = "
            "'TLSv1.2', or ciphersuites to OpenSSL's default list)"
        ) from None
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    set_suites.argtypes, set_suites.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
    # CPython's context object is {PyObject_HEAD; SSL_CTX *ctx; ...}: check it is before using it.
    handle = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not handle or get_options(handle) != int(ctx.options):
        raise TLSConfigError("tls.ciphersuites: cannot reach the OpenSSL context of this Python")
    if set_suites(handle, suites.encode("ascii")) != 1 or _tls13_suites(ctx) != wanted:
        raise TLSConfigError(f"tls.ciphersuites: OpenSSL does not accept {suites!r} as TLS 1.3 suites")


def _load_chain(ctx: ssl.SSLContext, cert_file: Path | None, key_file: Path | None, key: str) -> None:
    if cert_file is None:
        raise TLSConfigError(f"{key}.cert_file is not set (for a development setup: `mssante certs dev`)")
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{key}: {exc.filename} does not exist") from None
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{key}: cannot load certificate {cert_file} / key {key_file}: {exc}") from None


def _load_trust(ctx: ssl.SSLContext, ca_file: Path | None, key: str) -> None:
    if ca_file is None:
        raise TLSConfigError(f"{key}.ca_file is not set: client certificates cannot be verified")
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (FileNotFoundError, ssl.SSLError) as exc:
        raise TLSConfigError(f"{key}.ca_file: cannot load {ca_file}: {exc}") from None


def server_context(
    tls: TLSSection,
    *,
    client_certs: ClientCertMode | str = ClientCertMode.NONE,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    ca_file: Path | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A context for one listener; the file arguments override ``tls.*`` for that listener."""
    mode = ClientCertMode(client_certs)
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, tls)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    _load_chain(ctx, cert_file or tls.cert_file, key_file or tls.key_file, "tls")
    if mode is not ClientCertMode.NONE:
        _load_trust(ctx, ca_file or tls.ca_file, "tls")
        ctx.verify_mode = ssl.CERT_REQUIRED if mode is ClientCertMode.REQUIRED else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    tls: TLSSection,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    ca_file: Path | None = None,
) -> ssl.SSLContext:
    """A context for connecting to another operator: our certificate, peer verified by name."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, tls)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_trust(ctx, ca_file or tls.ca_file, "tls")
    cert = cert_file or tls.cert_file
    if cert is not None:
        _load_chain(ctx, cert, key_file or tls.key_file, "tls")
    return ctx


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate: what SASL EXTERNAL and the relay gate look at."""

    subject: str  # RFC 4514, e.g. "CN=dpi@ch-demo.demo.mssante.fr,O=CH Demo"
    fingerprint: str  # SHA-256 of the DER encoding, lowercase hex
    issuer: str
    not_after: datetime
    dns_names: tuple[str, ...] = ()  # subjectAltName DNS entries: what the relay gate matches


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a front door knows about the transport of a session, handed to the authenticator."""

    active: bool = False
    version: str | None = None
    cipher: str | None = None
    peer: PeerCertificate | None = None

    @classmethod
    def cleartext(cls) -> TLSInfo:
        return cls()


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def describe_certificate(der: bytes) -> PeerCertificate:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    return PeerCertificate(
        subject=cert.subject.rfc4514_string(),
        fingerprint=fingerprint(der),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        dns_names=dns_names,
    )


def verified_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate | None:
    """The peer's certificate *if OpenSSL verified it*, else None.

    With ``CERT_NONE`` OpenSSL still hands back whatever certificate the peer sent, unverified:
    trusting it would let anyone claim an APP identity, so such contexts yield None. With
    ``CERT_OPTIONAL``/``CERT_REQUIRED`` a presented certificate that fails verification aborts
    the handshake, so one that is returned has been verified against the CA bundle.
    """
    if ssl_object is None or ssl_object.context.verify_mode == ssl.CERT_NONE:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return describe_certificate(der)


def tls_info(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TLSInfo:
    """Transport facts from an SSL object (``transport.get_extra_info("ssl_object")``)."""
    if ssl_object is None:
        return TLSInfo.cleartext()
    cipher = ssl_object.cipher()
    return TLSInfo(
        active=True,
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        peer=verified_peer(ssl_object),
    )
