"""A development PKI: a throw-away CA, server and client certificates (``cryptography``).

Demo mode and the tests use it so that every listener runs real TLS with real client-certificate
verification. Keys are RSA because the MSSanté TLS 1.2 suites are ECDHE-*RSA* only.
Nothing here is for production, where certificates come from IGC-Santé.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante.config import Settings
from mssante.tls import fingerprint

RSA_BITS = 2048


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files on disk."""

    cert_file: Path
    key_file: Path
    fingerprint: str
    subject: str


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class DevCA:
    """A CA whose key sits beside its certificate; it signs server and client certificates."""

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey, cert_file: Path) -> None:
        self.cert, self.key, self.cert_file = cert, key, cert_file

    @classmethod
    def create(cls, directory: Path, name: str = "mssante development CA", days: int = 3650) -> DevCA:
        key = _key()
        subject = _name(name, "mssante development")
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_file = directory / "ca.pem"
        _write_cert(cert_file, cert)
        _write_key(directory / "ca.key", key)
        return cls(cert, key, cert_file)

    @classmethod
    def load(cls, directory: Path) -> DevCA:
        cert_file = directory / "ca.pem"
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{directory / 'ca.key'} is not an RSA key")
        return cls(cert, key, cert_file)

    def _issue(
        self,
        cert_file: Path,
        key_file: Path,
        subject: x509.Name,
        usages: list[x509.ObjectIdentifier],
        sans: list[x509.GeneralName],
        days: int,
    ) -> Issued:
        key = _key()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        _write_cert(cert_file, cert)
        _write_key(key_file, key)
        der = cert.public_bytes(serialization.Encoding.DER)
        return Issued(cert_file, key_file, fingerprint(der), cert.subject.rfc4514_string())

    def issue_server(self, directory: Path, hostnames: list[str], days: int = 825) -> Issued:
        """A server certificate valid for each name (DNS names and IP addresses)."""
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys(hostnames):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        subject = _name(hostnames[0], "mssante development")
        return self._issue(
            directory / "server.pem",
            directory / "server.key",
            subject,
            # Also a client certificate: the operator presents it when relaying to other operators.
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            sans,
            days,
        )

    def issue_client(
        self, directory: Path, name: str, organisation: str = "mssante development", days: int = 825
    ) -> Issued:
        """A client certificate whose CN is ``name`` (for an APP BAL: the BAL address)."""
        safe = "".join(c if c.isalnum() or c in "-._@" else "_" for c in name)
        return self._issue(
            directory / f"{safe}.pem",
            directory / f"{safe}.key",
            _name(name, organisation),
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            [],
            days,
        )


def server_hostnames(configured: str) -> list[str]:
    """The names a development server certificate covers: the configured host name and loopback."""
    return list(dict.fromkeys([configured, "localhost", "127.0.0.1"]))


def ensure_dev_pki(directory: Path, hostname: str, *, force: bool = False) -> tuple[DevCA, list[str]]:
    """The development CA and server certificate in ``directory``, created when missing (or
    replaced with ``force``); returns the CA and what was done."""
    done: list[str] = []
    if force or not (directory / "ca.pem").exists():
        ca = DevCA.create(directory)
        done.append(f"created development CA {ca.cert_file}")
    else:
        ca = DevCA.load(directory)
    if force or not (directory / "server.pem").exists():
        names = server_hostnames(hostname)
        issued = ca.issue_server(directory, names)
        done.append(f"created server certificate {issued.cert_file} for {', '.join(names)}")
    return ca, done


def prepare_demo(settings: Settings) -> list[str]:
    """Make a settings object ready for demo mode (``serve --demo``), saying what it did.

    Creates the development PKI in ``<data_dir>/certs`` when missing, points the unset ``tls.*``
    files at it, and trusts the local test identity provider (``auth.demo_idp``), so that
    ``mssante demo token --as IDNAT`` gives a working OAUTHBEARER/XOAUTH2 login.
    """
    directory = settings.data_dir / "certs"
    _ca, done = ensure_dev_pki(directory, settings.server.hostname)
    tls = settings.tls
    if tls.cert_file is None:
        tls.cert_file, tls.key_file = directory / "server.pem", directory / "server.key"
    if tls.ca_file is None:
        tls.ca_file = directory / "ca.pem"
    if not settings.auth.demo_idp:
        settings.auth.demo_idp = True
        done.append("trusting the local demo identity provider (mssante demo token --as IDNAT)")
    return done
