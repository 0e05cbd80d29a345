"""The patient space and the professionals' DMP web in a real browser: Debian's Chromium driven
by Playwright (the system browser, never a downloaded one), against the shared demo server over
TLS with the demo CA's certificates (HTTPS errors are ignored only for that test CA, whose
server certificate names 127.0.0.1).

One scenario, in the order a day at the demo operator would go: Dr MARTIN writes to Marie
DUPONT; she logs in with her TOTP code, reads, replies (Dr MARTIN's BAL receives it over IMAP),
sends a prescription PDF to the pharmacy (whose BAL receives it over IMAP); Dr DURAND, of her
care team, lists her documents; she hides one and he no longer sees it; she blocks him and he
is refused; she reads in her trace that he looked. Dr MARTIN (médecin traitant) logs in with
a Pro Santé Connect-style token, finds her by INS and opens the hidden document; the pharmacist
finds Jean LEROY by his traits, is refused, uses break-glass with a reason, opens a document;
Jean reads the emergency access and its reason in his trace. Marie, legal representative of her
son, switches to his record and hides one of his documents.

Screenshots of the main pages go to ``docs/screenshots/`` when ``MSSANTE_SCREENSHOTS=1`` (the
README shows them), else to a temporary directory.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.browser import menu, new_page
from tests.conftest import shared_demo
from tests.demo_server import DemoServer

DOMAIN = "demo.mssante.fr"
MARTIN, DURAND, BERNARD = "810100000011", "810100000029", "810100000037"
MARIE, JEAN = "280017512345610", "175056912378904"
PHARMACY = f"pharmacie.parc@{DOMAIN}"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """This module's own demo server: it counts the patients' messages and documents."""
    yield from shared_demo(tmp_path_factory, "web-demo")


def _shot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def _patient_login(page: Any, demo: DemoServer, ins: str, shots: Path | None = None) -> None:
    account = demo.account(f"{ins}@patient.mssante.fr")
    page.goto(account["web"] + "connexion")
    assert page.locator("html").get_attribute("lang") == "fr"
    page.get_by_label("Identifiant").fill(account["login"])
    page.get_by_label("Mot de passe").fill(account["password"])
    if shots is not None:
        _shot(page, shots, "patient-connexion")
    page.get_by_label("Code à usage unique").fill(pyotp.TOTP(account["totp_secret"]).now())
    page.get_by_role("button", name="Se connecter").click()
    page.wait_for_url("**/patient/")


def _pro_login(page: Any, demo: DemoServer, address: str) -> None:
    account = demo.account(address)
    page.goto(account["web"] + "connexion")
    page.locator("#login").fill(account["login"])
    page.locator("#password").fill(account["password"])
    page.get_by_role("button", name="Se connecter", exact=True).click()
    page.wait_for_url("**/pro/")


def _received(demo: DemoServer, login: str, password: str, folder: str, subject: str) -> list[Any]:
    """Messages with ``subject`` in ``folder`` of the BAL ``login`` reads, waiting a little."""
    context = ssl.create_default_context(cafile=demo.ca_cert)
    deadline = time.monotonic() + 10
    while True:
        with imaplib.IMAP4_SSL("127.0.0.1", demo.port("imaps"), ssl_context=context) as imap:
            imap.login(login, password)
            imap.select(folder, readonly=True)
            _, found = imap.search(None, "SUBJECT", f'"{subject}"')
            messages = []
            for number in found[0].split():
                _, data = imap.fetch(number, "(RFC822)")
                messages.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
        if messages or time.monotonic() > deadline:
            return messages
        time.sleep(0.2)


def _doctor_writes(demo: DemoServer) -> None:
    martin = demo.account(f"claire.martin@{DOMAIN}")
    message = EmailMessage()
    message["From"] = f"Dr Claire MARTIN <{martin['address']}>"
    message["To"] = f"{MARIE}@patient.mssante.fr"
    message["Subject"] = "Vos résultats d'analyse"  # RFC 2047 on the wire
    message["Message-ID"] = "<web-test-1@demo.mssante.fr>"
    message["Date"] = email.utils.formatdate()
    message.set_content("Bonjour Madame DUPONT,\nvos résultats sont normaux.\nDr MARTIN\n")
    context = ssl.create_default_context(cafile=demo.ca_cert)
    with smtplib.SMTP("127.0.0.1", demo.port("submission")) as smtp:
        smtp.starttls(context=context)
        smtp.login(martin["login"], martin["password"])
        smtp.send_message(message)


def test_patient_and_professional_in_chromium(
    demo: DemoServer, browser: Any, shots: Path, tmp_path: Path
) -> None:
    _doctor_writes(demo)
    patient = new_page(browser)
    _patient_login(patient, demo, MARIE, shots)
    assert "Bonjour Marie DUPONT" in patient.content()
    # Other test modules of this worker may have written to Marie too: at least this one is unread.
    assert re.search(r"\b[1-9][0-9]* messages? non lus?", patient.content())
    _shot(patient, shots, "patient-accueil")

    # Messages: read, then reply through the SMTP policy (Dr MARTIN's BAL receives it).
    menu(patient, "Messages")
    _shot(patient, shots, "patient-messages")
    patient.get_by_role("link", name="Vos résultats d'analyse").click()
    assert "vos résultats sont normaux" in patient.locator(".message-body").inner_text()
    patient.get_by_label("Votre réponse à Dr Claire MARTIN").fill("Merci docteur, à bientôt.")
    _shot(patient, shots, "patient-message")
    patient.get_by_role("button", name="Envoyer la réponse").click()
    assert "Votre réponse a été envoyée." in patient.locator("[role=status]").inner_text()
    martin = demo.account(f"claire.martin@{DOMAIN}")
    replies = _received(demo, martin["login"], martin["password"], "INBOX", "Re: Vos r")
    assert replies and replies[0]["In-Reply-To"] == "<web-test-1@demo.mssante.fr>"
    assert replies[0]["From"] == f"{MARIE}@patient.mssante.fr"

    # A prescription to the pharmacy, a PDF checked by content (the pharmacy's BAL receives it).
    prescription = tmp_path / "ordonnance.pdf"
    prescription.write_bytes(PDF)
    patient.goto(patient.url.split("/patient/")[0] + "/patient/ordonnance")
    patient.get_by_label("Pharmacie").select_option(PHARMACY)
    patient.locator("#file").set_input_files(str(prescription))
    _shot(patient, shots, "patient-ordonnance")
    patient.get_by_role("button", name="Envoyer l'ordonnance").click()
    assert "Votre ordonnance a été envoyée" in patient.locator("[role=status]").inner_text()
    pharmacist = demo.account(PHARMACY)
    shared = f'"Partag&AOk-/{PHARMACY}/INBOX"'
    got = _received(demo, pharmacist["login"], pharmacist["password"], shared, "Ordonnance")
    assert got and [p.get_content_type() for p in got[0].iter_attachments()] == ["application/pdf"]
    assert next(got[0].iter_attachments()).get_content() == PDF

    # A file that is not what its name says is refused, in French.
    fake = tmp_path / "ordonnance-fausse.pdf"
    fake.write_bytes(b"<html><script>alert(1)</script></html>")
    patient.goto(patient.url.split("/patient/")[0] + "/patient/ordonnance")
    patient.locator("#file").set_input_files(str(fake))
    patient.get_by_role("button", name="Envoyer l'ordonnance").click()
    assert "n'est pas d'un type accepté" in patient.locator("[role=alert]").inner_text()

    # Dr DURAND (care team) sees the consultation report before she hides it.
    durand = new_page(browser)
    _pro_login(durand, demo, f"paul.durand@{DOMAIN}")
    durand.goto(durand.url + f"patients/{MARIE}")
    assert durand.get_by_role("link", name="Compte rendu de consultation", exact=True).count() == 1

    menu(patient, "Documents")
    patient.get_by_role("button", name="Masquer : Compte rendu de consultation").click()
    assert "masqué aux professionnels" in patient.locator("[role=status]").inner_text()
    _shot(patient, shots, "patient-documents")
    patient.get_by_role("link", name="Bilan sanguin", exact=True).click()
    assert "Examen clinique sans particularité" in patient.locator("article.cda").inner_text()
    _shot(patient, shots, "patient-document")

    durand.reload()
    assert durand.get_by_role("link", name="Compte rendu de consultation", exact=True).count() == 0
    assert durand.get_by_role("link", name="Bilan sanguin", exact=True).count() == 1

    # She blocks him: he is refused, and not even offered break-glass.
    menu(patient, "Mes professionnels")
    patient.get_by_role("button", name="Bloquer Dr Paul DURAND (médecin)").click()
    assert "ne peut plus accéder" in patient.locator("[role=status]").inner_text()
    _shot(patient, shots, "patient-professionnels")
    durand.reload()
    assert "Le patient a bloqué votre accès à son dossier." in durand.locator("[role=alert]").inner_text()
    assert durand.get_by_role("button", name="Accéder en urgence").count() == 0

    # Her trace names him, in words: his list, then his refused attempt.
    menu(patient, "Qui a accédé à mon dossier")
    rows = patient.locator("tbody tr").all_inner_texts()
    durand_rows = [r for r in rows if "Dr Paul DURAND (médecin)" in r]
    assert any("a consulté la liste de vos documents (tentative refusée)" in r for r in durand_rows)
    assert any("a consulté la liste de vos documents" in r and "refusée" not in r for r in durand_rows)
    assert any("Vous" in r and "avez bloqué un professionnel : Dr Paul DURAND (médecin)" in r for r in rows)
    assert any("avez masqué un document aux professionnels : Compte rendu de consultation" in r for r in rows)
    _shot(patient, shots, "patient-acces")
    menu(patient, "Profil et notifications")
    patient.get_by_label("Contact d'urgence").fill("Paul DUPONT, 06 12 34 56 78")
    patient.get_by_role("button", name="Enregistrer le profil").click()
    assert "profil médical est enregistré" in patient.locator("[role=status]").inner_text()
    _shot(patient, shots, "patient-profil")

    # She is her son's legal representative: she switches to his record and acts on it.
    menu(patient, "Accueil")
    patient.get_by_label("Dossier affiché").select_option(label="Dossier de Léo DUPONT")
    patient.get_by_role("button", name="Afficher ce dossier").click()
    assert "représentant légal" in patient.locator(".acting").inner_text()
    assert patient.get_by_role("link", name="Historique des vaccinations", exact=True).count() == 1
    assert patient.get_by_role("link", name="Bilan sanguin", exact=True).count() == 0
    patient.get_by_role("button", name="Masquer : Historique des vaccinations").click()
    _shot(patient, shots, "patient-representant")
    menu(patient, "Qui a accédé à mon dossier")
    assert "Votre représentant légal" in patient.locator("tbody").inner_text()

    # Dr MARTIN, médecin traitant, logs in with a Pro Santé Connect-style token: she still
    # sees the hidden document.
    martin_page = new_page(browser)
    martin_page.goto(martin["web"] + "connexion")
    _shot(martin_page, shots, "pro-connexion")
    martin_page.get_by_label("Jeton d'accès").fill(demo.token(MARTIN))
    martin_page.get_by_role("button", name="Se connecter avec le jeton").click()
    martin_page.wait_for_url("**/pro/")
    martin_page.get_by_label("Matricule INS").fill(MARIE)
    martin_page.get_by_role("button", name="Rechercher par INS").click()
    martin_page.get_by_role("link", name="Ouvrir le DMP").click()
    assert "Paul DUPONT, 06 12 34 56 78" in martin_page.locator("dl.meta").last.inner_text()  # her profile
    martin_page.get_by_role("link", name="Compte rendu de consultation", exact=True).click()
    assert "Tension artérielle 12/8" in martin_page.locator("article.cda").inner_text()
    _shot(martin_page, shots, "pro-document")

    # The pharmacist finds Jean LEROY by his traits; no consent: break-glass with a reason.
    pharmacy_page = new_page(browser)
    _pro_login(pharmacy_page, demo, PHARMACY)
    pharmacy_page.get_by_label("Nom de naissance").fill("leroy")
    pharmacy_page.get_by_label("Prénom").fill("Jean")
    pharmacy_page.get_by_label("Date de naissance").fill("1975-05-20")
    pharmacy_page.get_by_role("button", name="Rechercher par traits").click()
    _shot(pharmacy_page, shots, "pro-recherche")
    pharmacy_page.get_by_role("link", name="Ouvrir le DMP").click()
    assert "consentement" in pharmacy_page.locator("[role=alert]").inner_text()
    pharmacy_page.get_by_label("Raison de l'accès d'urgence (obligatoire)").fill(
        "Patient inconscient à l'officine, vérification du traitement"
    )
    _shot(pharmacy_page, shots, "pro-bris-de-glace")
    pharmacy_page.get_by_role("button", name="Accéder en urgence").click()
    assert "Accès d'urgence ouvert" in pharmacy_page.locator(".fr-alert--success").inner_text()
    _shot(pharmacy_page, shots, "pro-patient")
    # the matrix lets a pharmacist read the vaccination history, not the blood test report
    assert pharmacy_page.get_by_role("link", name="Bilan sanguin", exact=True).count() == 0
    pharmacy_page.get_by_role("link", name="Historique des vaccinations", exact=True).click()
    assert "Historique des vaccinations" in pharmacy_page.locator("h1").inner_text()

    jean = new_page(browser)
    _patient_login(jean, demo, JEAN)
    menu(jean, "Qui a accédé à mon dossier")
    emergency = jean.locator("tr.emergency").all_inner_texts()
    assert emergency and "Sophie BERNARD (pharmacien)" in emergency[0]
    assert "Patient inconscient à l'officine" in emergency[0]
    opened = "a ouvert un document : Historique des vaccinations"
    assert any(opened in r for r in jean.locator("tbody tr").all_inner_texts())
