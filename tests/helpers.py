"""Small builders shared by tests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
from email.utils import formatdate, make_msgid
from pathlib import Path

import httpx

from mssante.auth.devpki import DevCA
from tests.demo_server import DemoServer

NEOMUTT, SCRIPT = shutil.which("neomutt"), shutil.which("script")


def make_message(
    sender: str = "dr.martin@demo.mssante.fr",
    to: str = "dr.durand@demo.mssante.fr",
    subject: str = "Compte rendu",
    body: str = "Bonjour,\r\nci-joint le compte rendu.\r\n",
    size: int | None = None,
) -> bytes:
    """An RFC 5322 message with CRLF line ends, padded to ``size`` bytes when given."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {formatdate()}\r\n"
        f"Message-ID: {make_msgid(domain='demo.mssante.fr')}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    data = head + body.encode()
    if size is not None and len(data) < size:
        line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit sed do eiusmod.\r\n"
        data += line * ((size - len(data)) // len(line) + 1)
        data = data[: size - 2] + b"\r\n"
    return data


def operator_env(
    ca: DevCA, root: Path, domain: str, relay_port: int, routes: dict[str, int]
) -> dict[str, str]:
    """The settings of one operator of a two-operator world on this machine: its domain and
    certificate from ``ca``, its relay port, static routes to the others' relay ports."""
    certs = root / f"pki-{domain}"
    certs.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_server(certs, [domain, f"mx.{domain}", "localhost", "127.0.0.1"])
    return {
        "MSSANTE_SERVER__DOMAINS": json.dumps([domain]),
        "MSSANTE_SERVER__HOSTNAME": f"mx.{domain}",
        "MSSANTE_TLS__CERT_FILE": str(issued.cert_file),
        "MSSANTE_TLS__KEY_FILE": str(issued.key_file),
        "MSSANTE_TLS__CA_FILE": str(ca.cert_file),
        "MSSANTE_SMTP__RELAY_PORT": str(relay_port),
        "MSSANTE_RELAY__ROUTES": json.dumps({d: f"127.0.0.1:{p}" for d, p in routes.items()}),
        "MSSANTE_RELAY__POLL_SECONDS": "0.5",
        "MSSANTE_DKIM__RECORDS_DIR": str(root / "dkim-records"),
    }


def body_digest(message: bytes) -> str:
    """SHA-256 of what follows the header (a server adds fields on top, never below)."""
    return hashlib.sha256(message[message.index(b"\r\n\r\n") + 4 :]).hexdigest()


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def web_client(demo: DemoServer) -> httpx.Client:
    """An HTTP client of the demo server's pages over TLS (the demo CA trusted), whose forms come
    from the site itself (``Origin``)."""
    base = f"https://127.0.0.1:{demo.listener('http')['port']}"
    return httpx.Client(
        base_url=base,
        verify=ssl.create_default_context(cafile=demo.ca_cert),
        headers={"origin": base},
        timeout=30,
    )


def csrf_of(html: str) -> str:
    """The CSRF token of a page's form."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def neomutt_pipe(
    tmp_path: Path, folder: str, ca_file: str, *settings: str, select: str = ""
) -> tuple[bytes | None, str]:
    """The message neomutt pipes out (``<pipe-message>``, after the keys ``select``) of the IMAPS
    ``folder`` it opens, trusting ``ca_file``, with ``settings`` (its login…) added to its
    configuration; None if it piped nothing, and the end of its screen. neomutt has no headless
    mode: it runs in the pseudo-terminal of ``script``, driven by keystrokes pushed from its
    configuration (callers skip when :data:`NEOMUTT` or :data:`SCRIPT` is None)."""
    assert NEOMUTT is not None and SCRIPT is not None
    out = tmp_path / "piped.eml"
    rc = tmp_path / "neomuttrc"
    rc.write_text(f"""
set folder = "{folder}"
{chr(10).join(settings)}
set spoolfile = "+INBOX"
set ssl_ca_certificates_file = "{ca_file}"
set ssl_force_tls = yes
set certificate_file = "{tmp_path / "certificates"}"
set header_cache = ""
set message_cachedir = ""
set mail_check = 0
set timeout = 5
set wait_key = no
set pipe_decode = no
push "{select}<pipe-message>cat > {out}<enter><quit>"
""")
    done = subprocess.run(
        [SCRIPT, "-qec", f"{NEOMUTT} -n -F {rc}", "/dev/null"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=90,
        env={**os.environ, "TERM": "xterm", "HOME": str(tmp_path)},
    )  # fmt: skip
    screen = done.stdout.decode(errors="replace")[-2000:]
    return (out.read_bytes() if out.exists() else None), screen
