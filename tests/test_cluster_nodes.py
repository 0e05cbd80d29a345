"""Node identity and lifecycle: a live node's name is not taken by another process, a killed
node's name is free again, and SIGTERM drains (IDLE clients get ``* BYE``; ready goes 503)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from mssante.db import make_engine
from mssante.nodes import STALE_SECONDS, ClusterNode, NodeIdentity, NodeNameInUse, live_nodes
from mssante.schema import upgrade
from tests.demo_server import PORT_KEYS, start_demo

USER = "claire.martin@demo.mssante.fr"


def test_a_live_name_is_refused_a_dead_or_stale_one_is_taken(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    first = NodeIdentity(engine, "node-1.example")
    first.claim()
    assert first.beat() and live_nodes(engine) == ["node-1.example"]
    with pytest.raises(NodeNameInUse, match="used by a live node"):
        NodeIdentity(engine, "node-1.example").claim()
    NodeIdentity(engine, "node-2.example").claim()  # another name is fine
    # The holder ran on this machine and its process is gone (SIGKILL): free at once.
    with Session(engine) as session, session.begin():
        session.execute(update(ClusterNode).where(ClusterNode.name == "node-1.example").values(pid=2**22 + 1))
    second = NodeIdentity(engine, "node-1.example")
    second.claim()
    assert not first.beat()  # the old instance has lost its name
    # A holder elsewhere that stopped beating: free once stale.
    old = datetime.now(UTC) - timedelta(seconds=STALE_SECONDS + 1)
    with Session(engine) as session, session.begin():
        session.execute(
            update(ClusterNode)
            .where(ClusterNode.name == "node-1.example")
            .values(machine="elsewhere", heartbeat_at=old)
        )
    NodeIdentity(engine, "node-1.example").claim()
    second.leave()  # not ours any more: leaves the new holder's row alone
    assert "node-1.example" in live_nodes(engine)
    engine.dispose()


def _idle(port: int, ca: str, password: str) -> ssl.SSLSocket:
    sock = ssl.create_default_context(cafile=ca).wrap_socket(
        socket.create_connection(("127.0.0.1", port), 10), server_hostname="127.0.0.1"
    )
    sock.sendall(f'a1 LOGIN {USER} "{password}"\r\na2 SELECT INBOX\r\na3 IDLE\r\n'.encode())
    data = b""
    while b"+ idling" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return sock


def test_same_name_refused_then_sigterm_drains(tmp_path: Path) -> None:
    node = start_demo(tmp_path / "data")
    try:
        # A second process under the same server.hostname, on other ports: refused at start.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
        env.update({key: "0" for key in PORT_KEYS})
        second = subprocess.run(
            [sys.executable, "-m", "mssante", "--data-dir", str(node.data_dir), "serve"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "is used by a live node" in second.stderr

        idler = _idle(node.port("imaps"), node.ca_cert, str(node.account(USER)["password"]))
        health = http.client.HTTPSConnection(
            "127.0.0.1", node.port("http"), context=ssl.create_default_context(cafile=node.ca_cert), timeout=5
        )
        health.request("GET", "/health/ready")
        ready = health.getresponse()
        assert ready.status == 200 and json.loads(ready.read())["listeners"] is True
        node.process.send_signal(signal.SIGTERM)
        idler.settimeout(5)
        said = b""
        while chunk := idler.recv(4096):
            said += chunk
        assert b"* BYE [UNAVAILABLE]" in said, said
        assert node.process.wait(30) == 0
    finally:
        node.stop()
    # Stopped cleanly: the name is free for the next start at once.
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'mssante.db'}")
    assert live_nodes(engine) == []
    engine.dispose()


def test_ready_only_with_listeners_up_database_reachable_and_schema_current(runtime: Any) -> None:
    from types import SimpleNamespace

    from sqlalchemy import create_engine

    from mssante.lifecycle import readiness, set_ready

    assert readiness(runtime)["status"] == "unavailable"  # listeners not up yet (or draining)
    set_ready(runtime, True)
    report = readiness(runtime)
    assert report["status"] == "ready" and report["database"] and report["schema"]
    away = SimpleNamespace(
        engine=create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1"),
        extras={"ready": True},
        settings=runtime.settings,
    )
    report = readiness(away)
    assert report["status"] == "unavailable" and report["database"] is False
    away.engine.dispose()
