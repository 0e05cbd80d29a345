"""The least an SMTP server built on aiosmtpd can do per message: the floor of the protocol layer.

Usage (started by ``bench/smtp_phases.py`` and ``bench/smtp_ingest.py`` given ``--with-floor``):
``python bench/_aiosmtpd_floor.py CERT KEY PORT QUEUE_DIR LOGIN PASSWORD``; prints ``ready``
once it listens on 127.0.0.1.

STARTTLS and AUTH required, as on mssante's submission listener; each message written to a
file of its own in QUEUE_DIR and ``fsync``'ed before its ``250`` (what Postfix's ``cleanup``
does with a queue file), and nothing else: no directory, no policy, no mailbox, no audit. Made
to tell apart, at one reused session, what the protocol library and Python's asyncio and TLS
cost on this machine from what mssante's own work before the ``250`` costs. Not a server
anyone should run.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def main() -> None:
    cert, key, port, queue_dir, login, password = sys.argv[1:7]
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    queue = Path(queue_dir)
    numbers = itertools.count()

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
            path = queue / str(next(numbers))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, envelope.original_content)
                os.fsync(fd)
            finally:
                os.close(fd)
            return "250 2.0.0 Ok: queued"

    def authenticator(server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and hmac.compare_digest(data.login, login.encode())
            and hmac.compare_digest(data.password, password.encode())
        )
        return AuthResult(success=ok)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: SMTP(
                Handler(),
                tls_context=tls,
                require_starttls=True,
                authenticator=authenticator,
                auth_required=True,
                decode_data=False,
            ),
            "127.0.0.1",
            int(port),
        )
        print("ready", flush=True)
        await listener.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
