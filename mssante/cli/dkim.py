"""``mssante dkim …``: signing keys of the domains this operator hosts."""

from __future__ import annotations

from typing import Annotated

import typer

from mssante.cli._common import command_group, console, fail, settings

app = command_group("dkim", "DKIM signing keys.")


@app.command("keygen")
def keygen(domain: Annotated[str, typer.Argument(help="Domain whose outgoing mail is signed.")]) -> None:
    """Create the domain's RSA-2048 key (kept if it exists) and print the DNS TXT record to publish."""
    from mssante.smtp.dkim import generate_key

    cfg = settings()
    assert cfg.dkim.keys_dir is not None
    try:
        path, record = generate_key(cfg.dkim.keys_dir, domain, cfg.dkim.selector)
    except (OSError, ValueError) as exc:
        fail(f"cannot create the key of {domain}: {exc}")
    console.print(f"key: {path}", highlight=False)
    print(record)
