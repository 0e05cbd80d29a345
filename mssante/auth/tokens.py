"""Offline validation of JWT access tokens (Pro Santé Connect, a patient IdP, the demo IdP).

A token is accepted only if its ``iss`` names a configured issuer, its signature verifies with
a key of that issuer's JWKS under RS256 or ES256 (``none`` and HMAC never), its ``aud`` holds one
of the issuer's audiences, and ``exp`` / ``nbf`` hold within a small clock skew. The issuer's
kind then maps the configured identity claim to an :class:`Identity`:
professional → IdNat_PS (PSC: ``preferred_username``), patient → INS, staff → local id.

Blocking (file or HTTP reads of a JWKS): call from a worker thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from mssante.auth.identity import Identity, IdentityKind, InvalidIdentity
from mssante.config import IssuerSection

ALLOWED_ALGORITHMS = frozenset({"RS256", "ES256"})
MAX_TOKEN_BYTES = 8192


class TokenError(Exception):
    """Why a token was refused; ``reason`` is a short stable code for the audit trail."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class JWKSCache:
    """The keys of one issuer, by ``kid``; re-read after ``ttl`` or when an unknown kid shows up,
    but not more often than ``min_refresh`` (a stream of made-up kids must not hammer the IdP)."""

    def __init__(
        self,
        source: IssuerSection,
        ttl: float,
        min_refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.ttl, self.min_refresh, self.clock = source, ttl, min_refresh, clock
        self._keys: dict[str, PyJWK] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def _fetch(self) -> dict[str, Any]:
        if self.source.jwks_file is not None:
            return dict(json.loads(self.source.jwks_file.read_text()))
        assert self.source.jwks_url is not None
        response = httpx.get(self.source.jwks_url, timeout=5.0, follow_redirects=False)
        response.raise_for_status()
        return dict(response.json())

    def _refresh(self) -> None:
        try:
            keyset = PyJWKSet.from_dict(self._fetch())
        except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
            self._loaded_at = self.clock()  # back off before the next try
            raise TokenError(
                "jwks_unavailable", f"cannot load the JWKS of {self.source.issuer}: {exc}"
            ) from None
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id and k.public_key_use in (None, "sig")}
        self._loaded_at = self.clock()

    def key(self, kid: str) -> PyJWK:
        with self._lock:
            now = self.clock()
            stale = self._loaded_at is None or now - self._loaded_at >= self.ttl
            unknown = kid not in self._keys
            may_refresh = self._loaded_at is None or now - self._loaded_at >= self.min_refresh
            if stale or (unknown and may_refresh):
                self._refresh()
            found = self._keys.get(kid)
        if found is None:
            raise TokenError("unknown_kid", f"no key {kid!r} in the JWKS of {self.source.issuer}")
        return found


@dataclass(frozen=True)
class TrustedIssuer:
    name: str
    config: IssuerSection
    keys: JWKSCache


class TokenValidator:
    """Validates tokens against the configured issuers (keyed by their exact ``iss``)."""

    def __init__(
        self, issuers: dict[str, IssuerSection], *, skew: float, jwks_ttl: float, jwks_min_refresh: float
    ) -> None:
        self.skew = skew
        self._by_iss: dict[str, TrustedIssuer] = {
            cfg.issuer: TrustedIssuer(name, cfg, JWKSCache(cfg, jwks_ttl, jwks_min_refresh))
            for name, cfg in issuers.items()
        }

    @property
    def enabled(self) -> bool:
        return bool(self._by_iss)

    def trust(self, name: str, config: IssuerSection, *, jwks_ttl: float = 3600.0) -> None:
        """Trust one more issuer at run time (the web's own submission issuer)."""
        self._by_iss[config.issuer] = TrustedIssuer(name, config, JWKSCache(config, jwks_ttl, 0.0))

    def validate(self, token: str) -> tuple[Identity, dict[str, Any]]:
        """The identity a valid token carries and its claims; :class:`TokenError` otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("malformed", "token too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise TokenError("malformed", f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenError("algorithm", f"algorithm {alg!r} is not accepted (RS256, ES256 only)")
        trusted = self._by_iss.get(str(unverified.get("iss", "")))
        if trusted is None:
            raise TokenError("issuer", f"issuer {unverified.get('iss')!r} is not trusted")
        if alg not in trusted.config.algorithms:
            raise TokenError("algorithm", f"algorithm {alg} is not accepted for {trusted.name}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("unknown_kid", "token has no key id (kid)")
        key = trusted.keys.key(kid)
        if key.algorithm_name != alg:
            raise TokenError("algorithm", f"key {kid} is for {key.algorithm_name}, token says {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=trusted.config.audience,
                issuer=trusted.config.issuer,
                leeway=self.skew,
                options={"require": ["exp", "iss", "aud"], "verify_nbf": True},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("not_yet_valid", "token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise TokenError("audience", "token is not meant for this server (aud)") from None
        except jwt.InvalidIssuerError:
            raise TokenError("issuer", "issuer mismatch") from None
        except jwt.InvalidSignatureError:
            raise TokenError("signature", "signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenError("invalid", f"token refused: {exc}") from None
        return self._identity(trusted, claims), claims

    @staticmethod
    def _identity(trusted: TrustedIssuer, claims: dict[str, Any]) -> Identity:
        value = claims.get(trusted.config.id_claim)
        if not isinstance(value, str) or not value:
            raise TokenError("identity_claim", f"claim {trusted.config.id_claim!r} is missing")
        kind = IdentityKind(trusted.config.kind)
        try:
            if kind is IdentityKind.PROFESSIONAL:
                return Identity.professional(value)
            if kind is IdentityKind.PATIENT:
                return Identity.patient(value)
            return Identity.staff(value)
        except InvalidIdentity as exc:
            raise TokenError("identity_claim", str(exc)) from None
