"""FHIR read API over real HTTP: uvicorn on loopback, httpx as the directory client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from annuaire import service
from mssante.db import transaction
from mssante.http import create_app
from mssante.runtime import Runtime

MARIE = "810102727017"
PAUL = "810000000042"
HIDDEN = "810000000099"


def _seed(runtime: Runtime) -> None:
    with transaction(runtime.writer_engine) as s:
        service.add_professional(
            s, idnat=MARIE, nom="MARTIN", prenom="Marie", profession_code="21", actor="t"
        )
        service.add_professional(s, idnat=PAUL, nom="DURAND", prenom="Paul", profession_code="10", actor="t")
        service.add_structure(
            s, identifier="750000001", raison_sociale="Pharmacie du Centre", categorie="620", actor="t"
        )
        service.add_bal(s, address="Marie.Martin@demo.mssante.fr", type="PER", professional=MARIE, actor="t")
        service.add_bal(
            s, address="m.martin@pharmacien.mssante.fr", type="CAB", professional=MARIE, actor="t"
        )
        service.add_bal(s, address="secret.martin@demo.mssante.fr", type="PER", professional=MARIE,
                        liste_rouge=True, actor="t")  # fmt: skip
        service.add_bal(s, address="paul.durand@demo.mssante.fr", type="PER", professional=PAUL, actor="t")
        service.add_bal(s, address="old.durand@demo.mssante.fr", type="PER", professional=PAUL, actor="t")
        service.set_bal_active(s, address="old.durand@demo.mssante.fr", active=False, actor="t")
        service.add_bal(s, address="officine@demo.mssante.fr", type="ORG", structure="750000001",
                        responsible=MARIE, service="Officine", description="Ordonnances",
                        actor="t")  # fmt: skip
        service.add_bal(s, address="lgo@demo.mssante.fr", type="APP", structure="750000001", actor="t")
        service.add_patient_bal(s, ins="288091234567894", actor="t")
        service.add_professional(s, idnat=HIDDEN, nom="CACHÉ", profession_code="10", actor="t")
        service.add_bal(s, address="cache@demo.mssante.fr", type="PER", professional=HIDDEN, liste_rouge=True,
                        actor="t")  # fmt: skip


@pytest.fixture
def base_url(runtime: Runtime) -> Iterator[str]:
    _seed(runtime)
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _search(base_url: str, resource: str, params: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/fhir/{resource}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def _addresses(resource: dict[str, Any]) -> list[str]:
    return [t["value"] for t in resource.get("telecom", [])]


def test_practitioner_by_mailbox(base_url: str) -> None:
    body = _search(base_url, "Practitioner", {"mailbox-mss": "marie.martin@"})
    assert body["total"] == 1
    (entry,) = body["entry"]
    practitioner = entry["resource"]
    assert entry["fullUrl"].endswith(f"/fhir/Practitioner/{MARIE}")
    assert practitioner["resourceType"] == "Practitioner" and practitioner["id"] == MARIE
    assert practitioner["identifier"] == [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": MARIE}]
    assert practitioner["name"][0]["family"] == "MARTIN"
    assert practitioner["qualification"][0]["code"]["coding"][0]["code"] == "21"
    # All public BALs of the practitioner; never the liste rouge one.
    assert _addresses(practitioner) == ["m.martin@pharmacien.mssante.fr", "Marie.Martin@demo.mssante.fr"]
    metadata = practitioner["telecom"][0]["extension"][0]
    assert metadata["url"].endswith("as-ext-mailbox-mss-metadata")
    assert metadata["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "CAB"


def test_contains_exact_and_or(base_url: str) -> None:
    assert _search(base_url, "Practitioner", {"mailbox-mss:contains": "MARTIN@"})["total"] == 1
    assert _search(base_url, "Practitioner", {"mailbox-mss:contains": "@demo.mssante.fr"})["total"] == 2
    exact = _search(base_url, "Practitioner", {"mailbox-mss:exact": "Marie.Martin@demo.mssante.fr"})
    assert exact["total"] == 1
    assert _search(base_url, "Practitioner", {"mailbox-mss:exact": "marie.martin@demo"})["total"] == 0
    either = _search(
        base_url,
        "Practitioner",
        {"mailbox-mss:exact": "paul.durand@demo.mssante.fr,Marie.Martin@demo.mssante.fr"},
    )
    assert sorted(e["resource"]["id"] for e in either["entry"]) == sorted([MARIE, PAUL])
    assert _search(base_url, "Practitioner", {"mailbox-mss": "%"})["total"] == 0  # wildcards are literal
    limited = _search(base_url, "Practitioner", {"_count": "1"})
    assert limited["total"] == 2 and len(limited["entry"]) == 1


@pytest.mark.parametrize(
    "address",
    ["secret.martin@demo.mssante.fr", "old.durand@demo.mssante.fr", "288091234567894@patient.mssante.fr"],
)
def test_unlisted_inactive_and_patient_bals_are_never_returned(base_url: str, address: str) -> None:
    for resource in ("Practitioner", "PractitionerRole", "Organization"):
        assert _search(base_url, resource, {"mailbox-mss:exact": address})["total"] == 0
        assert _search(base_url, resource, {"mailbox-mss:contains": address.split("@")[0]})["total"] == 0


def test_organization_pharmacy(base_url: str) -> None:
    body = _search(base_url, "Organization", {"mailbox-mss": "officine@"})
    (entry,) = body["entry"]
    org = entry["resource"]
    assert org["id"] == "750000001" and org["name"] == "Pharmacie du Centre"
    assert org["type"][0]["coding"][0]["code"] == "620"
    assert _addresses(org) == ["lgo@demo.mssante.fr", "officine@demo.mssante.fr"]
    meta = {e["url"]: e for e in org["telecom"][1]["extension"][0]["extension"]}
    assert meta["type"]["valueCodeableConcept"]["coding"][0]["code"] == "ORG"
    assert meta["responsible"]["valueString"] == "Marie MARTIN"
    assert meta["service"]["valueString"] == "Officine"
    assert meta["description"]["valueString"] == "Ordonnances"
    # PER BALs are not on organisations, ORG BALs not on practitioners.
    assert _search(base_url, "Organization", {"mailbox-mss": "marie"})["total"] == 0
    assert _search(base_url, "Practitioner", {"mailbox-mss": "officine"})["total"] == 0


def test_practitioner_role(base_url: str) -> None:
    body = _search(base_url, "PractitionerRole", {"mailbox-mss:contains": "martin"})
    roles = [e["resource"] for e in body["entry"]]
    assert body["total"] == 1
    assert roles[0]["practitioner"] == {"reference": f"Practitioner/{MARIE}"}
    assert roles[0]["code"][0]["coding"][0]["code"] == "21"
    assert "secret.martin@demo.mssante.fr" not in _addresses(roles[0])


def test_bad_parameters_get_an_operation_outcome(base_url: str) -> None:
    for params in ({"_count": "0"}, {"_count": "many"}, {"mailbox-mss:below": "x"}, {"mailbox-mss": ""}):
        response = httpx.get(f"{base_url}/fhir/Practitioner", params=params, timeout=10)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"


def test_read_by_id(base_url: str) -> None:
    response = httpx.get(f"{base_url}/fhir/Practitioner/{MARIE}", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "application/fhir+json"
    )
    practitioner = response.json()
    assert practitioner["resourceType"] == "Practitioner" and practitioner["id"] == MARIE
    assert "secret.martin@demo.mssante.fr" not in _addresses(practitioner)
    org = httpx.get(f"{base_url}/fhir/Organization/750000001", timeout=10).json()
    assert org["resourceType"] == "Organization" and org["name"] == "Pharmacie du Centre"
    for missing in ("Practitioner/899999999999", f"Practitioner/{HIDDEN}", "Organization/999999999"):
        response = httpx.get(f"{base_url}/fhir/{missing}", timeout=10)
        assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
