"""``mssante certs …``: the development PKI, so that demo mode and tests run real TLS.

``certs dev`` writes ``<data_dir>/certs/``: ``ca.pem``/``ca.key`` (the development CA),
``server.pem``/``server.key`` (for server.hostname, localhost and 127.0.0.1) and
``clients/<name>.pem``/``.key`` for each ``--app``. Re-running keeps the CA and the server
certificate unless ``--force``; client certificates are (re)issued each time they are named.
Never for production: there, certificates come from IGC-Santé.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mssante.cli._common import command_group, console, fail, settings

app = command_group("certs", "Certificates (development PKI).")


def _say(text: str, *, markup: bool = True) -> None:
    # Paths and fingerprints are copied by hand: never wrap them.
    console.print(text, highlight=False, soft_wrap=True, markup=markup)


@app.command("dev")
def dev(
    app_names: Annotated[
        list[str] | None,
        typer.Option("--app", help="Issue a client certificate for this APP BAL (repeatable)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the CA and the server certificate.")
    ] = False,
) -> None:
    """Create a development CA, a server certificate and client certificates for APP mailboxes."""
    from mssante.auth.devpki import ensure_dev_pki

    cfg = settings()
    directory = cfg.data_dir / "certs"
    try:
        ca, done = ensure_dev_pki(directory, cfg.server.hostname, force=force)
        for line in done or [f"using existing development CA {ca.cert_file}"]:
            _say(line)
        for name in app_names or []:
            client = ca.issue_client(directory / "clients", name)
            _say(f"client certificate {client.cert_file} (key {client.key_file})")
            _say(f"  subject {client.subject}")
            _say(f"  sha256  {client.fingerprint}")
            _say(
                f"  bind it: mssante user add <login> --kind application --cert {client.cert_file}",
            )
    except (OSError, ValueError) as exc:
        fail(f"cannot write the development PKI in {directory}: {exc}")
    _print_config(directory)


def _print_config(directory: Path) -> None:
    _say("configuration:")
    _say(
        f'[tls]\ncert_file = "{directory / "server.pem"}"\nkey_file = "{directory / "server.key"}"\n'
        f'ca_file = "{directory / "ca.pem"}"',
        markup=False,
    )
