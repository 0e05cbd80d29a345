"""``mssante demo …``: helpers for demo mode.

``demo token --as IDNAT`` signs an access token with the local test identity provider (key in
``<data_dir>/demo-idp/``), which the server trusts when ``auth.demo_idp`` is on (``serve --demo``),
so that a newcomer can log in with any OAUTHBEARER/XOAUTH2-capable client.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer

from mssante.cli._common import EXIT_USAGE, command_group, console, err_console, fail, settings, state

app = command_group("demo", "Demo mode helpers.")


def _guess_kind(identifier: str) -> str:
    from mssante.auth.identity import InvalidIdentity, check_idnat, check_ins

    for kind, check in (("professional", check_idnat), ("patient", check_ins)):
        try:
            check(identifier)
            return kind
        except InvalidIdentity:
            pass
    return "staff"


@app.command("token")
def token(
    identifier: Annotated[
        str, typer.Option("--as", help="IdNat_PS (e.g. 810102727017), INS matricule or staff local id.")
    ],
    kind: Annotated[
        str | None, typer.Option(help="professional, staff or patient (default: guessed from --as).")
    ] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.", min=60, max=86400)] = 3600,
    sasl: Annotated[
        str | None, typer.Option(help="Print the base64 SASL initial response for OAUTHBEARER or XOAUTH2.")
    ] = None,
) -> None:
    """Print a signed access token (JWT) for the demo identity provider."""
    from mssante.auth.identity import IdentityKind, InvalidIdentity, check_idnat, check_ins, check_local_id
    from mssante.auth.testidp import LocalIdP

    chosen = kind or _guess_kind(identifier)
    checks = {"professional": check_idnat, "patient": check_ins, "staff": check_local_id}
    if chosen not in checks:
        fail("--kind must be professional, staff or patient", EXIT_USAGE)
    try:
        value = checks[chosen](identifier)
    except InvalidIdentity as exc:
        fail(str(exc), EXIT_USAGE)
    cfg = settings()
    try:
        idp = LocalIdP.for_settings(cfg)
    except (OSError, ValueError) as exc:
        fail(f"demo identity provider: {exc}")
    jwt = idp.token(value, IdentityKind(chosen), ttl=ttl)
    if sasl is None:
        print(jwt)
        return
    if sasl.upper() == "OAUTHBEARER":
        message = f"n,,\x01auth=Bearer {jwt}\x01\x01"
    elif sasl.upper() == "XOAUTH2":
        message = f"user={value}\x01auth=Bearer {jwt}\x01\x01"
    else:
        fail("--sasl must be OAUTHBEARER or XOAUTH2", EXIT_USAGE)
    print(base64.b64encode(message.encode()).decode())
    if not cfg.auth.demo_idp:
        err_console.print(
            "note: the server trusts this token only with auth.demo_idp = true (serve --demo)", style="yellow"
        )


@app.command("peers")
def peers(
    peer_domain: Annotated[str, typer.Option(help="Domain of the second operator.")] = "autre.mssante.fr",
    peer_data_dir: Annotated[
        Path | None,
        typer.Option(help="Its data directory (default: <data_dir>-<its first label>)."),
    ] = None,
) -> None:
    """Run the demo operator and a second operator side by side, relaying to each other over
    mutual TLS (same development CA, each on the other's liste blanche, static routes); both
    demo.json files list the other under "peers". Ctrl-C stops both."""
    from mssante import demo_peers

    cfg = settings()
    peer_dir = peer_data_dir or cfg.data_dir.parent / f"{cfg.data_dir.name}-{peer_domain.split('.')[0]}"
    global_args = ["--data-dir", str(cfg.data_dir)]
    if state.config_path is not None:
        global_args += ["--config", str(state.config_path)]
    try:
        operators = demo_peers.prepare(cfg, global_args, peer_dir.resolve(), peer_domain.lower())
        code = demo_peers.run(operators, say=console.print)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    raise typer.Exit(code)
