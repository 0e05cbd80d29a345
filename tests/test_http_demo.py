"""The HTTP APIs as served by `mssante serve --demo`: over TLS, with the demo identity provider's
tokens — the FHIR directory, and the DMP seen by a professional and by a patient."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.demo_server import DemoServer

MARTIN_IDNAT = "810100000011"


@pytest.fixture
def https(demo: DemoServer) -> httpx.Client:
    http = demo.listener("http")
    assert http["tls"] == "implicit"
    return httpx.Client(
        base_url=f"https://localhost:{http['port']}",
        verify=ssl.create_default_context(cafile=demo.ca_cert),
        timeout=10,
    )


def test_fhir_directory_over_tls(https: httpx.Client) -> None:
    found = https.get("/fhir/Practitioner", params={"mailbox-mss": "claire.martin@demo.mssante.fr"}).json()
    assert found["resourceType"] == "Bundle" and found["type"] == "searchset" and found["total"] == 1
    pharmacies = https.get("/fhir/Organization", params={"mailbox-mss:contains": "pharmacie"}).json()
    assert pharmacies["total"] == 1
    assert (
        https.get("/fhir/Practitioner", params={"mailbox-mss": "personne@demo.mssante.fr"}).json()["total"]
        == 0
    )


def test_dmp_api_over_tls_for_a_professional_and_a_patient(demo: DemoServer, https: httpx.Client) -> None:
    patient = next(a for a in demo.doc["accounts"] if a["kind"] == "patient")
    ins = patient["address"].split("@", 1)[0]
    assert https.get(f"/dmp/patients/{ins}").status_code == 401  # no token, no access
    doctor = {"Authorization": f"Bearer {demo.token(MARTIN_IDNAT, 'professional')}"}
    found = https.get(f"/dmp/patients/{ins}", headers=doctor)
    assert found.status_code == 200, found.text
    me = {"Authorization": f"Bearer {demo.token(ins, 'patient')}"}
    mine = https.get("/dmp/me/documents", headers=me)
    assert mine.status_code == 200 and "documents" in mine.json()
    history = https.get("/dmp/me/history", headers=me).json()["history"]
    assert any(h["actor"] == f"professional:{MARTIN_IDNAT}" for h in history)  # the patient sees who looked
