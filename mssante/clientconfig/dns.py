"""The DNS records an operator publishes for one of its domains, as zone-file lines.

- MX: where other operators deliver (port 25; the relay-in listener must be reachable there).
- RFC 6186 SRV records, with RFC 8314's ``_submissions``: implicit TLS gets the lower (preferred)
  priority; POP3 is not offered, which RFC 6186 §4 says with the target ".".
- Autoconfiguration: ``autoconfig.<domain>`` (Thunderbird) and ``_autodiscover._tcp`` (Outlook)
  pointing at the HTTPS listener.
- DKIM: the TXT record of the domain's key (``mssante dkim keygen``), split into strings of at
  most 255 octets as DNS requires.
- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): other operators' servers then refuse to deliver to
  us without valid TLS. The policy is served by the HTTPS listener at
  ``/.well-known/mta-sts.txt``; its ``id`` changes whenever its text does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mssante.config import Settings
from mssante.smtp.dkim import key_path, txt_record

MTA_STS_MAX_AGE = 7 * 24 * 3600
TTL = 3600


def mta_sts_policy(settings: Settings) -> str:
    return f"version: STSv1\nmode: enforce\nmx: {settings.server.hostname}\nmax_age: {MTA_STS_MAX_AGE}\n"


def _quoted(value: str) -> str:
    """A TXT value as DNS character-strings of at most 255 octets each."""
    data = value.encode()
    chunks = [data[i : i + 255].decode() for i in range(0, len(data), 255)] or [""]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def _dkim(keys_dir: Path, domain: str, selector: str) -> list[str]:
    path = key_path(keys_dir, domain, selector)
    if not path.exists():
        return [f"; no DKIM key for {domain}: create it with `mssante dkim keygen {domain}`"]
    name, _, value = txt_record(path, domain, selector).partition(" IN TXT ")
    return [f"{name} {TTL} IN TXT {_quoted(value.strip().strip(chr(34)))}"]


def records(settings: Settings, domain: str) -> list[str]:
    domain = domain.strip().lower().rstrip(".")
    host = settings.server.hostname.rstrip(".") + "."
    zone = domain + "."
    smtp, imap = settings.smtp, settings.imap
    policy = mta_sts_policy(settings)
    sts_id = hashlib.sha256(policy.encode()).hexdigest()[:20]
    lines = [
        f"; DNS records of {domain}, served by {host}",
        f"{zone} {TTL} IN MX 10 {host}",
    ]
    if smtp.relay_port != 25:
        lines.append(f"; the relay-in listener is on port {smtp.relay_port}: MX delivery needs port 25")
    lines += [
        "; RFC 6186 / RFC 8314: mail clients find the servers (implicit TLS preferred)",
        f"_submissions._tcp.{zone} {TTL} IN SRV 0 1 {smtp.submissions_port} {host}",
        f"_submission._tcp.{zone} {TTL} IN SRV 10 1 {smtp.submission_port} {host}",
        f"_imaps._tcp.{zone} {TTL} IN SRV 0 1 {imap.tls_port} {host}",
        f"_imap._tcp.{zone} {TTL} IN SRV 10 1 {imap.port} {host}",
        f"_pop3s._tcp.{zone} {TTL} IN SRV 0 0 0 .",
        f"_pop3._tcp.{zone} {TTL} IN SRV 0 0 0 .",
        "; autoconfiguration: Thunderbird (https://autoconfig.<domain>/mail/config-v1.1.xml) and Outlook",
        f"autoconfig.{zone} {TTL} IN CNAME {host}",
        f"_autodiscover._tcp.{zone} {TTL} IN SRV 0 1 {settings.http.port} {host}",
        "; DKIM",
        *_dkim(settings.dkim.keys_dir or settings.data_dir / "dkim", domain, settings.dkim.selector),
        "; MTA-STS (policy at https://mta-sts.<domain>/.well-known/mta-sts.txt, port 443) and TLS-RPT",
        f"mta-sts.{zone} {TTL} IN CNAME {host}",
        f'_mta-sts.{zone} {TTL} IN TXT "v=STSv1; id={sts_id}"',
        f"; TLS reports go to tls-rpt@{domain}: publish that BAL, or change rua",
        f'_smtp._tls.{zone} {TTL} IN TXT "v=TLSRPTv1; rua=mailto:tls-rpt@{domain}"',
    ]
    return lines
