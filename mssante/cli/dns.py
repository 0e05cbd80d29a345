"""``mssante dns records DOMAIN``: the zone-file lines an operator publishes for a domain."""

from __future__ import annotations

from typing import Annotated

import typer

from mssante.cli._common import EXIT_USAGE, command_group, fail, settings

app = command_group("dns", "DNS records to publish.")


@app.command("records")
def records(domain: Annotated[str, typer.Argument(help="A domain this operator hosts.")]) -> None:
    """MX, RFC 6186 SRV (IMAP, submission), autoconfig/autodiscover, DKIM TXT, MTA-STS and
    TLS-RPT records of DOMAIN, for the configured host name and ports."""
    from mssante.clientconfig.dns import records as zone_lines

    cfg = settings()
    hosted = {d.lower() for d in cfg.server.domains} | {cfg.server.patient_domain.lower()}
    if domain.strip().lower().rstrip(".") not in hosted:
        fail(f"{domain} is not a domain of this operator (server.domains: {sorted(hosted)})", EXIT_USAGE)
    for line in zone_lines(cfg, domain):
        print(line)
