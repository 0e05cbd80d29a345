"""The authenticator facade the front doors (SMTP AUTH, IMAP AUTHENTICATE) call.

Front doors speak base64 lines; this module decodes them, drives a sans-I/O mechanism
(``mssante.auth.sasl``), checks credentials (passwords, tokens, certificates), applies the
brute-force limits (``throttle``) and writes every success and failure to the audit trail.
Database and JWKS work runs in worker threads (``asyncio.to_thread``), argon2 in its own
bounded pool (``hashing``), and a password verified a moment ago is not hashed again
(``credcache``): the event loop never blocks and a login costs milliseconds.

Usage from a front door::

    exchange = authenticator.begin("PLAIN", tls=tls_info(ssl_object), client_ip=ip, listener="submission")
    result = await exchange.start(initial_response)          # base64 text, "=" for empty, or None
    while isinstance(result, AuthChallenge):
        send(result.challenge)                              # base64 text ("" for an empty challenge)
        result = await exchange.step(read_line())           # "*" cancels
    if isinstance(result, AuthFailure):
        await asyncio.sleep(result.delay)                   # brute-force delay, then the error reply

How a result maps to each protocol's reply is given by ``AuthFailure.smtp_reply`` and
``AuthFailure.imap_reply``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, or_, update
from sqlalchemy.orm import Session

from mssante import audit, metrics
from mssante.audit import AuditEvent
from mssante.auth import accounts, passwords, throttle
from mssante.auth.credcache import VerifiedCredentials
from mssante.auth.hashing import HashPool, HashPoolBusy
from mssante.auth.identity import Identity, IdentityKind
from mssante.auth.models import LocalAccount
from mssante.auth.offer import offered_mechanisms
from mssante.auth.sasl import (
    MECHANISMS,
    Accept,
    BearerCredential,
    CertificateCredential,
    Challenge,
    Credential,
    Event,
    OAuthBearer,
    PasswordCredential,
    ServerMechanism,
    Verify,
    XOAuth2,
)
from mssante.auth.testidp import LocalIdP
from mssante.auth.tokens import TokenError, TokenValidator
from mssante.config import Settings
from mssante.crypto import KeyRing, KeyRingError
from mssante.db import transaction
from mssante.tls import TLSInfo

# Decides whether ``identity`` may act as the requested authorization identity. Runs in the
# worker thread with a read session. The delegation module supplies the real rule; the default
# only accepts the identity naming itself.
Authorize = Callable[[Session, Identity, str], bool]


def authorize_self_only(_session: Session, identity: Identity, authzid: str) -> bool:
    wanted = authzid.strip().lower()
    return wanted in {identity.id.lower(), (identity.login or "").lower()}


class FailureKind(StrEnum):
    MALFORMED = "malformed"  # bad base64, bad SASL syntax, oversized
    CANCELLED = "cancelled"  # the client sent "*"
    REFUSED = "refused"  # wrong credentials, authzid not allowed
    UNSUPPORTED = "unsupported"  # mechanism unknown or not offered here
    ENCRYPTION_REQUIRED = "encryption_required"  # no TLS
    LOCKED = "locked"  # brute-force lockout in force
    TEMPORARY = "temporary"  # e.g. an issuer's JWKS cannot be fetched


_SMTP = {
    FailureKind.MALFORMED: "501 5.5.2 Cannot decode the SASL response",
    FailureKind.CANCELLED: "501 5.7.0 Authentication cancelled",
    FailureKind.REFUSED: "535 5.7.8 Authentication credentials invalid",
    FailureKind.UNSUPPORTED: "504 5.5.4 Unrecognized authentication type",
    FailureKind.ENCRYPTION_REQUIRED: "538 5.7.11 Encryption required for requested authentication mechanism",
    FailureKind.LOCKED: "454 4.7.0 Temporary authentication failure, try again later",
    FailureKind.TEMPORARY: "454 4.7.0 Temporary authentication failure",
}
_IMAP = {
    FailureKind.MALFORMED: ("BAD", None, "Invalid SASL response"),
    FailureKind.CANCELLED: ("BAD", None, "Authentication cancelled"),
    FailureKind.REFUSED: ("NO", "AUTHENTICATIONFAILED", "Authentication failed"),
    FailureKind.UNSUPPORTED: ("NO", "CANNOT", "Unsupported authentication mechanism"),
    FailureKind.ENCRYPTION_REQUIRED: ("NO", "PRIVACYREQUIRED", "TLS is required to authenticate"),
    FailureKind.LOCKED: ("NO", "UNAVAILABLE", "Too many failures, try again later"),
    FailureKind.TEMPORARY: ("NO", "UNAVAILABLE", "Temporary authentication failure"),
}


@dataclass(frozen=True)
class AuthChallenge:
    challenge: str  # base64, "" for an empty challenge


@dataclass(frozen=True)
class AuthSuccess:
    identity: Identity
    mechanism: str
    authzid: str | None = None  # requested and allowed; None = acting as itself


@dataclass(frozen=True)
class AuthFailure:
    kind: FailureKind
    reason: str
    delay: float = 0.0  # seconds the front door waits before replying
    retry_after: float | None = None  # POSIX time a lockout ends

    @property
    def smtp_reply(self) -> str:
        return _SMTP[self.kind]

    @property
    def imap_reply(self) -> tuple[str, str | None, str]:
        """(status, response code or None, text), e.g. ("NO", "AUTHENTICATIONFAILED", …)."""
        return _IMAP[self.kind]


AuthResult = AuthChallenge | AuthSuccess | AuthFailure


@dataclass
class _Checked:
    """The worker thread's verdict on one credential."""

    identity: Identity | None
    reason: str = ""
    kind: FailureKind = FailureKind.REFUSED
    penalty: throttle.Penalty = field(default_factory=throttle.Penalty)
    authzid: str | None = None


_NO_PENALTY = throttle.Penalty()


@dataclass(frozen=True)
class _AccountView:
    """The claimed account as read at the gate, detached from its session."""

    id: int
    login: str
    kind: str
    password_hash: str | None
    totp_secret: str | None
    totp_last_step: int | None
    disabled: bool
    identity: Identity | None

    @classmethod
    def of(cls, row: LocalAccount) -> _AccountView:
        try:
            identity = accounts.identity_of(row) if row.kind != IdentityKind.APPLICATION else None
        except accounts.AccountError:
            identity = None
        return cls(
            row.id, row.login, row.kind, row.password_hash, row.totp_secret, row.totp_last_step,
            bool(row.disabled), identity,
        )  # fmt: skip


@dataclass(frozen=True)
class _Gate:
    standing: throttle.Penalty
    account: _AccountView | None


class Authenticator:
    """One per process; cheap to share between all sessions of all front doors."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        writer_engine: Engine | None = None,
        authorize: Authorize = authorize_self_only,
        clock: Callable[[], float] = time.time,
        keyring: KeyRing | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.engine, self.writer = engine, writer_engine or engine
        self.sleep = sleep  # how a delayed success waits (tests record instead)
        cache = settings.auth.credential_cache
        self.cache = VerifiedCredentials(cache.ttl_seconds, cache.max_entries)
        self.hashes = HashPool(settings.auth.hash_workers, settings.auth.hash_queue)
        self._next_prune = 0.0
        self._keyring = keyring  # opens TOTP secrets; loaded from storage.keyring when first needed
        self.settings, self.policy = settings, settings.auth.bruteforce
        self.authorize, self.clock = authorize, clock
        issuers = dict(settings.auth.issuers)
        if settings.auth.demo_idp:
            issuers.update(LocalIdP.for_settings(settings).issuers())
        self.tokens = TokenValidator(
            issuers,
            skew=settings.auth.clock_skew_seconds,
            jwks_ttl=settings.auth.jwks_cache_seconds,
            jwks_min_refresh=settings.auth.jwks_min_refresh_seconds,
        )

    def close(self) -> None:
        self.hashes.close()

    def mechanisms(self, tls: TLSInfo, *, cleartext_ok: bool = False) -> list[str]:
        return offered_mechanisms(
            self.settings.auth, tls, cleartext_ok=cleartext_ok, tokens=self.tokens.enabled
        )

    def begin(
        self, mechanism: str, *, tls: TLSInfo, client_ip: str, listener: str = "", cleartext_ok: bool = False
    ) -> Exchange:
        return Exchange(self, mechanism.upper(), tls, client_ip, listener, cleartext_ok)

    def authenticate_bearer(self, token: str, *, client_ip: str, listener: str = "http") -> AuthResult:
        """A bearer token of an HTTP API (``Authorization: Bearer …``), with the same checks,
        brute-force counters and audit as SASL. Blocking: call it from a worker thread (FastAPI
        runs plain ``def`` dependencies in one)."""
        exchange = Exchange(self, "HTTP-BEARER", TLSInfo(active=True), client_ip, listener, False)
        checked = self._check(BearerCredential(token.strip()), exchange)
        if checked.identity is None:
            return _failure(checked)
        return AuthSuccess(checked.identity, "HTTP-BEARER")

    # -- the check: gate (thread) → verification (hash pool or thread) → verdict (thread) -----
    async def check(self, credential: Credential, ex: Exchange) -> _Checked:
        """Check one credential. The database work runs in worker threads, argon2 in the hash
        pool; a verified password is remembered a short while (``credcache``)."""
        now = self.clock()
        key = _claimed_key(credential, ex.tls)
        gate = await asyncio.to_thread(self._gate, credential, ex, key, now)
        if gate.standing.locked_until is not None:
            return await asyncio.to_thread(self._blocked, ex, key, gate.standing)
        try:
            if isinstance(credential, PasswordCredential):
                checked = await self._verify_password(credential, gate.account, now)
            else:
                checked = await asyncio.to_thread(self._verify, credential, ex)
        except HashPoolBusy as exc:
            checked = _Checked(None, f"busy: {exc}", FailureKind.TEMPORARY)
            await asyncio.to_thread(self._record, ex, checked, key, count=False)
            return checked
        return await asyncio.to_thread(self._conclude, credential, ex, checked, key, gate.standing)

    def _check(self, credential: Credential, ex: Exchange) -> _Checked:
        """The same check for a credential that needs no password hash, in the calling thread."""
        assert not isinstance(credential, PasswordCredential)
        now = self.clock()
        key = _claimed_key(credential, ex.tls)
        gate = self._gate(credential, ex, key, now)
        if gate.standing.locked_until is not None:
            return self._blocked(ex, key, gate.standing)
        return self._conclude(credential, ex, self._verify(credential, ex), key, gate.standing)

    def _gate(self, credential: Credential, ex: Exchange, key: str | None, now: float) -> _Gate:
        """What stands before checking: a block or delay earned by earlier failures of this
        (login, address) pair or this address, and the claimed account as it is now."""
        counters = [(throttle.IP, throttle.ip_key(ex.client_ip))]
        if key:
            counters.append((throttle.PAIR, throttle.pair_key(key, ex.client_ip)))
        with Session(self.engine) as session:
            standing = throttle.standing(session, self.policy, counters, now)
            account = None
            if isinstance(credential, PasswordCredential) and standing.locked_until is None:
                row = accounts.get(session, credential.authcid)
                account = _AccountView.of(row) if row is not None else None
        return _Gate(standing, account)

    def _blocked(self, ex: Exchange, key: str | None, standing: throttle.Penalty) -> _Checked:
        checked = _Checked(None, "blocked after repeated failures", FailureKind.LOCKED, standing)
        self._record(ex, checked, key, count=False)
        checked.penalty = throttle.Penalty(0.0, standing.locked_until)
        return checked

    def _conclude(
        self,
        credential: Credential,
        ex: Exchange,
        checked: _Checked,
        key: str | None,
        standing: throttle.Penalty,
    ) -> _Checked:
        if checked.identity is not None and credential.authzid is not None:
            with Session(self.engine) as session:
                allowed = self.authorize(session, checked.identity, credential.authzid)
                itself = authorize_self_only(session, checked.identity, credential.authzid)
            if not allowed:
                key = key or checked.identity.principal
                checked = _Checked(None, "authorization identity not allowed")
            elif not itself:
                checked.authzid = credential.authzid
        self._record(ex, checked, key or (checked.identity.principal if checked.identity else None), standing)
        return checked

    def _verify(self, credential: Credential, ex: Exchange) -> _Checked:
        if isinstance(credential, BearerCredential):
            try:
                identity, _claims = self.tokens.validate(credential.token)
            except TokenError as exc:
                kind = FailureKind.TEMPORARY if exc.reason == "jwks_unavailable" else FailureKind.REFUSED
                return _Checked(None, f"token: {exc.reason}", kind)
            with Session(self.engine) as session:
                if accounts.disabled_identity(session, identity):
                    return _Checked(None, "account disabled")
            return _Checked(identity)
        return self._verify_certificate(ex.tls)

    async def _verify_password(
        self, credential: PasswordCredential, account: _AccountView | None, now: float
    ) -> _Checked:
        if account is None or not account.totp_secret:
            stored = account.password_hash if account else None
            login = account.login if account else ""
            usable = account is not None and stored is not None and not account.disabled
            if usable and self.cache.hit(login, credential.password, stored or ""):
                return self._password_verdict(account, True)
            ok = await self.hashes.verify(stored, credential.password)
            if ok and usable and account is not None and stored is not None:
                stored = await self._maybe_rehash(account, stored, credential.password)
                self.cache.remember(login, credential.password, stored)
            return self._password_verdict(account, ok)
        # A second factor: never cached (each code is good once), each split tried in the pool.
        try:
            secret = accounts.open_totp(self._ring(), account.totp_secret)
        except KeyRingError as exc:
            return _Checked(None, f"TOTP secret cannot be opened: {exc}", FailureKind.TEMPORARY)
        for password, code in passwords.split_code(credential.password) or [(credential.password, "")]:
            if not await self.hashes.verify(account.password_hash, password):
                continue
            step = passwords.totp_step(secret, code, account.totp_last_step, now) if code else None
            # Claim the time step atomically: a code observed on the wire cannot be replayed.
            if step is None or not await asyncio.to_thread(self._claim_totp_step, account.id, step):
                return _Checked(None, "bad or reused TOTP code")
            return self._password_verdict(account, True)
        return _Checked(None, "bad password")

    async def _maybe_rehash(self, account: _AccountView, stored: str, password: str) -> str:
        """A hash made with older parameters is replaced at the first successful login."""
        if not passwords.needs_rehash(stored):
            return stored
        fresh = await self.hashes.rehash(password)
        await asyncio.to_thread(self._store_rehash, account.id, stored, fresh)
        return fresh

    def _store_rehash(self, account_id: int, old: str, new: str) -> None:
        with transaction(self.writer) as session:
            session.execute(
                update(LocalAccount)
                .where(LocalAccount.id == account_id, LocalAccount.password_hash == old)
                .values(password_hash=new)
            )

    def _ring(self) -> KeyRing:
        if self._keyring is None:
            self._keyring = KeyRing.load(self.settings.keyring_path)
        return self._keyring

    def _claim_totp_step(self, account_id: int, step: int) -> bool:
        with transaction(self.writer) as session:
            result = session.execute(
                update(LocalAccount)
                .where(
                    LocalAccount.id == account_id,
                    or_(LocalAccount.totp_last_step.is_(None), LocalAccount.totp_last_step < step),
                )
                .values(totp_last_step=step)
            )
            return bool(getattr(result, "rowcount", 0) == 1)

    @staticmethod
    def _password_verdict(account: _AccountView | None, ok: bool) -> _Checked:
        if account is None:
            return _Checked(None, "unknown login")
        if account.kind == IdentityKind.APPLICATION:
            return _Checked(None, "application accounts use EXTERNAL only")
        if account.disabled:
            return _Checked(None, "account disabled")
        if not ok:
            return _Checked(None, "bad password")
        if account.identity is None:
            return _Checked(None, "account has no identity usable with a password")
        return _Checked(account.identity)

    def _verify_certificate(self, tls: TLSInfo) -> _Checked:
        if not tls.active or tls.peer is None:
            return _Checked(None, "no verified client certificate")
        with Session(self.engine) as session:
            found = accounts.by_certificate(session, tls.peer.fingerprint)
        if found is None:
            return _Checked(None, "certificate not bound to an application account")
        account, _cert = found
        if account.disabled or account.kind != IdentityKind.APPLICATION:
            return _Checked(None, "account disabled")
        return _Checked(Identity.application(tls.peer.subject, tls.peer.fingerprint, login=account.login))

    def _record(
        self,
        ex: Exchange,
        checked: _Checked,
        key: str | None,
        standing: throttle.Penalty = _NO_PENALTY,
        *,
        count: bool = True,
    ) -> None:
        """Counters and audit in one transaction (so no attempt exists without its trace).
        The answer waits ``standing.delay`` (earned before this attempt), success or failure."""
        now = self.clock()
        detail: dict[str, Any] = {"mechanism": ex.mechanism, "ip": ex.client_ip}
        if ex.listener:
            detail["listener"] = ex.listener
        if standing.delay:
            detail["delay"] = standing.delay
        checked.penalty = throttle.Penalty(standing.delay)
        metrics.login(ex.mechanism, ex.listener, checked)
        with transaction(self.writer) as session:
            if checked.identity is not None:
                if key:
                    throttle.record_success(session, throttle.pair_key(key, ex.client_ip))
                if checked.authzid:
                    detail["authzid"] = checked.authzid
                audit.append(
                    session,
                    AuditEvent(
                        actor=checked.identity.principal,
                        action="auth.success",
                        source=ex.client_ip,
                        detail=detail,
                    ),
                )
                return
            detail["reason"] = checked.reason
            audit.append(
                session,
                AuditEvent(
                    actor=key or "anonymous",
                    action="auth.failure",
                    outcome="refused",
                    source=ex.client_ip,
                    detail=detail,
                ),
            )
            if count:
                self._count_failure(session, ex, checked, key, now)

    def _count_failure(
        self, session: Session, ex: Exchange, checked: _Checked, key: str | None, now: float
    ) -> None:
        """Count the failure per address and per (login, address); audit each threshold crossed:
        ``auth.throttle`` when answers start to be delayed, ``auth.lockout`` when blocked."""
        counters = [(throttle.IP, throttle.ip_key(ex.client_ip))]
        if key:
            counters.append((throttle.PAIR, throttle.pair_key(key, ex.client_ip)))
        for scope, counter in counters:
            crossing = throttle.record_failure(session, self.policy, scope, counter, now)
            if crossing is None:
                continue
            blocked = crossing.locked_until is not None
            metrics.login_throttled(scope, blocked)
            if blocked:
                checked.penalty = throttle.Penalty(checked.penalty.delay, crossing.locked_until)
                if key and key.startswith("login:"):
                    self.cache.forget(key.removeprefix("login:"))
            audit.append(
                session,
                AuditEvent(
                    actor=key or "anonymous",
                    action="auth.lockout" if blocked else "auth.throttle",
                    outcome="refused",
                    object=f"{scope}:{counter}",
                    source=ex.client_ip,
                    detail={
                        "scope": scope,
                        "failures": crossing.failures,
                        "delay": crossing.delay,
                        **({"until": crossing.locked_until} if blocked else {}),
                    },
                ),
            )
        if now >= self._next_prune:
            self._next_prune = now + self.policy.window_seconds
            throttle.prune(session, self.policy, now)

    def _record_protocol_failure(self, ex: Exchange, kind: FailureKind, reason: str, count: bool) -> _Checked:
        checked = _Checked(None, reason, kind)
        self._record(ex, checked, None, count=count)
        return checked


def _claimed_key(credential: Credential, tls: TLSInfo) -> str | None:
    """The identity an attempt claims, before checking: the key of its failure counter."""
    if isinstance(credential, PasswordCredential):
        return f"login:{accounts.normalise_login(credential.authcid)}"
    if isinstance(credential, CertificateCredential) and tls.peer is not None:
        return f"cert:{tls.peer.fingerprint}"
    return None


class Exchange:
    """One SASL exchange on one connection."""

    def __init__(
        self,
        auth: Authenticator,
        mechanism: str,
        tls: TLSInfo,
        client_ip: str,
        listener: str,
        cleartext_ok: bool,
    ) -> None:
        self.auth, self.mechanism, self.tls = auth, mechanism, tls
        self.client_ip, self.listener, self.cleartext_ok = client_ip, listener, cleartext_ok
        self._mech: ServerMechanism | None = None
        self._failure: _Checked | None = None
        self._done = False

    async def start(self, initial_response: str | None) -> AuthResult:
        """``initial_response``: base64 text as on the wire ("=" means empty), or None."""
        if not (self.tls.active or self.cleartext_ok):
            return await self._fail(FailureKind.ENCRYPTION_REQUIRED, "no TLS", count=False)
        offered = self.auth.mechanisms(self.tls, cleartext_ok=self.cleartext_ok)
        if self.mechanism not in offered:
            return await self._fail(
                FailureKind.UNSUPPORTED, f"mechanism {self.mechanism[:20]!r} not offered", count=False
            )
        self._mech = self._make()
        if initial_response is None:
            return await self._drive(self._mech.receive(None))
        return await self._feed(initial_response)

    async def step(self, response: str) -> AuthResult:
        """The client's next line (base64; "*" cancels the exchange)."""
        if self._mech is None or self._done:
            return AuthFailure(FailureKind.MALFORMED, "no exchange in progress")
        if response.strip() == "*":
            return await self._fail(FailureKind.CANCELLED, "cancelled by the client", count=False)
        return await self._feed(response)

    def _make(self) -> ServerMechanism:
        cls = MECHANISMS[self.mechanism]
        if cls is OAuthBearer:
            return OAuthBearer(scope="openid")
        if cls is XOAuth2:
            return XOAuth2(scope="openid")
        return cls()

    async def _feed(self, line: str) -> AuthResult:
        assert self._mech is not None
        text = line.strip()
        limit = self.auth.settings.auth.max_response_bytes
        if len(text) > (limit * 4) // 3 + 4:
            return await self._fail(FailureKind.MALFORMED, "response too long", count=True)
        if text == "=":
            data = b""
        else:
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return await self._fail(FailureKind.MALFORMED, "bad base64", count=True)
        return await self._drive(self._mech.receive(data))

    async def _drive(self, event: Event) -> AuthResult:
        assert self._mech is not None
        while True:
            if isinstance(event, Challenge):
                return AuthChallenge(base64.b64encode(event.data).decode("ascii"))
            if isinstance(event, Verify):
                checked = await self.auth.check(event.credential, self)
                if checked.identity is not None:
                    event = self._mech.verdict(True)
                    if isinstance(event, Accept):
                        self._done = True
                        if checked.penalty.delay:  # as long as a failure would have waited
                            await self.auth.sleep(checked.penalty.delay)
                        return AuthSuccess(checked.identity, self.mechanism, checked.authzid)
                    continue
                self._failure = checked
                if checked.kind is not FailureKind.REFUSED:
                    self._done = True
                    return _failure(checked)
                event = self._mech.verdict(False)
                continue
            if isinstance(event, Accept):
                raise AssertionError("a mechanism accepted without a verified credential")
            self._done = True
            if self._failure is not None:  # already checked, counted and audited
                return _failure(self._failure)
            return await self._fail(FailureKind.MALFORMED, event.reason, count=True)

    async def _fail(self, kind: FailureKind, reason: str, *, count: bool) -> AuthFailure:
        self._done = True
        checked = await asyncio.to_thread(self.auth._record_protocol_failure, self, kind, reason, count)
        return _failure(checked)


def _failure(checked: _Checked) -> AuthFailure:
    return AuthFailure(checked.kind, checked.reason, checked.penalty.delay, checked.penalty.locked_until)
