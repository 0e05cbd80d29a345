"""Delegates in ImapFlow and Nodemailer (npm, installed by the test set-up into a cache outside
the repository, ``~/.cache/mssante-node`` or ``$MSSANTE_NODE_CACHE``; ``./dev test`` installs them
too): a secretary opens Dr MARTIN's BAL with the SASL authorization identity, a pharmacy assistant
opens the pharmacy with ``<BAL>*<login>``; each reads, replies, files into Sent, moves to Trash.
Skipped only when Node.js is absent or the npm registry cannot be reached."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients_setup import DURAND, MARTIN, PHARMACY, Person, check_reply, deliver, revoke_grants, staff
from tests.demo_server import DemoServer


@pytest.fixture(scope="module", autouse=True)
def _grants_revoked_after(demo: DemoServer) -> Iterator[None]:
    yield
    revoke_grants(demo)


PACKAGES = ("imapflow@>=1.0.160", "nodemailer@>=6.9")
SCRIPT = Path(__file__).parent / "node" / "delegate.cjs"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are needed")
    cache = Path(os.environ.get("MSSANTE_NODE_CACHE", Path.home() / ".cache" / "mssante-node"))
    modules = cache / "node_modules"
    if not all((modules / name.split("@")[0]).is_dir() for name in PACKAGES):
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", *PACKAGES],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"npm install failed (registry unreachable?): {done.stderr[-500:]}")
    return modules


def run_delegate(demo: DemoServer, modules: Path, **settings: object) -> dict[str, object]:
    settings |= {"ca": demo.ca_cert, "imapPort": demo.port("imaps"), "smtpPort": demo.port("submissions")}
    done = subprocess.run(
        ["node", str(SCRIPT), json.dumps(settings)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NODE_PATH": str(modules)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_secretary_with_authzid_in_imapflow(demo: DemoServer, node_modules: Path) -> None:
    secretary = staff(demo, "secretariat", {MARTIN: "lrswite send"})
    subject = f"Résultats d'échographie {uuid.uuid4().hex[:8]}"
    deliver(demo, MARTIN, subject)
    result = run_delegate(
        demo, node_modules, bal=MARTIN, subject=subject, password=secretary.password,
        imapUser=secretary.login, authzid=MARTIN, smtpUser=secretary.as_delegate(MARTIN),
    )  # fmt: skip
    assert result == {
        "subject": subject, "sent": "Sent", "trash": "Trash", "accepted": [DURAND],
        "authenticated": True, "foundUnseen": True, "foundSince": True, "filedAtUidNext": True,
        "trashCounted": True,
    }  # fmt: skip
    check_reply(demo, MARTIN, secretary, subject)


def test_pharmacy_assistant_with_bal_star_login(demo: DemoServer, node_modules: Path) -> None:
    assistant: Person = staff(demo, "preparatrice", {PHARMACY: "lrswite send"})
    subject = f"Ordonnance à préparer {uuid.uuid4().hex[:8]}"
    deliver(demo, PHARMACY, subject)
    user = assistant.as_delegate(PHARMACY)
    result = run_delegate(
        demo, node_modules, bal=PHARMACY, subject=subject, password=assistant.password,
        imapUser=user, smtpUser=user,
    )  # fmt: skip
    assert result["sent"] == "Sent" and result["trash"] == "Trash"
    assert all(result[k] for k in ("foundUnseen", "foundSince", "filedAtUidNext", "trashCounted"))
    check_reply(demo, PHARMACY, assistant, subject)
