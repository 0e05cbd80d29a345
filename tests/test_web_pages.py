"""The web pages' defences, over TLS against the demo server with an HTTP client (the browser
scenario is in test_web_browser.py): security headers and cookies, CSRF and origin checks,
sessions bound to their space, hostile uploads refused by content and size with nothing
stored, CDA rendered escaped, documents served only as downloads, logins throttled."""

from __future__ import annotations

import re
import smtplib
import ssl
from email.utils import formatdate

import httpx
import pytest

from tests.demo_server import DemoServer
from tests.helpers import csrf_of, web_client

MARTIN = "810100000011"
MARIE = "280017512345610"
JEAN = "175056912378904"
CDA_HOSTILE = (
    '<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="https://evil.example/x.xsl"?>'
    '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>CR &lt;b&gt;piégé&lt;/b&gt;</title>'
    f'<recordTarget><patientRole><id root="1.2.250.1.213.1.4.8" extension="{MARIE}"/></patientRole>'
    "</recordTarget><component><structuredBody><component><section><title>Texte</title><text>"
    "<paragraph>&lt;script&gt;alert(1)&lt;/script&gt; tension normale</paragraph></text></section>"
    "</component></structuredBody></component></ClinicalDocument>"
).encode()
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&e;</title></ClinicalDocument>'
)


@pytest.fixture
def pro(demo: DemoServer) -> httpx.Client:
    """Dr MARTIN (Marie DUPONT's médecin traitant), logged in with a demo IdP token."""
    client = web_client(demo)
    form = client.get("/pro/connexion")
    done = client.post("/pro/connexion", data={"csrf": csrf_of(form.text), "token": demo.token(MARTIN)})
    assert done.status_code == 303 and done.headers["location"] == "/pro/"
    return client


def _documents(client: httpx.Client) -> list[str]:
    return re.findall(r'href="/pro/documents/([0-9.]+)"', client.get(f"/pro/patients/{MARIE}").text)


def test_headers_cookies_and_csrf(demo: DemoServer) -> None:
    client = web_client(demo)
    page = client.get("/patient/connexion")
    headers = page.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    assert '<html lang="fr"' in page.text
    cookie = headers["set-cookie"]
    assert cookie.startswith("__Host-mssante-login=")
    assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"))
    # no token, a wrong token, another origin: refused before any credential is looked at
    for data, origin, status in (
        ({"login": "x", "password": "y"}, None, 403),
        ({"login": "x", "password": "y", "csrf": "forged"}, None, 403),
        ({"login": "x", "password": "y", "csrf": csrf_of(page.text)}, "https://evil.example", 403),
    ):
        headers = {"origin": origin} if origin else {}
        refused = client.post("/patient/connexion", data=data, headers=headers)
        assert refused.status_code == status
        assert "Requête refusée" in refused.text or "Votre session a expiré" in refused.text


def test_sessions_belong_to_their_space_and_end_at_logout(demo: DemoServer, pro: httpx.Client) -> None:
    assert pro.get("/patient/documents").headers["location"] == "/patient/connexion"  # not a patient session
    page = pro.get("/pro/")
    assert page.status_code == 200 and "Claire MARTIN" in page.text
    out = pro.post("/pro/deconnexion", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    stale = web_client(demo)
    stale.cookies = pro.cookies
    assert pro.get("/pro/").headers["location"] == "/pro/connexion"


def test_hostile_uploads_are_refused_by_content_and_size(pro: httpx.Client) -> None:
    page = pro.get(f"/pro/patients/{MARIE}")
    csrf, before = csrf_of(page.text), _documents(pro)
    url = f"/pro/patients/{MARIE}/documents"
    cases = [
        (b"<html><script>alert(1)</script></html>", "cr.pdf", "n'est pas d'un type accepté"),
        (XXE, "cr.xml", "n'est pas d'un type accepté"),
        (b"\x89PNG\r\n\x1a\n" + b"0" * 100, "photo.png", "n'est pas d'un type accepté"),  # not for the DMP
        (b"", "vide.pdf", "Le fichier est vide"),
    ]
    for content, name, said in cases:
        refused = pro.post(url, data={"csrf": csrf, "type_code": "11488-4"}, files={"file": (name, content)})
        assert refused.status_code == 400 and said in refused.text.replace("&#39;", "'"), name
    big = b"%PDF-1.4\n" + b"0" * (10 * 1024 * 1024 + 1) + b"\n%%EOF\n"
    too_big = pro.post(url, data={"csrf": csrf, "type_code": "11488-4"}, files={"file": ("gros.pdf", big)})
    assert too_big.status_code == 413 and "taille autorisée" in too_big.text
    unknown = pro.post(
        url, data={"csrf": csrf, "type_code": "NOPE"}, files={"file": ("cr.pdf", b"%PDF-1.4\n%%EOF")}
    )
    assert unknown.status_code == 400 and "JDV_J07" in unknown.text
    assert _documents(pro) == before  # nothing half-stored


def test_a_cda_is_rendered_escaped_and_served_only_as_a_download(pro: httpx.Client) -> None:
    page = pro.get(f"/pro/patients/{MARIE}")
    before = set(_documents(pro))
    done = pro.post(
        f"/pro/patients/{MARIE}/documents",
        data={"csrf": csrf_of(page.text), "type_code": "11488-4", "title": "CR <i>test</i>"},
        files={"file": ("cr.xml", CDA_HOSTILE, "application/pdf")},  # the declared type is ignored
    )
    assert done.status_code == 303
    (uid,) = set(_documents(pro)) - before
    shown = pro.get(f"/pro/documents/{uid}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; tension normale" in shown
    assert "<script" not in shown and "evil.example" not in shown and "CR &lt;i&gt;test&lt;/i&gt;" in shown
    download = pro.get(f"/pro/documents/{uid}/telecharger")
    assert download.content == CDA_HOSTILE
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]
    # the author deletes their own document
    page = pro.get(f"/pro/patients/{MARIE}")
    assert pro.post(f"/pro/documents/{uid}/supprimer", data={"csrf": csrf_of(page.text)}).status_code == 303
    assert uid not in _documents(pro)


def test_patient_logins_are_throttled(demo: DemoServer) -> None:
    client = web_client(demo)
    said = []
    for _ in range(12):
        form = client.get("/patient/connexion")
        answer = client.post(
            "/patient/connexion",
            data={"csrf": csrf_of(form.text), "login": "inconnu@patient.mssante.fr", "password": "x" * 12,
                  "code": "123456"},
        )  # fmt: skip
        assert answer.status_code in (401, 429)
        said.append("Trop de tentatives" in answer.text)
    assert not said[0] and said[-1]  # refused, then locked out (identity lockout of the demo)


def test_a_patient_logs_in_with_the_identity_providers_token(demo: DemoServer) -> None:
    """The primary login may be an OpenID Connect provider (FranceConnect): its access token,
    checked against the configured patient issuer (the demo IdP here); a professional's is refused."""
    client = web_client(demo)
    form = client.get("/patient/connexion")
    wrong = client.post("/patient/connexion", data={"csrf": csrf_of(form.text), "token": demo.token(MARTIN)})
    assert wrong.status_code == 403 and "pas celui d&#39;un patient" in wrong.text
    form = client.get("/patient/connexion")
    done = client.post(
        "/patient/connexion", data={"csrf": csrf_of(form.text), "token": demo.token(MARIE, "patient")}
    )
    assert done.status_code == 303 and done.headers["location"] == "/patient/"
    assert "Bonjour Marie DUPONT" in client.get("/patient/").text


def test_a_closed_conversation_takes_no_reply_and_the_smtp_policy_says_why(demo: DemoServer) -> None:
    """The reply goes through the submission listener: when the professional closed the
    conversation (X-MSS-MES: FIN), the page offers no reply and a forged one gets the policy's
    refusal, in French."""
    martin = demo.account("claire.martin@demo.mssante.fr")
    message = (
        f"From: {martin['address']}\r\nTo: {JEAN}@patient.mssante.fr\r\nSubject: Fin de suivi\r\n"
        f"Message-ID: <fin-web-1@demo.mssante.fr>\r\nX-MSS-MES: FIN\r\nDate: {formatdate()}\r\n"
        "\r\nAu revoir.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", demo.port("submission")) as smtp:
        smtp.starttls(context=ssl.create_default_context(cafile=demo.ca_cert))
        smtp.login(martin["login"], martin["password"])
        smtp.sendmail(martin["address"], [f"{JEAN}@patient.mssante.fr"], message.encode())
    client = web_client(demo)
    form = client.get("/patient/connexion")
    client.post("/patient/connexion", data={"csrf": csrf_of(form.text), "token": demo.token(JEAN, "patient")})
    listing = client.get("/patient/messages").text
    uid = re.search(r'href="/patient/messages/recus/(\d+)">Fin de suivi', listing)
    assert uid is not None
    page = client.get(f"/patient/messages/recus/{uid.group(1)}")
    assert "a clos cette conversation" in page.text and "Envoyer la réponse" not in page.text
    forged = client.post(
        f"/patient/messages/recus/{uid.group(1)}/reponse", data={"csrf": csrf_of(page.text), "body": "Merci"}
    )
    assert forged.status_code == 400
    assert "Envoi refusé" in forged.text and "a clos cette conversation (X-MSS-MES: FIN)" in forged.text


def test_a_cda_for_another_patient_is_refused(pro: httpx.Client) -> None:
    page = pro.get(f"/pro/patients/{MARIE}")
    other = CDA_HOSTILE.replace(MARIE.encode(), JEAN.encode())
    refused = pro.post(
        f"/pro/patients/{MARIE}/documents",
        data={"csrf": csrf_of(page.text), "type_code": "11488-4"},
        files={"file": ("cr.xml", other)},
    )
    assert refused.status_code == 400 and f"autre patient (INS {JEAN})" in refused.text


def test_pdf_preview_is_inline_only_for_a_pdf_and_sandboxed(pro: httpx.Client) -> None:
    record = pro.get(f"/pro/patients/{MARIE}").text
    links = re.findall(r'href="/pro/documents/([0-9.]+)">([^<]+)<', record)
    pdf = next(uid for uid, title in links if "Ordonnance de sortie" in title)
    cda = next(uid for uid, title in links if "Compte rendu" in title)
    page = pro.get(f"/pro/documents/{pdf}")
    assert f'src="/pro/documents/{pdf}/apercu"' in page.text
    assert page.headers["content-security-policy"].endswith("; frame-src 'self'")
    preview = pro.get(f"/pro/documents/{pdf}/apercu")
    assert preview.status_code == 200 and preview.content.startswith(b"%PDF-")
    assert preview.headers["content-type"] == "application/pdf"
    assert preview.headers["content-disposition"].startswith("inline;")
    assert preview.headers["content-security-policy"] == "sandbox; default-src 'none'; frame-ancestors 'self'"
    assert preview.headers["x-content-type-options"] == "nosniff"
    assert preview.headers["x-frame-options"] == "SAMEORIGIN"
    # a CDA (XML) is never served inline: rendered as escaped text on the page, or downloaded
    assert pro.get(f"/pro/documents/{cda}/apercu").status_code == 404
    assert "frame-src" not in pro.get(f"/pro/documents/{cda}").headers["content-security-policy"]
