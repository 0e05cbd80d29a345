"""A real ``mssante serve --demo`` process for end-to-end tests: every port chosen by the
system on 127.0.0.1, connection details read from its ``demo.json`` (the public contract)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PORT_KEYS = (
    "MSSANTE_SMTP__SUBMISSION_PORT",
    "MSSANTE_SMTP__SUBMISSIONS_PORT",
    "MSSANTE_SMTP__RELAY_PORT",
    "MSSANTE_IMAP__PORT",
    "MSSANTE_IMAP__TLS_PORT",
    "MSSANTE_HTTP__PORT",
)


@dataclass
class DemoServer:
    process: subprocess.Popen[str]
    data_dir: Path
    doc: dict[str, Any]
    log_path: Path

    def listener(self, name: str) -> dict[str, Any]:
        for item in self.doc["listeners"]:
            if item["name"] == name:
                return dict(item)
        raise KeyError(name)

    def port(self, name: str) -> int:
        return int(self.listener(name)["port"])

    def account(self, address: str) -> dict[str, Any]:
        for item in self.doc["accounts"]:
            if item["address"] == address:
                return dict(item)
        raise KeyError(address)

    @property
    def ca_cert(self) -> str:
        return str(self.doc["ca_cert"])

    def token(self, identifier: str, kind: str = "professional") -> str:
        """An access token from the demo identity provider (`mssante demo token`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
        done = subprocess.run(
            [sys.executable, "-m", "mssante", "--data-dir", str(self.data_dir), "demo", "token",
             "--as", identifier, "--kind", kind],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_demo(data_dir: Path, env: dict[str, str] | None = None, timeout: float = 60) -> DemoServer:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    full_env.update({key: "0" for key in PORT_KEYS})
    full_env.update(env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    demo_json = data_dir / "demo.json"
    if demo_json.exists():
        demo_json.unlink()  # rewritten once the listeners are up
    log_path = data_dir / "server.log"
    # The log names addresses and logins: owner-only, like everything in the data directory.
    log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mssante", "serve", "--demo", "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not demo_json.exists():
        if process.poll() is not None:
            raise RuntimeError(f"demo server exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"demo server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return DemoServer(process, data_dir, json.loads(demo_json.read_text()), log_path)
