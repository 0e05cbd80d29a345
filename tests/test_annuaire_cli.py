"""``mssante annuaire …`` as operators and scripts use it: tables, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annuaire import synthetic
from mssante.cli import app

NS = "https://listeblanche.mssante.fr/schema"


class Cli:
    """Runs the command line in-process against one data directory and database."""

    def __init__(self, data_dir: Path, db_url: str) -> None:
        self.runner = CliRunner()
        self.base = ["--data-dir", str(data_dir)]
        self.env = {"MSSANTE_DATABASE__URL": db_url, "COLUMNS": "200"}

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(app, [*self.base, *args], env=self.env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    runner = Cli(tmp_path / "data", db_url)
    runner("init")
    return runner


def test_import_json_then_idempotent_and_full(cli: Cli, tmp_path: Path) -> None:
    gen = synthetic.generate(tmp_path / "e.zip", 500, zipped=True)
    first = json.loads(cli("annuaire", "import", str(gen.path), "--json"))
    assert first["added"] == 500 - gen.malformed and first["rejected"] == gen.malformed
    assert [r["line"] for r in first["rejects"]] == gen.malformed_lines
    second = json.loads(cli("annuaire", "import", str(gen.path), "--json"))
    assert second["added"] == second["updated"] == 0
    small = synthetic.generate(tmp_path / "small.txt", 400)
    full = json.loads(cli("annuaire", "import", str(small.path), "--full", "--json"))
    assert full["deactivated"] > 0 and full["full"] is True
    table = cli("annuaire", "import", str(small.path))
    assert "unchanged" in table and "rejected" in table


def test_bad_file_exits_1_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Type de BAL|Adresse BAL\nPER|a@b.mssante.fr\n")
    out = cli("annuaire", "import", str(bad), code=1)
    assert "column(s) missing" in out
    out = cli("annuaire", "import", str(tmp_path / "absent.zip"), code=1)
    assert "cannot open" in out
    doctype = tmp_path / "wl.xml"
    doctype.write_text(
        f'<!DOCTYPE x><ListeBlanche xmlns="{NS}"><Domaine><Nom>a.fr</Nom></Domaine></ListeBlanche>'
    )
    assert "DOCTYPE" in cli("annuaire", "whitelist", "import", str(doctype), code=1)


def test_add_show_search_disable(cli: Cli) -> None:
    cli("annuaire", "add", "professional", "--idnat", "810102727017", "--nom", "Martin", "--prenom", "Marie",
        "--profession", "21")  # fmt: skip
    cli("annuaire", "add", "structure", "--id", "750000001", "--raison-sociale", "Pharmacie du Centre",
        "--categorie", "620")  # fmt: skip
    assert "added" in cli("annuaire", "add", "bal", "officine@demo.mssante.fr", "--type", "ORG",
                          "--structure", "750000001", "--responsible", "810102727017")  # fmt: skip
    cli(
        "annuaire",
        "add",
        "bal",
        "Marie.Martin@demo.mssante.fr",
        "--type",
        "PER",
        "--professional",
        "810102727017",
    )
    # A patient BAL needs a qualified INS in the register of identities (issue #8).
    assert "register it, qualified, first" in cli("annuaire", "add", "patient", "288091234567894", code=1)
    assert "key 23 is wrong" in cli("annuaire", "add", "patient", "288091234567823", code=1)
    assert "needs its professional" in cli(
        "annuaire", "add", "bal", "x@demo.mssante.fr", "--type", "PER", code=1
    )

    shown = json.loads(cli("annuaire", "show", "OFFICINE@demo.mssante.fr", "--json"))
    assert shown["structure_kind"] == "pharmacie_officine" and shown["responsible_idnat"] == "810102727017"
    assert shown["active"] is True
    found = json.loads(cli("annuaire", "search", "martin", "--json"))
    assert [r["address"] for r in found] == ["Marie.Martin@demo.mssante.fr"]
    table = cli("annuaire", "search", "pharmacie")  # a cell may wrap on a narrow console
    assert "Pharmacie du" in table and "Centre" in table
    assert "no BAL" in cli("annuaire", "show", "nobody@demo.mssante.fr", code=1)

    disabled = json.loads(cli("annuaire", "disable", "officine@demo.mssante.fr", "--json"))
    assert disabled == {"object": "officine@demo.mssante.fr", "status": "updated"}
    assert "unchanged" in cli("annuaire", "disable", "officine@demo.mssante.fr")
    assert json.loads(cli("annuaire", "show", "officine@demo.mssante.fr", "--json"))["active"] is False
    cli("annuaire", "enable", "officine@demo.mssante.fr")
    assert "no BAL" in cli("annuaire", "disable", "nobody@demo.mssante.fr", code=1)


def test_whitelist_and_accounts(cli: Cli, tmp_path: Path) -> None:
    wl = tmp_path / "wl.xml"
    wl.write_text(
        f'<ListeBlanche xmlns="{NS}"><Domaine><Nom>medecin.mssante.fr</Nom></Domaine></ListeBlanche>'
    )
    assert json.loads(cli("annuaire", "whitelist", "import", str(wl), "--json"))["added"] == 1
    cli("annuaire", "whitelist", "add", "other.mssante.fr")
    listed = json.loads(cli("annuaire", "whitelist", "list", "--json"))
    assert [d["domain"] for d in listed] == ["medecin.mssante.fr", "other.mssante.fr"]
    accounts = tmp_path / "a.csv"
    accounts.write_text(
        "type,address,professional,nom,profession\nPER,j.d@demo.mssante.fr,810000000042,D,60\n"
    )
    assert json.loads(cli("annuaire", "accounts", "import", str(accounts), "--json"))["added"] == 1
    cli("annuaire", "add", "structure", "--id", "750000001", "--raison-sociale", "Pharmacie du Centre")
    categories = tmp_path / "finess.csv"
    categories.write_text("finess;categorie\n750000001;620\n")
    assert (
        json.loads(cli("annuaire", "finess", "import", str(categories), "--json"))["structures_updated"] == 1
    )


def test_usage_error_exits_2(tmp_path: Path) -> None:
    # A real process, as scripts run it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    result = subprocess.run(
        [sys.executable, "-m", "mssante", "-d", str(tmp_path / "data"), "annuaire", "import"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "Missing argument" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mssante", "-d", str(tmp_path / "data"), "annuaire", "search", "x"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "no schema" in result.stderr
