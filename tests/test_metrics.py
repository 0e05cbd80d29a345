"""``/metrics`` on a real ``mssante serve --demo``: traffic through the real protocols (smtplib,
imaplib, httpx over TLS), then a scrape over HTTPS parsed by prometheus_client's own parser, and
the counters must have moved by what was sent. The server is this module's own, so its counters
start at zero and only this traffic moves them; it allows scrapes from 127.0.0.2 only, or with a
token, so that the refusal of everyone else can be tested from 127.0.0.1.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from mssante import metrics
from mssante.config import ConfigError, load_settings
from mssante.runtime import Runtime
from mssante.store.types import Outbound
from tests.demo_server import DemoServer, start_demo

TOKEN = "scrape-token-0123456789abcdef"
SCRAPER = "127.0.0.2"  # the address [metrics] allow names; tests connect from 127.0.0.1 otherwise
MAX_SIZE = 64 * 1024
REMOTE = "autre-operateur.mssante.fr"  # whitelisted by the test, routed to a closed port
DOCTOR, COLLEAGUE = "claire.martin@demo.mssante.fr", "paul.durand@demo.mssante.fr"
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-mssante.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {
        "MSSANTE_METRICS__ALLOW": json.dumps([f"{SCRAPER}/32"]),
        "MSSANTE_METRICS__TOKEN": TOKEN,
        "MSSANTE_SMTP__MAX_MESSAGE_SIZE": str(MAX_SIZE),
        "MSSANTE_RELAY__ROUTES": json.dumps({REMOTE: "127.0.0.1:9"}),
        "MSSANTE_RELAY__POLL_SECONDS": "0.2",
        "MSSANTE_SMTP__MAX_CONNECTIONS_PER_IP": "3",
        "MSSANTE_IMAP__MAX_CONNECTIONS_PER_IP": "3",
    }
    demo = start_demo(tmp_path_factory.mktemp("metrics") / "data", env)
    try:
        yield demo
    finally:
        assert demo.stop() == 0, demo.log()


def _client(server: DemoServer, source: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(
        verify=ssl.create_default_context(cafile=server.ca_cert), local_address=source
    )
    return httpx.Client(base_url=f"https://127.0.0.1:{server.port('http')}", transport=transport, timeout=30)


def scrape(server: DemoServer) -> Samples:
    with _client(server, SCRAPER) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _password(server: DemoServer, address: str) -> str:
    return str(server.account(address)["password"])


def _submission(server: DemoServer, login: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30)
    smtp.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
    smtp.login(login, _password(server, login))
    return smtp


def _message(sender: str, to: str, body: str = "Compte rendu de consultation.") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Compte rendu"
    msg["Date"] = "Sat, 05 Dec 2026 10:00:00 +0100"
    msg.set_content(body)
    return msg


def test_scrapes_are_refused_unless_allowed_or_with_the_token(server: DemoServer) -> None:
    with _client(server) as client:  # from 127.0.0.1, which [metrics] allow does not name
        assert client.get("/metrics").status_code == 403
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer wrong-token-wrong"}).status_code == 403
        )
        assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 403
        good = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and "mssante_smtp_sessions" in good.text
    with _client(server, SCRAPER) as client:
        assert client.get("/metrics").status_code == 200


def test_smtp_transactions_refusals_sizes_latency_and_logins(server: DemoServer) -> None:
    before = scrape(server)
    with _submission(server, DOCTOR) as smtp:
        smtp.send_message(_message(DOCTOR, COLLEAGUE))  # 250
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # 550 5.1.1 at RCPT
            smtp.send_message(_message(DOCTOR, "nobody@demo.mssante.fr"))
        # Too big, found at the end of DATA (no SIZE= announced in MAIL FROM): 552 5.3.4.
        smtp.mail(DOCTOR)
        smtp.rcpt(COLLEAGUE)
        code, _ = smtp.data(_message(DOCTOR, COLLEAGUE, ("x" * 70 + "\n") * 1000).as_string())
        assert code == 552
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30)
        smtp.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        try:
            smtp.login(COLLEAGUE, "not the password")
        finally:
            smtp.close()
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mssante_smtp_transactions_total", listener="submission", result="2xx") == 1
    assert moved("mssante_smtp_transactions_total", listener="submission", result="5xx") == 1
    assert moved("mssante_smtp_refusals_total", listener="submission", stage="RCPT", status="5.1.1") == 1
    # The message refused while it was read is never handed over: only the accepted one has a
    # size and an acknowledgement time.
    assert moved("mssante_smtp_message_size_bytes_count", listener="submission") == 1
    assert moved("mssante_smtp_ack_seconds_count", listener="submission") == 1
    assert 0 < moved("mssante_smtp_ack_seconds_sum", listener="submission") < 10
    assert moved("mssante_logins_total", mechanism="PLAIN", listener="submission", result="success") == 1
    assert moved("mssante_logins_total", mechanism="PLAIN", listener="submission", result="failure") == 1
    assert value(after, "mssante_store_used_bytes") > 0


def test_imap_sessions_and_commands(server: DemoServer) -> None:
    before = scrape(server)
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port("imaps"), ssl_context=ssl.create_default_context(cafile=server.ca_cert)
    )
    imap.login(COLLEAGUE, _password(server, COLLEAGUE))
    imap.select("INBOX")
    imap.fetch("1:*", "(FLAGS ENVELOPE)")
    imap.search(None, "ALL")
    assert imap.select("Nowhere")[0] == "NO"
    during = scrape(server)
    imap.logout()
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "mssante_imap_sessions", state="authenticated") >= 1  # the failed SELECT closed
    assert value(after, "mssante_imap_sessions", state="authenticated") == 0
    assert moved("mssante_imap_commands_total", command="LOGIN", status="OK") == 1
    assert moved("mssante_imap_commands_total", command="SELECT", status="OK") == 1
    assert moved("mssante_imap_commands_total", command="SELECT", status="NO") == 1
    assert moved("mssante_imap_command_seconds_count", command="FETCH") == 1
    assert moved("mssante_imap_command_seconds_count", command="SEARCH") == 1
    logins = {
        dict(labels)["mechanism"]: v - before.get((name, labels), 0.0)
        for (name, labels), v in after.items()
        if name == "mssante_logins_total"
        and ("listener", "imap") in labels
        and ("result", "success") in labels
    }
    assert sum(logins.values()) == 1, logins  # IMAP LOGIN is checked as a SASL PLAIN credential


def test_connections_refused_at_the_caps(server: DemoServer) -> None:
    before = scrape(server)
    for protocol, port, refusal in (
        ("smtp", server.port("submission"), b"421 4.7.0"),
        ("imap", server.port("imap"), b"* BYE [UNAVAILABLE]"),
    ):
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for connection in held:
            assert connection.recv(200)  # greeted: admitted
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            assert extra.recv(200).startswith(refusal)
        during = scrape(server)
        for connection in held:
            connection.close()
        refused = value(during, "mssante_connections_refused_total", protocol=protocol)
        assert refused - value(before, "mssante_connections_refused_total", protocol=protocol) == 1
        if protocol == "smtp":
            assert value(during, "mssante_smtp_sessions") == 3
        else:
            assert value(during, "mssante_imap_sessions", state="not authenticated") == 3
        deadline = time.monotonic() + 10  # the caps are free again before the next test
        while time.monotonic() < deadline:
            now = scrape(server)
            imap_open = sum(v for (name, _), v in now.items() if name == "mssante_imap_sessions")
            if value(now, "mssante_smtp_sessions") == 0 and imap_open == 0:
                break
            time.sleep(0.05)


def test_queue_depth_per_domain_and_relay_outcomes(server: DemoServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(server.data_dir),
         "annuaire", "whitelist", "add", REMOTE],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    before = scrape(server)
    with _submission(server, DOCTOR) as smtp:
        smtp.send_message(_message(DOCTOR, f"confrere@{REMOTE}"))
    deadline = time.monotonic() + 20
    while True:
        after = scrape(server)
        deferred = value(after, "mssante_relay_deliveries_total", outcome="deferred") - value(
            before, "mssante_relay_deliveries_total", outcome="deferred"
        )
        if deferred >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert deferred >= 1  # the route is a closed port: a temporary failure, retried later
    assert value(after, "mssante_queue_depth", domain=REMOTE) == 1
    assert value(after, "mssante_queue_oldest_age_seconds", domain=REMOTE) >= 0


def test_dmp_deposit_code_and_break_glass(server: DemoServer) -> None:
    before = scrape(server)
    gateway = "dmp@demo.mssante.fr"
    with _submission(server, DOCTOR) as smtp:
        smtp.send_message(_message(DOCTOR, gateway))  # no IHE_XDM.ZIP: refused by the DMP, code 900+
    ins = "175056912378904"  # Jean LEROY, whose care team the demo pharmacist is not in
    token = server.token("810100000037")
    with _client(server) as client:
        opened = client.get(
            f"/dmp/patients/{ins}/documents",
            headers={"Authorization": f"Bearer {token}"},
            params={"break_glass": "true", "reason": "urgence vitale"},
        )
        assert opened.status_code == 200, opened.text  # break-glass, with a reason
    deadline = time.monotonic() + 15
    while True:
        after = scrape(server)
        codes = {
            dict(labels)["code"]: v - value(before, name, **dict(labels))
            for (name, labels), v in after.items()
            if name == "mssante_dmp_deposits_total"
        }
        if any(codes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    moved = {code: n for code, n in codes.items() if n}
    assert len(moved) == 1 and list(moved.values()) == [1], moved
    assert re.fullmatch(r"9\d\d", next(iter(moved))), moved  # an ANS error code
    glass = value(after, "mssante_dmp_break_glass_total") - value(before, "mssante_dmp_break_glass_total")
    assert glass == 1


def test_state_read_at_scrape_time(server: DemoServer) -> None:
    samples = scrape(server)
    certificates = {dict(labels)["source"]: v for (name, labels), v in samples.items()
                    if name == "mssante_certificate_expiry_days"}  # fmt: skip
    assert 0 < certificates["tls.cert_file"] < 3700
    assert any(source.startswith("account:") for source in certificates)  # the DPI's client certificate
    assert 0 <= value(samples, "mssante_audit_head_age_seconds") < 3600
    assert value(samples, "mssante_store_database_bytes") > 0
    assert value(samples, "mssante_store_mailboxes") >= 1  # storage is made at first delivery
    assert value(samples, "mssante_smtp_sessions") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


def _expressions(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "expr" and isinstance(item, str):
                yield item
            else:
                yield from _expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def test_grafana_dashboard_uses_only_exposed_metrics(server: DemoServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    with _client(server, SCRAPER) as client:
        text = client.get("/metrics").text
    exposed: set[str] = set()
    for family in text_string_to_metric_families(text):  # families without samples count too
        exposed.add(family.name)
        exposed.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            exposed.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        if family.type == "counter":
            exposed.add(family.name + "_total")
    expressions = list(_expressions(dashboard))
    assert len(expressions) >= 20
    for expr in expressions:
        names = set(re.findall(r"\b(?:mssante|process)_[a-z_]+\b", expr))
        assert names, expr
        for name in names:
            assert name in exposed, f"{name} (in {expr!r}) is not exposed"


async def test_server_state_on_each_database(runtime: Runtime, tmp_path: Path) -> None:
    """The gauges read at scrape time, on SQLite and (with MSSANTE_TEST_PG_URL) PostgreSQL: one
    queued message for a remote domain, the audit records of its acceptance, and a certificate
    file written here with 10 days left."""
    raw = _message(DOCTOR, f"confrere@{REMOTE}").as_bytes().replace(b"\n", b"\r\n")
    await runtime.store.deliver(
        raw, DOCTOR, [COLLEAGUE], actor=DOCTOR, outbound=Outbound(raw, {REMOTE: [f"confrere@{REMOTE}"]})
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.demo.mssante.fr")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=10))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    runtime.settings.tls.cert_file = pem

    families = {family.name: family for family in metrics.ServerState(runtime).collect()}

    def sample(name: str, **labels: str) -> float:
        found = [s.value for s in families[name].samples if s.labels == labels]
        assert len(found) == 1, (name, labels, families[name].samples)
        return float(found[0])

    assert sample("mssante_queue_depth", domain=REMOTE) == 1
    assert 0 <= sample("mssante_queue_oldest_age_seconds", domain=REMOTE) < 60
    assert 0 <= sample("mssante_audit_head_age_seconds") < 60
    assert sample("mssante_store_used_bytes") == len(raw)  # one copy, in the colleague's BAL
    assert sample("mssante_store_mailboxes") == 1
    assert sample("mssante_store_database_bytes") > 0
    days = sample("mssante_certificate_expiry_days", source="tls.cert_file", subject="CN=mx.demo.mssante.fr")
    assert 9.9 < days <= 10
    assert sample("mssante_dmp_break_glass") == 0


def test_metrics_configuration_is_checked_and_the_token_masked() -> None:
    settings = load_settings(None, metrics={"token": TOKEN, "allow": ["10.0.0.0/8", "::1"]})
    assert settings.public_dict()["metrics"]["token"] == "***"
    assert metrics.allowed(settings.metrics, "10.1.2.3", "")
    assert metrics.allowed(settings.metrics, "192.0.2.1", f"Bearer {TOKEN}")
    assert not metrics.allowed(settings.metrics, "192.0.2.1", "Bearer " + TOKEN[:-1])
    assert not metrics.allowed(settings.metrics, "not-an-address", "")
    with pytest.raises(ConfigError) as bad:
        load_settings(None, metrics={"allow": ["10.0.0.300/8"]})
    assert bad.value.key.startswith("metrics.allow")
    with pytest.raises(ConfigError) as short:
        load_settings(None, metrics={"token": "short"})
    assert short.value.key == "metrics.token"
