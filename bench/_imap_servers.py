"""The two IMAP servers the IMAP benchmarks compare, started alike: ours (``mssante serve
--demo`` in its own process) and a throw-away Dovecot from Debian's ``dovecot-imapd``.

Both get the same conditions: implicit TLS on 127.0.0.1 with the same RSA certificate (the
demo's), the same login and the *same* argon2id hash (ours, copied into Dovecot's passwd-file as
``{ARGON2ID}``), a verified-credential cache on both (ours by default, Dovecot's
``auth_cache_size``). Dovecot's config, state and Maildir live in a temporary directory and it
uses high-performance login processes; the machine's own mail setup is never read or touched.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench._common import ensure_dovecot_imapd, free_port, process_tree, stop

LOGIN = "claire.martin@demo.mssante.fr"


class Ours:
    """``mssante serve --demo`` with only the IMAPS listener of interest reachable."""

    def __init__(self, root: Path, url: str, workers: int = 1) -> None:
        self.root = root
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "MSSANTE_CONFIG"}
        env.update(
            MSSANTE_DATABASE__URL=url,
            MSSANTE_SMTP__SUBMISSION_PORT="0",
            MSSANTE_SMTP__SUBMISSIONS_PORT="0",
            MSSANTE_SMTP__RELAY_PORT="0",
            MSSANTE_HTTP__PORT="0",
            MSSANTE_IMAP__PORT=str(free_port()),
            MSSANTE_IMAP__TLS_PORT=str(self.port),
            MSSANTE_IMAP__MAX_CONNECTIONS="5000",
            MSSANTE_IMAP__MAX_CONNECTIONS_PER_IP="5000",
            MSSANTE_RELAY__ENABLED="false",
            MSSANTE_SERVER__WORKERS=str(workers),
        )
        self.log = (root / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mssante", "--data-dir", str(root / "data"), "serve", "--demo"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        demo = root / "data" / "demo.json"
        deadline = time.monotonic() + 300
        # demo.json comes with the first worker: wait for every worker's IMAPS listener too.
        while not (demo.exists() and demo.stat().st_size) or self._serving() < workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"our server did not start: {(root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        accounts = json.loads(demo.read_text())["accounts"]
        self.password = next(a["password"] for a in accounts if a["login"] == LOGIN)
        engine = create_engine(url)
        with engine.connect() as conn:
            self.password_hash = conn.execute(
                text("SELECT password_hash FROM auth_accounts WHERE login = :l"), {"l": LOGIN}
            ).scalar_one()
        engine.dispose()
        self.cert, self.key = root / "data" / "certs" / "server.pem", root / "data" / "certs" / "server.key"

    def _serving(self) -> int:
        return (self.root / "serve.log").read_text(errors="replace").count("listening: imaps ")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def tracebacks(self) -> int:
        return (self.root / "serve.log").read_text(errors="replace").count("Traceback")

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


class Dovecot:
    """A throw-away Dovecot with the same certificate, login and password hash as ours."""

    def __init__(self, root: Path, ours: Ours) -> None:
        if os.geteuid() != 0:
            raise SystemExit("Dovecot needs root (apt-get, and Dovecot's own users); or pass --no-dovecot")
        self.binary = ensure_dovecot_imapd()
        self.root = root
        self.port = free_port()
        user = pwd.getpwnam("nobody")
        root.mkdir(parents=True)
        os.chmod(root.parent, 0o755)
        os.chmod(root, 0o755)
        home = root / "home"
        (home / LOGIN / "Maildir").mkdir(parents=True)
        for path in (home, *home.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        (root / "passwd").write_text(f"{LOGIN}:{{ARGON2ID}}{ours.password_hash}::::::\n")
        dh = Path("/usr/share/dovecot/dh.pem")
        config = root / "dovecot.conf"
        config.write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mssante-bench-{os.getpid()}
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{ours.cert}
ssl_key = <{ours.key}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
auth_mechanisms = plain login
auth_cache_size = 10M
auth_cache_ttl = 5 mins
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user.pw_uid} gid={user.pw_gid} home={home}/%u
}}
first_valid_uid = {user.pw_uid}
first_valid_gid = {user.pw_gid}
mail_location = maildir:~/Maildir
default_process_limit = 5000
default_client_limit = 10000
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = 5000
}}
service imap {{
  process_limit = 5000
}}
service anvil {{
  client_limit = 10100
}}
protocol imap {{
  mail_max_userip_connections = 5000
}}
"""
        )
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(config)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = root / "dovecot.log"
                    raise RuntimeError(
                        f"Dovecot did not start: {log.read_text()[-2000:] if log.exists() else ''}"
                    ) from None
                time.sleep(0.1)
        self.password = ours.password
        self.version = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True
        ).stdout.strip()

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def stop(self) -> None:
        stop(self.process)
