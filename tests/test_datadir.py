"""Owner-only files (0600, directories 0700), the key ring's own location (``keys.path``), and
the command line as people type it (options after the sub-command, ``--json``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from mssante.cli import hoist_global_options
from tests.demo_server import DemoServer


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mssante", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_everything_the_demo_server_writes_is_owner_only(demo: DemoServer) -> None:
    data = demo.data_dir
    # The running server holds the SQLite database open: its WAL companions exist now.
    expected = ["mssante.db", "mssante.db-wal", "mssante.db-shm", "keyring.json", "demo.json", "server.log"]
    for name in expected:
        assert (data / name).exists(), name
    assert any(p.suffix == ".key" for p in (data / "certs").rglob("*")), "no certificate key written"
    loose = []
    for path in [data, *data.rglob("*")]:
        mode, wanted = _mode(path), 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            loose.append(f"{path.relative_to(data.parent)} {mode:o} (want {wanted:o})")
    assert not loose, loose


def test_keys_path_puts_the_key_ring_on_another_volume(tmp_path: Path) -> None:
    data, vault = tmp_path / "data", tmp_path / "vault" / "ring.json"
    env = {"MSSANTE_KEYS__PATH": str(vault)}
    done = run("init", "--data-dir", str(data), env=env)
    assert done.returncode == 0, done.stderr
    assert vault.is_file() and not (data / "keyring.json").exists()
    assert _mode(vault) == 0o600 and _mode(data) == 0o700 and _mode(data / "mssante.db") == 0o600
    shown = run("keys", "show", "--json", "--data-dir", str(data), env=env)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["path"] == str(vault.resolve()) and doc["keys"] == [doc["active"]]
    assert len(doc["audit_key_id"]) == 16
    # Its older name still works; both names on different files is an error naming them.
    old = run(
        "config", "check", "--json", "--data-dir", str(data), env={"MSSANTE_STORAGE__KEYRING": str(vault)}
    )
    assert old.returncode == 0 and json.loads(old.stdout)["keys"]["path"] == str(vault)
    both = run("config", "check", env={**env, "MSSANTE_STORAGE__KEYRING": str(tmp_path / "x.json")})
    assert both.returncode == 2 and "keys.path" in both.stderr and "storage.keyring" in both.stderr


def test_an_older_installation_is_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("--data-dir", str(data), "init").returncode == 0  # the global form still works
    os.chmod(data, 0o755)
    os.chmod(data / "mssante.db", 0o644)
    os.chmod(data / "keyring.json", 0o644)
    again = run("init", "--data-dir", str(data))
    assert again.returncode == 0, again.stderr
    assert (_mode(data), _mode(data / "mssante.db"), _mode(data / "keyring.json")) == (0o700, 0o600, 0o600)


def test_global_options_are_hoisted_from_anywhere_before_a_double_dash() -> None:
    assert hoist_global_options(["serve", "--demo", "--data-dir", "D"]) == [
        "--data-dir",
        "D",
        "serve",
        "--demo",
    ]
    assert hoist_global_options(["audit", "verify", "-c", "f.toml", "--data-dir=D", "--json"]) == [
        "-c", "f.toml", "--data-dir=D", "audit", "verify", "--json",
    ]  # fmt: skip
    assert hoist_global_options(["-d", "A", "x", "--", "-d", "B"]) == ["-d", "A", "x", "--", "-d", "B"]


def test_the_demo_server_was_started_with_the_data_dir_after_serve(demo: DemoServer) -> None:
    # tests/demo_server.py runs `mssante serve --demo --data-dir D`, the form of the demo's
    # specification; the same options after other commands reach the same data directory.
    assert demo.process.args[3:] == ["serve", "--demo", "--data-dir", str(demo.data_dir)]
    checked = run("config", "check", "--json", "--data-dir", str(demo.data_dir))
    assert checked.returncode == 0 and json.loads(checked.stdout)["server"]["data_dir"] == str(demo.data_dir)


def test_every_command_that_prints_state_has_json() -> None:
    import typer.main

    from mssante.cli import app

    state_verbs = {"list", "show", "check", "verify", "search", "history", "conversations", "rights"}
    missing, seen = [], []

    def walk(command: object, path: str) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}".strip())
            return
        if path.rsplit(" ", 1)[-1] in state_verbs:
            seen.append(path)
            if not any("--json" in getattr(p, "opts", []) for p in getattr(command, "params", [])):
                missing.append(path)

    walk(typer.main.get_command(app), "")
    assert "backup verify" in seen and "queue show" in seen and len(seen) > 12
    assert not missing, missing
