"""DKIM end to end on a real demo server.

Outbound: a message submitted for a whitelisted operator is queued signed with the key of
demo.mssante.fr, and two verifiers that share no code with us — dkimpy's ``dkimverify``
command and Perl's Mail::DKIM — accept it, each resolving the key over real DNS from a
responder on 127.0.0.1; one altered body byte makes both refuse it.

Inbound: another operator (a client certificate of the demo CA naming its whitelisted domain)
relays signed, tampered and unsigned messages; each is stored with the matching
``Authentication-Results`` header (RFC 8601).
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from dkim.canonicalization import CanonicalizationPolicy
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from mssante.auth.devpki import DevCA
from mssante.config import load_settings
from mssante.db import make_engine
from mssante.smtp import dkim
from tests.demo_server import DemoServer, start_demo
from tests.dns_responder import DNSResponder
from tests.mailbox import StoredMail

DOMAIN = "demo.mssante.fr"
SELECTOR = "mssante"  # the default [dkim] selector
PARTNER = "partenaire-dkim.mssante.fr"  # another operator, whitelisted by the test
MARTIN = f"claire.martin@{DOMAIN}"
DURAND = f"paul.durand@{DOMAIN}"
REMOTE_DOCTOR = f"dr.lambert@{PARTNER}"

HAVE_MAIL_DKIM = (
    shutil.which("perl") is not None
    and subprocess.run(
        ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e", "1"], capture_output=True
    ).returncode
    == 0
)
needs_perl_dkim = pytest.mark.skipif(
    not HAVE_MAIL_DKIM,
    reason="Perl Mail::DKIM and Net::DNS (Debian libmail-dkim-perl) are not installed",
)

# dkimpy's own command, unchanged, with dnspython's default resolver aimed at our responder.
DKIMVERIFY = """
import runpy, sys
import dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
dns.resolver.default_resolver = resolver
script = sys.argv[2]
sys.argv = [script]
runpy.run_path(script, run_name="__main__")
"""

# Mail::DKIM reading the message from stdin, its resolver aimed at our responder.
MAIL_DKIM = r"""
use strict;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS;
my $resolver = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 0);
Mail::DKIM::DNS::resolver($resolver);
my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) { $line =~ s/\r?\n\z/\r\n/; $verifier->PRINT($line); }
$verifier->CLOSE();
print $verifier->result, "\n", $verifier->result_detail, "\n";
foreach my $sig ($verifier->signatures) { print "d=", $sig->domain, " s=", $sig->selector, "\n"; }
exit($verifier->result eq 'pass' ? 0 : 1);
"""


@dataclass
class Partner:
    keys_dir: Path
    records_dir: Path
    txt: str  # the value of its DKIM TXT record


def txt_value(record: str) -> str:
    """The quoted value of the zone line ``mssante dkim keygen`` prints."""
    match = re.search(r'IN TXT "(.*)"', record)
    assert match, record
    return match.group(1)


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Partner:
    """The other operator's DKIM key, published to the demo server through its records directory."""
    base = tmp_path_factory.mktemp("partner")
    _, record = dkim.generate_key(base / "keys", PARTNER, SELECTOR)
    records = base / "records"
    records.mkdir()
    value = txt_value(record)
    (records / f"{SELECTOR}._domainkey.{PARTNER}.txt").write_text(value)
    return Partner(base / "keys", records, value)


def start_partner_demo(data_dir: Path, partner: Partner, env: dict[str, str] | None = None) -> DemoServer:
    """A demo server of its own, the partner operator whitelisted and its key published.

    The outbound worker is off, so queued entries stay where the test reads them.
    """
    demo = start_demo(
        data_dir,
        {
            "MSSANTE_RELAY__ENABLED": "false",
            "MSSANTE_DKIM__RECORDS_DIR": str(partner.records_dir),
            **(env or {}),
        },
    )
    try:
        settings = load_settings(None, server={"data_dir": str(demo.data_dir)})
        engine = make_engine(settings.database_url, writer=True)
        with Session(engine) as session, session.begin():
            annuaire_service.add_operator_domain(session, domain=PARTNER, actor="test-dkim")
        engine.dispose()
    except BaseException:
        demo.stop()
        raise
    return demo


def stop(demo: DemoServer) -> None:
    code = demo.stop()
    assert code == 0, f"demo server exited with {code}:\n{demo.log()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, partner: Partner) -> Iterator[DemoServer]:
    demo = start_partner_demo(tmp_path_factory.mktemp("dkim-demo") / "data", partner)
    try:
        yield demo
    finally:
        stop(demo)


@pytest.fixture(scope="module")
def stored(server: DemoServer) -> Iterator[StoredMail]:
    view = StoredMail(server.data_dir)
    yield view
    view.close()


@pytest.fixture(scope="module")
def dns_server(server: DemoServer) -> Iterator[DNSResponder]:
    """Publishes the demo's public key, as its operator would in its DNS zone."""
    key_file = dkim.key_path(server.data_dir / "dkim", DOMAIN, SELECTOR)
    assert key_file.exists(), "demo mode creates the DKIM key of its domain"
    record = txt_value(dkim.txt_record(key_file, DOMAIN, SELECTOR))
    with DNSResponder({f"{SELECTOR}._domainkey.{DOMAIN}": record}) as responder:
        yield responder


def message(sender: str, to: str, subject: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def send_when_whitelisted(demo: DemoServer, sender: str, rcpt: str, data: bytes) -> None:
    """Submit as ``sender``; RCPT is retried until the server's annuaire cache sees the whitelist."""
    account = demo.account(sender)
    context = ssl.create_default_context(cafile=demo.ca_cert)
    with smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30) as client:
        client.starttls(context=context)
        client.login(account["login"], account["password"])
        deadline = time.monotonic() + 10
        while True:
            assert client.mail(sender)[0] == 250
            code, reply = client.rcpt(rcpt)
            if code == 250:
                break
            assert time.monotonic() < deadline, reply
            client.rset()
            time.sleep(0.2)
        code, reply = client.data(data)
        assert code == 250, reply


def queued_with_subject(stored: StoredMail, subject: str) -> tuple[str, list[str], bytes]:
    needle = f"Subject: {subject}\r\n".encode()
    found = [entry for entry in stored.queued() if needle in entry[2]]
    assert len(found) == 1, found
    return found[0]


def dkimverify(responder: DNSResponder, raw: bytes) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "dkimverify"
    assert script.exists(), "dkimpy installs the dkimverify command in the venv"
    return subprocess.run(
        [sys.executable, "-c", DKIMVERIFY, str(responder.port), str(script)],
        input=raw.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=30,
    )


def mail_dkim(responder: DNSResponder, raw: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["perl", "-e", MAIL_DKIM, str(responder.port)],
        input=raw.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=30,
    )


@pytest.fixture(scope="module")
def signed(server: DemoServer, stored: StoredMail) -> bytes:
    """The queued bytes of one message from Dr MARTIN to a doctor of the partner operator."""
    subject = f"CR echographie {uuid.uuid4().hex[:8]}"
    body = "Cher confrère,\r\n\r\nveuillez trouver mon compte rendu.\r\n\r\nDr MARTIN\r\n"
    send_when_whitelisted(server, MARTIN, REMOTE_DOCTOR, message(MARTIN, REMOTE_DOCTOR, subject, body))
    domain, recipients, raw = queued_with_subject(stored, subject)
    assert (domain, recipients) == (PARTNER, [REMOTE_DOCTOR])
    return raw


def tamper_body(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert b"compte rendu" in body
    return head + sep + body.replace(b"compte rendu", b"compte rendU")


def test_queued_message_carries_a_signature_of_the_sending_domain(signed: bytes) -> None:
    assert signed.startswith(b"DKIM-Signature: ")
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    signature = re.match(r"DKIM-Signature: (.*?)\r\n(?!\s)", header, re.S)
    assert signature, header
    tags = {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in signature.group(1).split(";"))}
    assert tags["d"] == DOMAIN and tags["s"] == SELECTOR
    assert tags["a"] == "rsa-sha256" and tags["c"] == "relaxed/relaxed"
    signed_headers = re.sub(r"\s", "", tags["h"]).lower().split(":")
    assert {"from", "to", "subject", "date", "message-id"} <= set(signed_headers)
    # Signed after our trace header was added: the signature covers the message as it leaves.
    assert signed.index(b"\r\nReceived: from ") < signed.index(b"\r\nFrom: ")


def test_dkimverify_accepts_the_signature_over_dns(dns_server: DNSResponder, signed: bytes) -> None:
    before = len(dns_server.queries)
    result = dkimverify(dns_server, signed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature ok" in result.stdout
    assert f"{SELECTOR}._domainkey.{DOMAIN}." in dns_server.queries[before:]


@needs_perl_dkim
def test_mail_dkim_accepts_the_signature_over_dns(dns_server: DNSResponder, signed: bytes) -> None:
    before = len(dns_server.queries)
    result = mail_dkim(dns_server, signed)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pass" and f"d={DOMAIN} s={SELECTOR}" in lines
    assert f"{SELECTOR}._domainkey.{DOMAIN}." in dns_server.queries[before:]


def test_dkimverify_refuses_a_tampered_body(dns_server: DNSResponder, signed: bytes) -> None:
    result = dkimverify(dns_server, tamper_body(signed))
    assert result.returncode == 1, result.stdout + result.stderr
    # The command ends on dkimpy's ValidationError, which names the fault.
    assert "ValidationError: body hash mismatch" in result.stderr


@needs_perl_dkim
def test_mail_dkim_refuses_a_tampered_body(dns_server: DNSResponder, signed: bytes) -> None:
    result = mail_dkim(dns_server, tamper_body(signed))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[:2] == ["fail", "fail (body has been altered)"]


@pytest.mark.parametrize("injected", ["Subject: Annulation du rendez-vous", f"To: <patient@{PARTNER}>"])
def test_a_header_added_above_a_signed_one_breaks_the_signature(
    dns_server: DNSResponder, signed: bytes, injected: str
) -> None:
    at = signed.index(b"\r\nFrom: ") + 2
    altered = signed[:at] + injected.encode() + b"\r\n" + signed[at:]
    result = dkimverify(dns_server, altered)
    assert result.returncode != 0, result.stdout


def test_unpublished_key_is_not_a_pass(signed: bytes) -> None:
    """Without the DNS record (an empty responder), neither verifier can say pass."""
    with DNSResponder() as empty:
        assert dkimverify(empty, signed).returncode != 0
        if HAVE_MAIL_DKIM:
            assert mail_dkim(empty, signed).stdout.splitlines()[0] in ("invalid", "temperror", "fail")


# -- relay-in: another operator's signed mail -----------------------------------------------------


def operator_certificate(demo: DemoServer, directory: Path, domain: str) -> tuple[Path, Path]:
    """A client certificate from the demo CA whose SAN dNSName is the operator's domain."""
    ca = DevCA.load(demo.data_dir / "certs")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mx.{domain}")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{domain}.pem", directory / f"{domain}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def operator_context(demo: DemoServer, directory: Path) -> ssl.SSLContext:
    """TLS client context of the partner operator towards ``demo`` (its CA, our certificate)."""
    cert_file, key_file = operator_certificate(demo, directory, PARTNER)
    context = ssl.create_default_context(cafile=demo.ca_cert)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module")
def relay_context(server: DemoServer, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return operator_context(server, tmp_path_factory.mktemp("operator"))


def relay(server: DemoServer, context: ssl.SSLContext, data: bytes) -> tuple[int, bytes]:
    """Relay ``data`` from the partner operator to Dr DURAND; the reply to DATA."""
    with smtplib.SMTP("127.0.0.1", server.port("relay"), timeout=30) as client:
        client.ehlo(f"mx.{PARTNER}")
        client.starttls(context=context)
        client.ehlo(f"mx.{PARTNER}")
        deadline = time.monotonic() + 10
        while True:  # the whitelist reaches the server's annuaire cache within a second
            code, reply = client.mail(REMOTE_DOCTOR)
            if code == 250:
                break
            assert time.monotonic() < deadline, reply
            client.rset()
            time.sleep(0.2)
        code, reply = client.rcpt(DURAND)
        assert code == 250, reply
        return client.data(data)


def authentication_results(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    found: list[str] = re.findall(r"^Authentication-Results: ([^\r\n]*)", head, re.M)
    assert len(found) == 1, head
    return found[0]


def relayed_message(partner: Partner, case: str, subject: str) -> bytes:
    """A message of the partner's doctor: signed, signed then altered, or unsigned."""
    raw = message(REMOTE_DOCTOR, DURAND, subject, "Bonjour,\r\n\r\nle compte rendu du patient suit.\r\n")
    if case == "unsigned":
        return raw
    raw = dkim.Signer(partner.keys_dir, SELECTOR).sign(raw, PARTNER)
    assert raw.startswith(b"DKIM-Signature: ")
    if case == "altered body":
        raw = raw.replace(b"compte rendu", b"compte rendU")
    elif case == "altered header":
        raw = raw.replace(f"To: {DURAND}\r\n".encode(), f"To: Dr Paul DURAND <{DURAND}>\r\n".encode())
    return raw


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("signed", f"dkim=pass header.d={PARTNER}"),
        ("altered header", f'dkim=fail reason="signature did not verify" header.d={PARTNER}'),
        ("altered body", f'dkim=fail reason="signature did not verify" header.d={PARTNER}'),
        ("unsigned", 'dkim=none reason="no signature"'),
    ],
)
def test_relay_in_records_the_dkim_result(
    server: DemoServer,
    stored: StoredMail,
    partner: Partner,
    relay_context: ssl.SSLContext,
    case: str,
    expected: str,
) -> None:
    subject = f"relais {case} {uuid.uuid4().hex[:8]}"
    raw = relayed_message(partner, case, subject)
    code, reply = relay(server, relay_context, raw)
    assert code == 250, reply
    [stored_raw] = stored.with_subject(DURAND, subject)
    results = authentication_results(stored_raw)
    hostname = results.split(";", 1)[0]
    assert results == f"{hostname}; {expected}"
    # The verdict is about the bytes as received: they are kept unchanged after our headers.
    assert stored_raw.endswith(raw)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory, partner: Partner) -> Iterator[DemoServer]:
    """A server configured with ``[dkim] reject_on_fail = true``."""
    demo = start_partner_demo(
        tmp_path_factory.mktemp("dkim-strict") / "data", partner, {"MSSANTE_DKIM__REJECT_ON_FAIL": "true"}
    )
    try:
        yield demo
    finally:
        stop(demo)


@pytest.fixture(scope="module")
def strict_context(strict_server: DemoServer, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    return operator_context(strict_server, tmp_path_factory.mktemp("operator-strict"))


@pytest.mark.parametrize(
    "case",
    [
        "altered header",
        "altered body",
    ],
)
def test_reject_on_fail_refuses_altered_messages(
    strict_server: DemoServer, strict_context: ssl.SSLContext, partner: Partner, case: str
) -> None:
    subject = f"relais strict {case} {uuid.uuid4().hex[:8]}"
    code, reply = relay(strict_server, strict_context, relayed_message(partner, case, subject))
    assert (code, reply) == (550, b"5.7.20 DKIM signature did not verify")
    view = StoredMail(strict_server.data_dir)
    try:
        assert view.with_subject(DURAND, subject) == []
    finally:
        view.close()


def test_reject_on_fail_still_accepts_good_and_unsigned_mail(
    strict_server: DemoServer, strict_context: ssl.SSLContext, partner: Partner
) -> None:
    for case in ("signed", "unsigned"):
        code, reply = relay(strict_server, strict_context, relayed_message(partner, case, f"strict {case}"))
        assert code == 250, reply


def test_windowed_body_hash_is_dkimpys_canonical_body_hash() -> None:
    """The body hash computed window by window (a big message is never given to dkimpy
    whole) equals dkimpy's on bodies made of what canonicalisation changes: runs of blanks,
    trailing blanks, empty lines at the end, windows cut anywhere; with ``l=`` limits too."""
    rng = random.Random(7)
    pieces = [b"a", b"bc d", b" ", b"\t", b"  \t ", b"\r\n", b"\r\n\r\n", b"xyz  ", b"."]
    original = dkim.WINDOW
    dkim.WINDOW = 16
    try:
        for _ in range(1500):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
            message = b"From: a@b.c\r\nSubject: t\r\n\r\n" + body
            start = message.index(b"\r\n\r\n") + 4
            for relaxed in (True, False):
                policy = CanonicalizationPolicy.from_c_value(
                    b"relaxed/relaxed" if relaxed else b"simple/simple"
                )
                canonical = policy.canonicalize_body(dkimpy.rfc822_parse(message)[1])
                for length in (None, 0, 5):
                    want = hashlib.sha256(canonical if length is None else canonical[:length]).digest()
                    got = dkim.body_hash(bytearray(message), start, relaxed, hashlib.sha256, length)
                    assert got == want, (body, relaxed, length)
    finally:
        dkim.WINDOW = original


def test_body_hash_of_a_big_message_holds_a_few_windows() -> None:
    """Hashing reads the message in place: what it allocates stays a few windows whatever the
    message's size (a 256 KiB window was 1 MiB in flight for a 20 MiB message), with relaxed
    canonicalisation rewriting every line too."""
    line = b"texte  avec \t des blancs   et  d'autres\r\n"
    message = bytearray(b"From: a@b.c\r\nSubject: t\r\n\r\n" + line * (4 * 1024 * 1024 // len(line)))
    start = message.index(b"\r\n\r\n") + 4
    for relaxed in (True, False):
        tracemalloc.start()
        try:
            dkim.body_hash(message, start, relaxed, hashlib.sha256)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, (relaxed, peak)
