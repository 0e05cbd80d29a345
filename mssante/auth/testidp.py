"""A local identity provider for demo mode and tests: signs tokens the server then trusts.

The signing key (ES256, P-256) is created on first use in ``<data_dir>/demo-idp/`` (0600) with
its public JWKS beside it. ``issuers()`` gives the ``[auth.issuers]`` entries that trust it, one
per identity kind, which the authenticator adds when ``auth.demo_idp`` is on (``serve --demo``).
Tokens look like Pro Santé Connect's: the identifier is in ``preferred_username``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from mssante.auth.identity import IdentityKind
from mssante.config import IssuerSection, Settings

DEMO_AUDIENCE = "mssante-demo"
ID_CLAIM = "preferred_username"


class LocalIdP:
    def __init__(self, directory: Path, issuer_base: str) -> None:
        self.directory = directory
        self.issuer_base = issuer_base.rstrip("/")
        self.key_file = directory / "signing-key.pem"
        self.jwks_file = directory / "jwks.json"
        if not self.key_file.exists():
            self._create()
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_file} is not an EC key")
        self.private_key = key
        self.kid = json.loads(self.jwks_file.read_text())["keys"][0]["kid"]

    @classmethod
    def for_settings(cls, settings: Settings) -> LocalIdP:
        return cls(settings.data_dir / "demo-idp", f"https://{settings.server.hostname}/demo-idp")

    def _create(self) -> None:
        """Key and JWKS written aside, then moved into place in one rename: processes starting
        together (the workers of one server) all end up with the one that got there first."""
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=".demo-idp-"))
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(staging / self.key_file.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=uuid.uuid4().hex[:16], use="sig", alg="ES256")
        (staging / self.jwks_file.name).write_text(json.dumps({"keys": [jwk]}, indent=2))
        try:
            os.rename(staging, self.directory)  # refused when another process's is there
        except OSError:
            shutil.rmtree(staging)

    def issuer(self, kind: IdentityKind | str) -> str:
        return f"{self.issuer_base}/{IdentityKind(kind).value}"

    def issuers(self) -> dict[str, IssuerSection]:
        """Configuration entries trusting this IdP, one per kind that may hold a token."""
        return {
            f"demo-{kind.value}": IssuerSection(
                kind=kind.value,  # type: ignore[arg-type]
                issuer=self.issuer(kind),
                audience=[DEMO_AUDIENCE],
                jwks_file=self.jwks_file,
                id_claim=ID_CLAIM,
                algorithms=["ES256"],
            )
            for kind in (IdentityKind.PROFESSIONAL, IdentityKind.STAFF, IdentityKind.PATIENT)
        }

    def token(
        self,
        identifier: str,
        kind: IdentityKind | str = IdentityKind.PROFESSIONAL,
        *,
        ttl: float = 3600,
        audience: str = DEMO_AUDIENCE,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token for ``identifier``; extra ``claims`` override the defaults."""
        at = int(time.time() if now is None else now)
        body: dict[str, Any] = {
            "iss": self.issuer(kind),
            "sub": uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{identifier}").hex,
            "aud": audience,
            "iat": at,
            "nbf": at,
            "exp": at + int(ttl),
            "jti": uuid.uuid4().hex,
            "acr": "eidas1",
            ID_CLAIM: identifier,
        }
        body.update(claims)
        return jwt.encode(body, self.private_key, algorithm="ES256", headers={"kid": self.kid})
