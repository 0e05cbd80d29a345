"""The DMP HTTP API over a real socket (uvicorn on 127.0.0.1, httpx), with tokens signed by the
test identity provider; notifications observed at a real webhook receiver, with their HMAC."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from dmp.service import DMPService, DocumentMeta
from dmp.testing import INS, MEDECIN, MEDECIN_TRAITANT, REP_INS, cda, seed
from mssante.auth.authenticator import Authenticator
from mssante.auth.identity import Identity
from mssante.auth.testidp import LocalIdP
from mssante.config import NotifySection
from mssante.http import create_app
from mssante.notify import SIGNATURE_HEADER, Notifier, verify
from mssante.runtime import Runtime
from tests.test_notify import SECRET, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def api(
    runtime: Runtime, test_idp: LocalIdP, receiver: Receiver
) -> Iterator[tuple[httpx.Client, DMPService]]:
    runtime.settings.auth.issuers = test_idp.issuers()
    runtime.authenticator = Authenticator(
        runtime.engine, runtime.settings, writer_engine=runtime.writer_engine
    )
    runtime.settings.notify = NotifySection(
        webhook_url=receiver.url, secret=SECRET, backoff_base_seconds=0.05
    )
    if runtime.notifier is not None:
        runtime.notifier.close()
    runtime.notifier = Notifier(runtime.settings.notify)
    runtime.extras.pop("dmp", None)  # the runtime's service was made with the previous notifier
    service = DMPService.from_runtime(runtime)
    seed(service)
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, service
    server.should_exit = True
    thread.join(10)
    service.notifier.close()


def _auth(idp: LocalIdP, identifier: str, kind: str = "professional") -> dict[str, str]:
    return {"Authorization": f"Bearer {idp.token(identifier, kind)}"}


def test_professional_and_patient_views(
    api: tuple[httpx.Client, DMPService], test_idp: LocalIdP, receiver: Receiver
) -> None:
    client, service = api
    content = cda()
    uid = service.feed(Identity.professional(MEDECIN_TRAITANT), INS, content,
                       DocumentMeta(type_code="34112-3", title="CR d'hospitalisation")).unique_id  # fmt: skip
    traitant = _auth(test_idp, MEDECIN_TRAITANT)

    found = client.get(f"/dmp/patients/{INS}", headers=traitant)
    assert found.status_code == 200 and found.json()["birth_name"] == "DUPONT"
    listed = client.get(f"/dmp/patients/{INS}/documents", headers=traitant, params={"type_code": "34112-3"})
    assert [d["unique_id"] for d in listed.json()["documents"]] == [uid]
    assert client.get(f"/dmp/patients/{INS}/documents", headers=traitant,
                      params={"author_profession": "60"}).json() == {"documents": []}  # fmt: skip
    fetched = client.get(f"/dmp/documents/{uid}", headers=traitant).json()
    assert base64.b64decode(fetched["content_base64"]) == content and fetched["space"] == "COMPTES_RENDUS"

    # a doctor outside the care team: refused, then break-glass with a reason
    other = _auth(test_idp, MEDECIN)
    refused = client.get(f"/dmp/documents/{uid}", headers=other)
    assert refused.status_code == 403 and "no consent" in refused.json()["error"]
    glass = client.get(
        f"/dmp/documents/{uid}", headers=other, params={"break_glass": "true", "reason": "urgence"}
    )
    assert glass.status_code == 200
    assert client.get(f"/dmp/patients/{INS}/history", headers=traitant).status_code == 403

    # the patient sees the document and the whole trace
    patient = _auth(test_idp, INS, "patient")
    assert [d["unique_id"] for d in client.get("/dmp/me/documents", headers=patient).json()["documents"]] == [
        uid
    ]
    history = client.get("/dmp/me/history", headers=patient).json()["history"]
    seen = [
        (h["action"], h["outcome"], h["actor"])
        for h in history
        if h["action"] in ("feed", "read", "break_glass")
    ]
    assert seen == [
        ("feed", "ok", f"professional:{MEDECIN_TRAITANT}"),
        ("read", "ok", f"professional:{MEDECIN_TRAITANT}"),
        ("read", "refused", f"professional:{MEDECIN}"),
        ("break_glass", "ok", f"professional:{MEDECIN}"),
        ("read", "ok", f"professional:{MEDECIN}"),
    ]
    rep = _auth(test_idp, REP_INS, "patient")
    assert client.get(f"/dmp/patients/{INS}/history", headers=rep).status_code == 200

    # notifications reached the webhook, signed, without medical content
    assert service.notifier.flush(5)
    kinds = []
    for headers, body in receiver.received:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert b"hospitalisation" not in body and b"34112-3" not in body
        event = json.loads(body)
        assert event["recipient"] == f"{INS}@patient.mssante.fr"
        kinds.append(event["kind"])
    # the feed, the care team's first consultation of the day, the break-glass
    assert kinds == ["dmp.document.added", "dmp.record.consulted", "dmp.break_glass"]


def test_masking_over_http(api: tuple[httpx.Client, DMPService], test_idp: LocalIdP) -> None:
    client, service = api
    uid = service.feed(Identity.professional(MEDECIN_TRAITANT), INS, cda(),
                       DocumentMeta(type_code="34112-3", title="CR")).unique_id  # fmt: skip
    masked = client.post(f"/dmp/documents/{uid}/mask", json={"flags": ["INVISIBLE_PATIENT"]},
                         headers=_auth(test_idp, MEDECIN_TRAITANT))  # fmt: skip
    assert masked.status_code == 200 and masked.json()["flags"] == ["INVISIBLE_PATIENT"]
    patient = _auth(test_idp, INS, "patient")
    assert client.get("/dmp/me/documents", headers=patient).json() == {"documents": []}
    assert client.get(f"/dmp/documents/{uid}", headers=patient).status_code == 403
    author = _auth(test_idp, MEDECIN_TRAITANT)
    assert (
        client.post(
            f"/dmp/documents/{uid}/unmask", json={"flags": ["INVISIBLE_PATIENT"]}, headers=author
        ).json()["flags"]
        == []
    )
    assert client.get(f"/dmp/documents/{uid}", headers=patient).status_code == 200
    assert client.post(f"/dmp/documents/{uid}/hide", json={"flags": []}, headers=author).status_code == 422
    not_author = client.delete(f"/dmp/documents/{uid}", headers=_auth(test_idp, MEDECIN))
    assert not_author.status_code == 403 and not_author.json()["code"] == 901
    assert (
        client.delete(f"/dmp/documents/{uid}", headers=_auth(test_idp, MEDECIN_TRAITANT)).status_code == 200
    )
    assert client.get(f"/dmp/documents/{uid}", headers=_auth(test_idp, MEDECIN_TRAITANT)).status_code == 403


def test_tokens_are_required(api: tuple[httpx.Client, DMPService], test_idp: LocalIdP) -> None:
    client, _service = api
    missing = client.get("/dmp/me/documents")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    expired = {"Authorization": f"Bearer {test_idp.token(INS, 'patient', ttl=-3600)}"}
    assert client.get("/dmp/me/documents", headers=expired).status_code == 401
    assert client.get("/dmp/documents/2.25.1", headers=_auth(test_idp, MEDECIN)).status_code == 404


def test_patient_sets_opposition_and_emergency_access(
    api: tuple[httpx.Client, DMPService], test_idp: LocalIdP
) -> None:
    client, _service = api
    patient, rep = _auth(test_idp, INS, "patient"), _auth(test_idp, REP_INS, "patient")
    traitant = _auth(test_idp, MEDECIN_TRAITANT)
    opposed = client.put(f"/dmp/patients/{INS}/opposition", json={"value": True}, headers=patient)
    assert opposed.json() == {"opposition": True, "emergency_access": True}
    assert client.get(f"/dmp/patients/{INS}/documents", headers=traitant).status_code == 403
    assert (
        client.put(f"/dmp/patients/{INS}/opposition", json={"value": False}, headers=rep).status_code == 200
    )
    assert client.get(f"/dmp/patients/{INS}/documents", headers=traitant).status_code == 200
    refused = client.put(f"/dmp/patients/{INS}/emergency-access", json={"value": False}, headers=traitant)
    assert refused.status_code == 403
    allowed = client.put(f"/dmp/patients/{INS}/emergency-access", json={"value": False}, headers=patient)
    assert allowed.json() == {"opposition": False, "emergency_access": False}
    history = client.get("/dmp/me/history", headers=patient).json()["history"]
    changes = [(h["action"], h["outcome"], h["role"]) for h in history if h["action"].startswith("patient.")][
        -4:
    ]
    assert changes == [
        ("patient.opposition", "ok", "patient"),
        ("patient.opposition", "ok", "legal_representative"),
        ("patient.emergency_access", "refused", "professional"),
        ("patient.emergency_access", "ok", "patient"),
    ]
