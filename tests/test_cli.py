"""The command line as operators and scripts use it: exit codes, messages naming the key."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from mssante.config import Settings
from mssante.db import make_engine
from mssante.schema import upgrade
from tests.demo_server import start_demo


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mssante", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "key", "problem"),
    [
        ('[server]\nhostnme = "x"\n', "server.hostnme", "unknown key"),
        ("[smtp]\nsubmission_port = 70000\n", "smtp.submission_port", "between 1 and 65535"),
        ('[imap]\nport = "imap"\n', "imap.port", "integer"),
        ('[tls]\ncert_file = "/nonexistent/server.pem"\n', "tls.cert_file", "does not exist"),
        ('[server]\ndata_dir = "/proc/1/nope/data"\n', "server.data_dir", "cannot be created"),
        ("[storage\n", "(file)", "not valid TOML"),
        ('[log]\nlevel = "LOUD"\n', "log.level", "Input should be"),
    ],
)
def test_config_check_names_the_key_and_exits_2(tmp_path: Path, content: str, key: str, problem: str) -> None:
    cfg = tmp_path / "mssante.toml"
    cfg.write_text(content)
    result = run("config", "check", str(cfg), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr and problem in result.stderr


def test_config_check_prints_effective_config_with_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "mssante.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path / "d"}"\n[database]\nurl = "postgresql://u:s3cr3t-pw@db/x"\n'
    )
    result = run("config", "check", str(cfg), cwd=tmp_path, env={"MSSANTE_IMAP__PORT": "1144"})
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["imap"]["port"] == 1144
    assert "s3cr3t-pw" not in result.stdout


def test_unreadable_data_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads everything: a regular file in place of the directory is the portable case.
        (tmp_path / "data").write_text("not a directory")
    else:
        (tmp_path / "data").mkdir(mode=0o000)
    result = run("--data-dir", str(tmp_path / "data"), "config", "check", cwd=tmp_path)
    assert result.returncode == 2 and "server.data_dir" in result.stderr


def test_init_is_idempotent_and_keyring_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = run("--data-dir", str(data), "init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (data / "keyring.json").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
    assert run("--data-dir", str(data), "init", cwd=tmp_path).returncode == 0


def test_serve_without_tls_certificates_says_how_to_get_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init", cwd=tmp_path).returncode == 0
    env = {"MSSANTE_HTTP__PORT": "0", "MSSANTE_SMTP__SUBMISSION_PORT": "0"}
    result = run("--data-dir", str(data), "serve", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "tls.cert_file" in result.stderr and "mssante certs dev" in result.stderr


def test_demo_serve_health_over_tls_and_graceful_stop(tmp_path: Path) -> None:
    server = start_demo(tmp_path / "data")
    try:
        assert {item["name"] for item in server.doc["listeners"]} >= {
            "http",
            "submission",
            "submissions",
            "relay",
        }
        http = server.listener("http")
        assert http["tls"] == "implicit"
        answer = httpx.get(
            f"https://127.0.0.1:{http['port']}/health",
            verify=ssl.create_default_context(cafile=server.ca_cert),
            timeout=5,
        )
        assert answer.json()["status"] == "ok"
        kinds = {a["kind"] for a in server.doc["accounts"]}
        assert kinds >= {"professional", "org", "pharmacy", "app", "patient"}
        assert (tmp_path / "data" / "demo.json").stat().st_mode & 0o777 == 0o600
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert "every acknowledged message is committed" in server.log()


def test_serve_refuses_an_outdated_schema_until_db_upgrade(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init", cwd=tmp_path).returncode == 0
    (data / "mssante.db").unlink()
    engine = make_engine(f"sqlite:///{data / 'mssante.db'}")
    upgrade(engine, "0001")  # a database left by an older version
    engine.dispose()
    result = run("--data-dir", str(data), "serve", cwd=tmp_path)
    assert result.returncode == 1
    assert "revision 0001" in result.stderr and "mssante db upgrade" in result.stderr
    upgraded = run("--data-dir", str(data), "db", "upgrade", cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "0001 →" in upgraded.stdout


def test_missing_keyring_stops_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init", cwd=tmp_path).returncode == 0
    (data / "keyring.json").unlink()
    result = run("--data-dir", str(data), "serve", cwd=tmp_path)
    assert result.returncode == 1 and "key ring" in result.stderr and "missing" in result.stderr


def test_keys_rotate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init", cwd=tmp_path).returncode == 0
    result = run("--data-dir", str(data), "keys", "rotate", cwd=tmp_path)
    assert result.returncode == 0 and "k2-" in result.stdout
    assert len(json.loads((data / "keyring.json").read_text())["keys"]) == 2


def test_every_command_has_help(tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["init", "--help"],
        ["serve", "--help"],
        ["db", "upgrade", "--help"],
        ["config", "check", "--help"],
        ["keys", "rotate", "--help"],
        ["audit", "verify", "--help"],
        ["audit", "show", "--help"],
    ):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0 and "Usage" in result.stdout, args
    assert run("no-such-command", cwd=tmp_path).returncode == 2


def test_upgrade_is_a_no_op_on_a_current_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    upgrade(engine)
    engine.dispose()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_keys(ann, f"{prefix}{name}."))
        else:
            out.append(prefix + name)
    return out


def test_example_configuration_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "mssante.example.toml"
    text = example.read_text()
    result = run("config", "check", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    missing = []
    for key in _keys(Settings):
        section, _, name = key.rpartition(".")
        if f"[{key}." in text:  # a table of named entries, e.g. [auth.issuers.psc]
            continue
        header = f"[{section}]"
        if header not in text or not re.search(rf"^#? ?{re.escape(name)} = ", text, re.M):
            missing.append(key)
    assert not missing, f"keys not documented in {example.name}: {missing}"
