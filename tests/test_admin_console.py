"""The admin console (/admin/) in Debian's Chromium driven by Playwright, on a demo server of
its own (the console changes what other tests rely on: grants, the queue).

An administrator made with the CLI (``user add --kind staff``, ``user totp``, ``admin role``)
logs in with password and TOTP code; sees the outbound queue (a message for another operator
whose route is a closed port), the certificates; finds Dr MARTIN's BAL, grants her secretary's
colleague a read-only delegation with a reason, verifies the audit chain, revokes; drops the
queue entry with a reason. Every action is in the BAL's trail. A read-only staff member sees no
action button, and a form posted anyway is refused (403); a login without the code is refused.

Screenshots go to ``docs/screenshots/`` when ``MSSANTE_SCREENSHOTS=1`` (the README shows them).
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.browser import menu, new_page
from tests.demo_server import DemoServer, start_demo

REMOTE = "autre-operateur.mssante.fr"
DOCTOR = "claire.martin@demo.mssante.fr"
GRANTEE = "paul.durand@demo.mssante.fr"
PASSWORD = "Console-Admin-2026!"


def _cli(server: DemoServer, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSANTE_")}
    done = subprocess.run(
        [sys.executable, "-m", "mssante", "--data-dir", str(server.data_dir), *args],
        input=stdin, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _staff(server: DemoServer, login: str, role: str) -> str:
    """A staff account with a TOTP second factor and a console role; returns the TOTP secret."""
    _cli(
        server,
        "user",
        "add",
        login,
        "--kind",
        "staff",
        "--id",
        login,
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    secret = re.search(r"TOTP secret: (\w+)", _cli(server, "user", "totp", login))
    assert secret is not None
    _cli(server, "admin", "role", login, role)
    return secret[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {"MSSANTE_RELAY__ROUTES": json.dumps({REMOTE: "127.0.0.1:9"})}
    demo = start_demo(tmp_path_factory.mktemp("admin") / "data", env)
    try:
        yield demo
    finally:
        assert demo.stop() == 0, demo.log()


def _login(page: Any, server: DemoServer, login: str, code: str | None) -> None:
    page.goto(f"https://127.0.0.1:{server.port('http')}/admin/connexion")
    page.get_by_label("Identifiant").fill(login)
    page.get_by_label("Mot de passe").fill(PASSWORD)
    if code is not None:
        page.get_by_label("Code à usage unique").fill(code)
    else:
        page.locator("#code").evaluate("e => e.removeAttribute('required')")
    page.get_by_role("button", name="Se connecter").click()


def _queue_a_message(server: DemoServer) -> None:
    _cli(server, "annuaire", "whitelist", "add", REMOTE)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = DOCTOR, f"confrere@{REMOTE}", "Avis"
    message["Date"] = "Sun, 06 Dec 2026 09:00:00 +0100"
    message.set_content("Demande d'avis.")
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        smtp.login(DOCTOR, server.account(DOCTOR)["password"])
        smtp.send_message(message)


def test_administrator_handles_a_delegation_and_a_stuck_message(
    server: DemoServer, browser: Any, shots: Path
) -> None:
    secret = _staff(server, "admin.dupont", "administrator")
    _queue_a_message(server)
    page = new_page(browser)

    _login(page, server, "admin.dupont", None)  # no code: refused, whatever the password
    assert "code à usage unique" in page.get_by_role("alert").inner_text()

    _login(page, server, "admin.dupont", pyotp.TOTP(secret).now())
    page.wait_for_url("**/admin/")
    assert page.locator("html").get_attribute("lang") == "fr"
    queue = page.get_by_role("table", name=re.compile("Messages en attente"))
    assert REMOTE in queue.inner_text() and DOCTOR in queue.inner_text()
    certificates = page.get_by_role("table", name=re.compile("Certificats")).inner_text()
    assert "tls.cert_file" in certificates and "dkim" in certificates
    page.screenshot(path=str(shots / "admin-etat.png"), full_page=True)

    page.get_by_role("navigation", name="Menu principal").get_by_role("link", name="BAL").click()
    page.get_by_label("Adresse, nom du titulaire ou de la structure").fill("martin")
    page.get_by_role("button", name="Rechercher").click()
    page.get_by_role("link", name=DOCTOR).click()
    page.wait_for_url(f"**/admin/bal/{DOCTOR}")

    page.get_by_label("Bénéficiaire").fill(GRANTEE)
    page.get_by_label("Droits").fill("read-only")
    page.locator("#grant-reason").fill("remplacement pendant les congés")
    page.get_by_role("button", name="Accorder la délégation").click()
    grants = page.get_by_role("table", name="Délégations en vigueur").inner_text()
    assert "lr" in grants and "remplacement pendant les congés" in grants

    page.get_by_role("button", name="Vérifier la chaîne").click()
    assert "Chaîne de la trace : intacte" in page.get_by_role("status").inner_text()
    trail = page.get_by_role("table", name="50 derniers enregistrements").inner_text()
    assert "admin.delegation.grant" in trail and "delegation.grant" in trail and "staff:admin.dupont" in trail
    page.screenshot(path=str(shots / "admin-bal.png"), full_page=True)

    row = page.get_by_role("row").filter(has_text="remplacement pendant les congés")
    row.get_by_label("Raison").fill("fin du remplacement")
    row.get_by_role("button", name="Révoquer").click()
    grants = page.get_by_role("table", name="Délégations en vigueur").inner_text()
    assert "remplacement pendant les congés" not in grants and "secretaire" in grants  # hers stays
    assert (
        "admin.delegation.revoke"
        in page.get_by_role("table", name="50 derniers enregistrements").inner_text()
    )

    # The cardiology service's ORG BAL: its members, one of them removed with a reason.
    page.goto(f"https://127.0.0.1:{server.port('http')}/admin/bal/cardiologie@demo.mssante.fr")
    members = page.get_by_role("table", name="Membres")
    assert "accueil.cardiologie" in members.inner_text()
    row = members.get_by_role("row").filter(has_text="accueil.cardiologie")
    row.get_by_label("Raison").fill("départ du service")
    with page.expect_navigation(wait_until="load"):  # the list is read from the page it leads to
        row.get_by_role("button", name="Retirer").click()
    members = page.get_by_role("table", name="Membres")
    assert "accueil.cardiologie" not in (members.inner_text() if members.count() else "")

    menu(page, "État du serveur")
    page.get_by_label("Raison du retrait").first.fill("domaine fermé, message renvoyé par fax")
    page.get_by_role("button", name="Retirer de la file").first.click()
    assert "retirée de la file" in page.get_by_role("status").inner_text()
    assert "La file est vide." in page.locator("main").inner_text()
    page.context.close()


def test_read_only_staff_sees_and_cannot_act(server: DemoServer, browser: Any) -> None:
    secret = _staff(server, "lecture.bernard", "read-only")
    page = new_page(browser)
    _login(page, server, "lecture.bernard", pyotp.TOTP(secret).now())
    page.wait_for_url("**/admin/")
    page.goto(f"https://127.0.0.1:{server.port('http')}/admin/bal/{DOCTOR}")
    assert page.get_by_role("heading", name=f"BAL {DOCTOR}").is_visible()
    assert page.get_by_role("button", name="Accorder la délégation").count() == 0
    assert page.get_by_role("button", name="Vérifier la chaîne").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    forged = page.request.post(
        f"https://127.0.0.1:{server.port('http')}/admin/bal/{DOCTOR}/delegations",
        form={"csrf": csrf, "grantee": GRANTEE, "rights": "all", "reason": "essai"},
    )
    assert forged.status == 403
    page.context.close()
    # A professional account has no console role, whatever its password.
    other = new_page(browser)
    other.goto(f"https://127.0.0.1:{server.port('http')}/admin/")
    assert other.url.endswith("/admin/connexion")
    other.context.close()


def test_administrator_creates_a_local_bal_that_then_receives_mail(server: DemoServer, browser: Any) -> None:
    secret = _staff(server, "admin.leroy", "administrator")
    durand = server.account(GRANTEE)["idnat"]
    page = new_page(browser)
    _login(page, server, "admin.leroy", pyotp.TOTP(secret).now())
    page.wait_for_url("**/admin/")
    page.goto(f"https://127.0.0.1:{server.port('http')}/admin/bal")

    page.get_by_label("Adresse de la BAL").fill("consultations.durand@demo.mssante.fr")
    page.get_by_label("Type (TRE_R257)").select_option("ORG")
    page.get_by_label("Raison de la création").fill("nouvelle consultation")
    page.get_by_role("button", name="Créer la BAL").click()
    assert "Création refusée" in page.locator("main").inner_text()  # an ORG BAL needs its structure

    page.goto(f"https://127.0.0.1:{server.port('http')}/admin/bal")
    page.get_by_label("Adresse de la BAL").fill("consultations.durand@demo.mssante.fr")
    page.get_by_label("Type (TRE_R257)").select_option("PER")
    page.get_by_label("Professionnel titulaire (IdNat_PS, pour PER et CAB)").fill(durand)
    page.get_by_label("Raison de la création").fill("nouvelle consultation")
    page.get_by_role("button", name="Créer la BAL").click()
    page.wait_for_url("**/admin/bal/consultations.durand@demo.mssante.fr")
    trail = page.get_by_role("table", name="50 derniers enregistrements").inner_text()
    assert "admin.bal.create" in trail and "staff:admin.leroy" in trail
    page.context.close()

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = (
        DOCTOR,
        "consultations.durand@demo.mssante.fr",
        "Avis",
    )
    message["Date"] = "Sun, 06 Dec 2026 09:00:00 +0100"
    message.set_content("Pour la nouvelle consultation.")
    with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=30) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=server.ca_cert))
        smtp.login(DOCTOR, server.account(DOCTOR)["password"])
        assert smtp.send_message(message) == {}  # accepted: the new BAL is published and active
