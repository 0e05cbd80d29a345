"""OpenID Connect login of the patient space, FranceConnect style, served in demo mode by the
demo identity provider on our own listener: in Chromium (shared helpers of
test_web_browser.py) the patient clicks « Se connecter avec FranceConnect (démo) », picks a demo
patient and lands on /patient/ with their documents, without the web TOTP; a forged ``state``
is refused with a French message. The ID token checks (issuer, signature, audience, expiry,
nonce) are exercised on tokens signed by a real key against a real JWKS; the code flow's
single-use code and PKCE over HTTP against the demo server."""

from __future__ import annotations

import html
import json
import re
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from mssante.auth.identity import IdentityKind
from mssante.auth.testidp import LocalIdP
from mssante.web.oidc import DEMO_CLIENT, OIDCRefused, verify_id_token
from tests.browser import menu, new_page
from tests.demo_server import DemoServer

JEAN = "175056912378904"
ISSUER = "https://127.0.0.1:1/demo-idp"


def _base(demo: DemoServer) -> str:
    return f"https://127.0.0.1:{demo.listener('http')['port']}"


def _franceconnect(page: Any, demo: DemoServer, ins: str) -> None:
    page.goto(_base(demo) + "/patient/connexion")
    page.get_by_role("link", name="Se connecter avec FranceConnect (démo)").click()
    page.get_by_label(re.compile(f"INS {ins}")).check()
    page.get_by_role("button", name="Continuer sous cette identité").click()
    page.wait_for_url("**/patient/")


def test_franceconnect_demo_login_in_chromium(demo: DemoServer, browser: Any) -> None:
    page = new_page(browser)
    page.goto(_base(demo) + "/patient/connexion")
    page.get_by_role("link", name="Se connecter avec FranceConnect (démo)").click()
    page.wait_for_url("**/demo-idp/authorize?**")
    assert "ceci n'est pas FranceConnect" in page.content()
    page.get_by_label(re.compile(f"INS {JEAN}")).check()
    page.get_by_role("button", name="Continuer sous cette identité").click()
    page.wait_for_url("**/patient/")  # no TOTP asked: the provider did its own second factor
    assert "Jean" in page.locator("main").inner_text()
    menu(page, "Documents")
    assert page.locator('a[href^="/patient/documents/"]').count() >= 1
    page.context.close()


def test_a_forged_state_is_refused_in_chromium(demo: DemoServer, browser: Any) -> None:
    page = new_page(browser)
    page.goto(_base(demo) + "/patient/oidc/connexion")
    page.wait_for_url("**/demo-idp/authorize?**")  # the request is under way (cookie set)
    response = page.goto(_base(demo) + "/patient/oidc/retour?code=anything&state=forg%C3%A9")
    assert response is not None and response.status == 400
    text = page.locator("main").inner_text()
    assert "Connexion refusée" in text and "paramètre « state » invalide" in text
    page.goto(_base(demo) + "/patient/")
    assert page.url.endswith("/patient/connexion")  # no session was opened
    page.context.close()


def _idp(tmp_path: Path) -> tuple[LocalIdP, dict[str, Any]]:
    idp = LocalIdP(tmp_path / "idp", "https://unused.example")
    return idp, json.loads(idp.jwks_file.read_text())


def _id_token(idp: LocalIdP, **claims: Any) -> str:
    values = {"audience": DEMO_CLIENT, "iss": ISSUER, "sub": JEAN, "nonce": "n-123", **claims}
    audience = values.pop("audience")
    ttl = values.pop("ttl", 300)
    return idp.token(JEAN, IdentityKind.PATIENT, ttl=ttl, audience=audience, **values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "https://autre-fournisseur.example/"}, "émis par un autre fournisseur d'identité"),
        ({"audience": "un-autre-client"}, "n'est pas destiné à ce service"),
        ({"ttl": -600}, "a expiré"),
        ({"nonce": "rejoué"}, "(nonce)"),
    ],
)
def test_id_token_checks(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    idp, jwks = _idp(tmp_path)
    assert (
        verify_id_token(_id_token(idp), jwks, issuer=ISSUER, client_id=DEMO_CLIENT, nonce="n-123")["sub"]
        == JEAN
    )
    with pytest.raises(OIDCRefused, match=re.escape(message)):
        verify_id_token(_id_token(idp, **change), jwks, issuer=ISSUER, client_id=DEMO_CLIENT, nonce="n-123")


def test_a_token_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    _, jwks = _idp(tmp_path / "ours")
    other, _ = _idp(tmp_path / "theirs")
    with pytest.raises(OIDCRefused, match="signature du jeton d'identité est inconnue"):
        verify_id_token(_id_token(other), jwks, issuer=ISSUER, client_id=DEMO_CLIENT, nonce="n-123")


def test_code_is_single_use_and_bound_to_pkce(demo: DemoServer) -> None:
    base = _base(demo)
    client = httpx.Client(
        base_url=base,
        verify=ssl.create_default_context(cafile=demo.ca_cert),
        headers={"origin": base},
        timeout=30,
    )
    discovery = client.get("/demo-idp/.well-known/openid-configuration").json()
    assert discovery["issuer"] == f"{base}/demo-idp" and discovery["code_challenge_methods_supported"] == [
        "S256"
    ]
    start = client.get("/patient/oidc/connexion")
    assert start.status_code == 303
    cookie = start.headers["set-cookie"]
    assert cookie.startswith("__Host-mssante-oidc=") and "SameSite=lax" in cookie and "HttpOnly" in cookie
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["state"] and query["nonce"]
    form = client.get(start.headers["location"])
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    fields = {
        k: v[0]
        for k, v in query.items()
        if k in ("client_id", "redirect_uri", "state", "nonce", "code_challenge")
    }
    picked = client.post("/demo-idp/authorize", data={**fields, "csrf": csrf.group(1), "ins": JEAN})
    assert picked.status_code == 303
    code = parse_qs(urlsplit(picked.headers["location"]).query)["code"][0]
    token_form = {"grant_type": "authorization_code", "code": code, "client_id": DEMO_CLIENT,
                  "redirect_uri": fields["redirect_uri"], "code_verifier": "not-the-verifier"}  # fmt: skip
    wrong = client.post("/demo-idp/token", data=token_form)
    assert wrong.status_code == 400 and "PKCE" in wrong.json()["error_description"]
    again = client.post("/demo-idp/token", data=token_form)  # the code was consumed by the first try
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the browser comes back with that spent code: the token endpoint refuses, the page says so
    back = client.get(picked.headers["location"])
    assert back.status_code == 400 and "a refusé l'échange du code" in html.unescape(back.text)


def test_a_pdf_is_shown_in_a_sandboxed_frame(demo: DemoServer, browser: Any) -> None:
    page = new_page(browser)
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Refused" in msg.text else None)
    _franceconnect(page, demo, JEAN)
    menu(page, "Documents")
    with page.expect_response(re.compile(r"/apercu$")) as preview:
        page.get_by_role("link", name="Ordonnance de sortie").first.click()
    frame = page.locator("iframe#apercu")
    assert frame.get_attribute("title") == "Aperçu du document PDF"
    answer = preview.value
    headers = answer.all_headers()
    assert answer.status == 200 and headers["content-type"] == "application/pdf"
    assert headers["content-disposition"].startswith("inline;")
    assert (
        headers["content-security-policy"].startswith("sandbox;")
        and "frame-ancestors 'self'" in headers["content-security-policy"]
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert not refused, refused  # our page's CSP lets its own frame load, nothing else
    deadline = time.monotonic() + 10  # Chromium's PDF viewer took the response (not a download)
    while not any(f.url.startswith("chrome-extension://") for f in page.frames):
        assert time.monotonic() < deadline, [f.url for f in page.frames]
        page.wait_for_timeout(100)
    assert page.get_by_role("link", name="Télécharger le document").count() == 1
    page.context.close()


def test_configuration_needs_a_client_id_and_https() -> None:
    from pydantic import ValidationError

    from mssante.config import NotifySection, WebSection

    assert WebSection(
        patient_oidc_issuer="https://fc.example", patient_oidc_client_id="x"
    ).patient_oidc_issuer
    with pytest.raises(ValidationError, match="needs patient_oidc_client_id"):
        WebSection(patient_oidc_issuer="https://fc.example")
    with pytest.raises(ValidationError, match="must be https"):
        WebSection(patient_oidc_issuer="http://fc.example", patient_oidc_client_id="x")
    with pytest.raises(ValidationError, match="needs smtp_from"):
        NotifySection(smtp_host="relay.example")
