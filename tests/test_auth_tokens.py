"""Offline JWT validation: every kind of bad token is refused with its own reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mssante.auth.identity import IdentityKind
from mssante.auth.testidp import DEMO_AUDIENCE, LocalIdP
from mssante.auth.tokens import TokenError, TokenValidator
from mssante.config import IssuerSection

IDNAT = "810102727017"
INS = "255081416802538"  # key verifies: 97 - (2550814168025 mod 97) = 38


def validator(issuers: dict[str, IssuerSection], min_refresh: float = 30.0) -> TokenValidator:
    return TokenValidator(issuers, skew=60, jwks_ttl=3600, jwks_min_refresh=min_refresh)


def refused(v: TokenValidator, token: str) -> str:
    with pytest.raises(TokenError) as info:
        v.validate(token)
    return info.value.reason


def test_valid_tokens_map_to_identities(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    identity, claims = v.validate(test_idp.token(IDNAT))
    assert identity.kind is IdentityKind.PROFESSIONAL and identity.id == IDNAT
    assert claims["acr"] == "eidas1"
    patient, _ = v.validate(test_idp.token(INS, IdentityKind.PATIENT))
    assert patient.principal == f"patient:{INS}"
    staff, _ = v.validate(test_idp.token("secretaire.dupont", IdentityKind.STAFF))
    assert staff.kind is IdentityKind.STAFF


def test_rs256_issuer(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="r1", alg="RS256", use="sig")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    psc = IssuerSection(
        issuer="https://psc.test/auth/realms/esante-wallet",
        audience=["mssante"],
        jwks_file=tmp_path / "jwks.json",
    )
    v = validator({"psc": psc})
    now = int(time.time())
    claims = {"iss": psc.issuer, "aud": "mssante", "exp": now + 60, "preferred_username": IDNAT}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "r1"})
    assert v.validate(token)[0].id == IDNAT
    # The same RSA public key used as an HMAC secret (algorithm confusion) is refused.
    assert refused(v, jwt.encode(claims, b"x" * 32, algorithm="HS256", headers={"kid": "r1"})) == "algorithm"


def test_expired_and_skew(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    now = time.time()
    assert refused(v, test_idp.token(IDNAT, now=now - 7200, ttl=3600)) == "expired"
    # 30 s past expiry is inside the 60 s skew.
    assert v.validate(test_idp.token(IDNAT, now=now - 90, ttl=60))[0].id == IDNAT


def test_not_yet_valid(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    assert refused(v, test_idp.token(IDNAT, nbf=int(time.time()) + 3600)) == "not_yet_valid"


def test_wrong_audience(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    assert refused(v, test_idp.token(IDNAT, audience="another-service")) == "audience"


def test_wrong_issuer(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    assert refused(v, test_idp.token(IDNAT, iss="https://evil.test/")) == "issuer"


def test_alg_none(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    good = jwt.decode(test_idp.token(IDNAT), options={"verify_signature": False})
    unsigned = jwt.encode(good, None, algorithm="none", headers={"kid": test_idp.kid})
    assert refused(v, unsigned) == "algorithm"


def test_wrong_signature(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers())
    good = jwt.decode(test_idp.token(IDNAT), options={"verify_signature": False})
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(good, other, algorithm="ES256", headers={"kid": test_idp.kid})
    assert refused(v, forged) == "signature"


def test_unknown_kid_then_rotation_is_picked_up(test_idp: LocalIdP) -> None:
    v = validator(test_idp.issuers(), min_refresh=0)
    assert v.validate(test_idp.token(IDNAT))  # JWKS now cached
    good = jwt.decode(test_idp.token(IDNAT), options={"verify_signature": False})
    new_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(good, new_key, algorithm="ES256", headers={"kid": "rotated"})
    assert refused(v, token) == "unknown_kid"
    # The IdP rotates: the new key appears in its JWKS; an unknown kid triggers a re-read.
    jwks = json.loads(test_idp.jwks_file.read_text())
    jwk = json.loads(ECAlgorithm.to_jwk(new_key.public_key()))
    jwk.update(kid="rotated", alg="ES256", use="sig")
    jwks["keys"].append(jwk)
    test_idp.jwks_file.write_text(json.dumps(jwks))
    assert v.validate(token)[0].id == IDNAT


@pytest.mark.parametrize(
    "claims",
    [{"preferred_username": "not-an-idnat"}, {"preferred_username": None}, {"preferred_username": ""}],
)
def test_identity_claim_checked(test_idp: LocalIdP, claims: dict[str, Any]) -> None:
    v = validator(test_idp.issuers())
    assert refused(v, test_idp.token(IDNAT, **claims)) == "identity_claim"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 9000, "eyJhbGciOiJFUzI1NiJ9.e30."])
def test_garbage_is_malformed(test_idp: LocalIdP, token: str) -> None:
    assert refused(validator(test_idp.issuers()), token) in {
        "malformed",
        "algorithm",
        "issuer",
        "unknown_kid",
    }


class _JWKSHandler(BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def jwks_server(test_idp: LocalIdP) -> Iterator[str]:
    _JWKSHandler.body = test_idp.jwks_file.read_bytes()
    _JWKSHandler.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JWKSHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_from_url_is_cached(test_idp: LocalIdP, jwks_server: str) -> None:
    issuer = IssuerSection(
        issuer=test_idp.issuer("professional"), audience=[DEMO_AUDIENCE], jwks_url=jwks_server
    )
    v = validator({"psc": issuer})
    for _ in range(3):
        assert v.validate(test_idp.token(IDNAT))[0].id == IDNAT
    assert _JWKSHandler.hits == 1
    # Unknown kids within the minimum refresh interval do not hit the IdP again.
    good = jwt.decode(test_idp.token(IDNAT), options={"verify_signature": False})
    for i in range(5):
        token = jwt.encode(
            good, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": f"k{i}"}
        )
        assert refused(v, token) == "unknown_kid"
    assert _JWKSHandler.hits == 1


def test_unreachable_jwks_is_a_temporary_failure(test_idp: LocalIdP) -> None:
    issuer = IssuerSection(
        issuer=test_idp.issuer("professional"), audience=[DEMO_AUDIENCE], jwks_url="http://127.0.0.1:9/none"
    )
    assert refused(validator({"psc": issuer}), test_idp.token(IDNAT)) == "jwks_unavailable"
