"""The national lists fetched on a schedule: a local HTTPS server started by the test plays the
ANS publication point (ETag, Last-Modified, 304), and misbehaves on demand."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from annuaire import synthetic
from annuaire.models import Bal, OperatorDomain
from annuaire.updates import refresh, scheduled_lists, status
from mssante.auth.devpki import DevCA
from mssante.auth.harness import DevPKI
from mssante.config import Settings, load_settings
from mssante.db import make_engine
from mssante.schema import upgrade
from tests.demo_server import start_demo

NS = "https://listeblanche.mssante.fr/schema"


def whitelist_xml(*domains: str) -> bytes:
    body = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
    return f'<?xml version="1.0" encoding="UTF-8"?><ListeBlanche xmlns="{NS}">{body}</ListeBlanche>'.encode()


@dataclass
class Publication:
    """What the fake publication point serves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def publication(dev_pki: DevPKI) -> Iterator[Publication]:
    pub = Publication()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            pub.requests.append((self.path, dict(self.headers)))
            body = pub.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", "Sat, 05 Dec 2026 06:00:00 GMT")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(dev_pki.server.cert_file, dev_pki.server.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pub.url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        yield pub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = make_engine(settings.database_url, writer=True)
    upgrade(eng)
    yield eng
    eng.dispose()


def _settings(settings: Settings, pub: Publication, dev_pki: DevPKI, **extra: object) -> Settings:
    return load_settings(
        None,
        server={"data_dir": str(settings.server.data_dir)},
        database={"url": settings.database_url},
        whitelist={"url": f"{pub.url}/liste-blanche.xml", "ca_file": str(dev_pki.ca_file), **extra},
        annuaire={"extraction_url": f"{pub.url}/extraction.txt", "ca_file": str(dev_pki.ca_file)},
    )


def _active_domains(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(select(OperatorDomain.domain).where(OperatorDomain.active.is_(True))).scalars()
        )


def test_whitelist_fetched_then_not_modified_then_bad_file_keeps_the_last_good_list(
    settings: Settings, engine: Engine, publication: Publication, dev_pki: DevPKI
) -> None:
    publication.files["/liste-blanche.xml"] = whitelist_xml("autre.mssante.fr", "chu-x.mssante.fr")
    config = _settings(settings, publication, dev_pki)
    whitelist = next(i for i in scheduled_lists(config) if i.name == "whitelist")
    work = config.server.data_dir / "updates"

    first = refresh(engine, whitelist, work)
    assert first.status == "imported" and _active_domains(engine) == {"autre.mssante.fr", "chu-x.mssante.fr"}
    assert refresh(engine, whitelist, work).status == "not-due"  # one fetch per interval

    second = refresh(engine, whitelist, work, force=True)
    assert second.status == "not-modified"
    assert publication.requests[-1][1].get("If-None-Match", "").startswith('"')
    assert publication.requests[-1][1].get("If-Modified-Since") == "Sat, 05 Dec 2026 06:00:00 GMT"

    publication.files["/liste-blanche.xml"] = b"<ListeBlanche><not-closed>"
    broken = refresh(engine, whitelist, work, force=True)
    assert broken.status == "failed" and _active_domains(engine) == {"autre.mssante.fr", "chu-x.mssante.fr"}
    [state] = status(engine, [whitelist])
    assert state["last_error"] and state["entries"] == 2 and state["stale"] is False
    assert not list(work.iterdir()), "the download is removed after the import"

    publication.files["/liste-blanche.xml"] = whitelist_xml("autre.mssante.fr")
    assert refresh(engine, whitelist, work, force=True).status == "imported"
    assert _active_domains(engine) == {"autre.mssante.fr"}
    [state] = status(engine, [whitelist])
    assert state["last_error"] is None and state["entries"] == 1


def test_untrusted_certificate_oversize_and_plain_http_are_refused(
    settings: Settings, engine: Engine, publication: Publication, dev_pki: DevPKI, tmp_path: Path
) -> None:
    publication.files["/liste-blanche.xml"] = whitelist_xml(*(f"op{i}.mssante.fr" for i in range(100)))
    other_ca = DevCA.create(tmp_path / "other-ca").cert_file
    cases = {
        "certificate": _settings(settings, publication, dev_pki, ca_file=str(other_ca)),
        "max_bytes": _settings(settings, publication, dev_pki, max_bytes=1024),
    }
    for expected, config in cases.items():
        whitelist = next(i for i in scheduled_lists(config) if i.name == "whitelist")
        outcome = refresh(engine, whitelist, tmp_path / "work", force=True)
        assert outcome.status == "failed" and expected.split("_")[0] in outcome.error.lower(), outcome
    plain = load_settings(
        None, whitelist={"url": publication.url.replace("https", "http") + "/liste-blanche.xml"}
    )
    outcome = refresh(engine, scheduled_lists(plain)[0], tmp_path / "work", force=True)
    assert outcome.status == "failed" and "only https://" in (outcome.error or "")
    assert _active_domains(engine) == set()


def test_extraction_imported_as_a_complete_list(
    settings: Settings, engine: Engine, publication: Publication, dev_pki: DevPKI, tmp_path: Path
) -> None:
    gen = synthetic.generate(tmp_path / "national.txt", 200, malformed_ratio=0)
    publication.files["/extraction.txt"] = gen.path.read_bytes()
    config = _settings(settings, publication, dev_pki)
    extraction = next(i for i in scheduled_lists(config) if i.name == "extraction")
    assert refresh(engine, extraction, tmp_path / "work").status == "imported"
    smaller = synthetic.generate(tmp_path / "smaller.txt", 150, malformed_ratio=0)
    publication.files["/extraction.txt"] = smaller.path.read_bytes()
    outcome = refresh(engine, extraction, tmp_path / "work", force=True)
    assert outcome.report is not None and outcome.report.deactivated > 0  # vanished BALs deactivated
    with engine.connect() as conn:
        active = conn.execute(select(func.count()).where(Bal.active.is_(True))).scalar_one()
    [state] = status(engine, [extraction])
    assert state["entries"] == active == 150


def test_the_server_fetches_on_its_schedule_and_health_reports_the_age(
    publication: Publication, dev_pki: DevPKI, tmp_path: Path
) -> None:
    publication.files["/liste-blanche.xml"] = whitelist_xml("autre.mssante.fr")
    env = {
        "MSSANTE_WHITELIST__URL": f"{publication.url}/liste-blanche.xml",
        "MSSANTE_WHITELIST__CA_FILE": str(dev_pki.ca_file),
        "MSSANTE_WHITELIST__INTERVAL_SECONDS": "10",
    }
    server = start_demo(tmp_path / "data", env)
    try:
        ca = server.ca_cert
        url = f"https://127.0.0.1:{server.port('http')}/health"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lists = httpx.get(url, verify=ssl.create_default_context(cafile=ca)).json()["lists"]
            if lists and lists[0]["last_success"]:
                break
            time.sleep(0.2)
        [state] = lists
        assert state["name"] == "whitelist" and state["entries"] >= 1 and state["stale"] is False
        assert any(path == "/liste-blanche.xml" for path, _ in publication.requests)
    finally:
        assert server.stop() == 0, server.log()
    cli = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(server.data_dir),
         "annuaire", "sources", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}, **env},
    )  # fmt: skip
    [shown] = json.loads(cli.stdout)
    assert shown["name"] == "whitelist" and shown["last_success"] == state["last_success"]
