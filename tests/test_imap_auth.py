"""IMAP LOGIN and AUTHENTICATE through the real authentication module (local accounts,
brute-force counters, audit), over TLS on loopback."""

from __future__ import annotations

import asyncio
import base64
import imaplib
from pathlib import Path

from sqlalchemy import Engine, text

from mssante.auth import accounts
from mssante.auth.authenticator import Authenticator
from mssante.auth.identity import Identity
from mssante.config import Settings
from mssante.db import transaction
from mssante.imap.auth_gate import AuthenticatorGate
from mssante.imap.server import ImapServer
from mssante.runtime import Runtime
from tests.imap_dialogues.harness import make_tls

IDNAT = "810102727017"
PASSWORD = "correct horse battery staple"
BAL = "dr.martin@demo.mssante.fr"


async def _resolve(identity: Identity, authzid: str | None) -> str | None:
    # Stands in for the policy module: this professional opens his own PER BAL only.
    return BAL if identity.id == IDNAT and authzid is None else None


def _client_session(port: int, ca_file: Path) -> list[str]:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    outcomes = []
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context) as imap:
        assert "AUTH=PLAIN" in imap.capabilities
        try:
            imap.login("dr.martin", "wrong")
        except imaplib.IMAP4.error as exc:
            outcomes.append(str(exc))
        typ, _ = imap.authenticate("PLAIN", lambda _: b"\0dr.martin\0" + PASSWORD.encode())
        outcomes.append(typ)
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context) as imap:
        outcomes.append(imap.login("dr.martin", PASSWORD)[0])
        imap.logout()
    return outcomes


async def test_login_and_authenticate_through_mssante_auth(
    runtime: Runtime, settings: Settings, auth_engine: Engine, tmp_path: Path
) -> None:
    with transaction(auth_engine) as session:
        accounts.create(session, "dr.martin", "professional", IDNAT, password=PASSWORD)
    gate = AuthenticatorGate(Authenticator(auth_engine, settings), _resolve)
    tls = make_tls(tmp_path / "tls")
    server = ImapServer(runtime.store, gate, tls_context=tls.server)
    listener = await server.start("127.0.0.1", 0, implicit_tls=True)
    try:
        port = listener.sockets[0].getsockname()[1]
        outcomes = await asyncio.to_thread(_client_session, port, tls.ca_file)
    finally:
        listener.close()
        await server.close_connections()
        await listener.wait_closed()
    assert "AUTHENTICATIONFAILED" in outcomes[0]
    assert outcomes[1:] == ["OK", "OK"]
    with auth_engine.connect() as conn:
        actions = [r[0] for r in conn.execute(text("SELECT action FROM audit_log ORDER BY seq"))]
    assert actions.count("auth.success") == 2 and "auth.failure" in actions


def test_plain_initial_matches_rfc4616() -> None:
    from mssante.imap.gate import decode_plain, plain_initial

    wire = plain_initial("dr.martin", PASSWORD)
    assert base64.b64decode(wire) == b"\0dr.martin\0" + PASSWORD.encode()
    assert decode_plain(wire) == ("", "dr.martin", PASSWORD)
    assert decode_plain("not base64!") is None
    assert decode_plain(plain_initial("x", "\udce9")) is None  # Latin-1 "é": not UTF-8, refused
    assert decode_plain(base64.b64encode(b"only-one-part").decode()) is None
