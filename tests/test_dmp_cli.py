"""``mssante dmp …`` as an operator runs it (a real process on a real data directory)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from dmp.testing import INS, MEDECIN, MEDECIN_TRAITANT
from tests.test_cli import run


@pytest.mark.slow  # about ten processes of the CLI
def test_patient_documents_history_and_xdm(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert run(*data, "init", cwd=tmp_path).returncode == 0
    added = run(*data, "dmp", "patient", "add", "--ins", INS, "--birth-name", "DUPONT", "--first-given-name",
                "MARIE", "--birth-date", "1979-03-05", "--sex", "F", cwd=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert (
        run(
            *data, "dmp", "patient", "care-team", "--ins", INS, "--idnat", MEDECIN_TRAITANT, cwd=tmp_path
        ).returncode
        == 0
    )
    shown = run(*data, "dmp", "patient", "show", "--ins", INS, "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["care_team"] == [MEDECIN_TRAITANT]

    bad = run(*data, "dmp", "patient", "show", "--ins", "279035121518988", cwd=tmp_path)
    assert bad.returncode == 1 and "[903]" in bad.stderr  # the key does not verify

    # no document yet; a doctor outside the care team is refused, and break-glass needs a reason
    listed = run(
        *data, "dmp", "documents", "list", "--ins", INS, "--as", MEDECIN_TRAITANT, "--json", cwd=tmp_path
    )
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    refused = run(*data, "dmp", "documents", "list", "--ins", INS, "--as", MEDECIN, cwd=tmp_path)
    assert refused.returncode == 1 and "no consent" in refused.stderr
    glass = run(*data, "dmp", "documents", "list", "--ins", INS, "--as", MEDECIN, "--break-glass",
                "--reason", "urgence", cwd=tmp_path)  # fmt: skip
    assert glass.returncode == 0, glass.stderr

    history = json.loads(run(*data, "dmp", "history", "--ins", INS, "--json", cwd=tmp_path).stdout)
    assert [(h["action"], h["outcome"]) for h in history][-4:] == [
        ("list", "ok"), ("list", "refused"), ("break_glass", "ok"), ("list", "ok"),
    ]  # fmt: skip

    cda = tmp_path / "cr.xml"
    cda.write_text("<ClinicalDocument xmlns='urn:hl7-org:v3'/>")
    out = tmp_path / "IHE_XDM.ZIP"
    args = ["--ins", INS, "--author", MEDECIN_TRAITANT, "--type-code", "34112-3", "--title", "CR"]
    args += ["--out", str(out), "--birth-name", "DUPONT", "--first-given-name", "MARIE"]
    args += ["--birth-date", "1979-03-05", "--sex", "F", "--cda", str(cda)]
    built = run(*data, "dmp", "xdm", "build", *args, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert "IHE_XDM/SUBSET01/METADATA.XML" in zipfile.ZipFile(out).namelist()
