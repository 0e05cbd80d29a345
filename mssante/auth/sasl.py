"""SASL server mechanisms as sans-I/O state machines, shared by SMTP and IMAP.

A mechanism sees decoded client messages (bytes) and answers with an event: send a
:class:`Challenge`, have a :class:`Credential` checked (:class:`Verify`), or end with
:class:`Accept` / :class:`Reject`. It never touches a socket, a database or a clock; the
authenticator (``mssante.auth.authenticator``) drives it and the front doors carry the bytes
in base64. Malformed input always ends in ``Reject(malformed=True)``, never an exception.

Mechanisms: PLAIN (RFC 4616), OAUTHBEARER (RFC 7628), XOAUTH2 (Google's, used by Thunderbird
and Outlook), EXTERNAL (RFC 4422 app. A). LOGIN is deliberately absent.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

MAX_FIELD_BYTES = 255  # RFC 4616 §2: authzid, authcid and passwd are at most 255 octets each
# Dovecot's master-user convention: "<BAL address>*<login>" as user name asks for the BAL as
# authorization identity, for clients that cannot send one (Thunderbird, mbsync, neomutt).
DELEGATE_SEPARATOR = "*"


def split_delegate(user: str) -> tuple[str, str] | None:
    """``claire.martin@x.fr*secretaire@x.fr`` → (BAL, login); None for any other user name.

    The BAL is everything up to the first separator after its "@": a domain holds no "*", so
    a login whose local part has one (RFC 5322 allows it) is never mistaken for the form."""
    at = user.find("@")
    star = user.find(DELEGATE_SEPARATOR, at + 1) if at > 0 else -1
    if star < 0:
        return None
    bal, login = user[:star], user[star + 1 :]
    if star == at + 1 or not login:
        return None
    return bal, login


# -- credentials a mechanism asks to have checked --------------------------------------------
@dataclass(frozen=True)
class PasswordCredential:
    authcid: str
    password: str = ""  # repr-safe: see __repr__
    authzid: str | None = None

    def __repr__(self) -> str:
        return f"PasswordCredential(authcid={self.authcid!r}, authzid={self.authzid!r})"


@dataclass(frozen=True)
class BearerCredential:
    token: str
    authzid: str | None = None

    def __repr__(self) -> str:
        return f"BearerCredential(authzid={self.authzid!r})"


@dataclass(frozen=True)
class CertificateCredential:
    """EXTERNAL: the credential is the verified TLS client certificate the transport holds."""

    authzid: str | None = None


Credential = PasswordCredential | BearerCredential | CertificateCredential


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Verify:
    credential: Credential


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str
    malformed: bool = False


Event = Challenge | Verify | Accept | Reject


class ServerMechanism(ABC):
    """One exchange of one mechanism. ``receive(None)`` means the client sent no initial
    response (the server then sends an empty challenge); ``receive(b"")`` an empty one."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._state = "start"

    def receive(self, data: bytes | None) -> Event:
        if self._state == "start":
            if data is None:
                self._state = "awaiting"
                return Challenge(b"")
            return self._initial(data)
        if self._state == "awaiting":
            if data is None:
                return self._end(Reject("a response is required", malformed=True))
            return self._initial(data)
        return self._after(data)

    def _initial(self, data: bytes) -> Event:
        try:
            credential = self.parse(data)
        except SyntaxError as exc:
            return self._end(Reject(str(exc), malformed=True))
        self._state = "verifying"
        return Verify(credential)

    def verdict(self, ok: bool) -> Event:
        """The authenticator's answer to :class:`Verify`."""
        if self._state != "verifying":
            return self._end(Reject("exchange out of order", malformed=True))
        if ok:
            return self._end(Accept())
        return self._failed()

    def _failed(self) -> Event:
        return self._end(Reject("authentication failed"))

    def _after(self, data: bytes | None) -> Event:
        return self._end(Reject("exchange is over", malformed=True))

    def _end(self, event: Event) -> Event:
        self._state = "done"
        return event

    @abstractmethod
    def parse(self, data: bytes) -> Credential:
        """The credential in the client's message; ``SyntaxError`` when malformed."""


def _utf8(data: bytes, what: str, *, controls: bool = False) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SyntaxError(f"{what} is not UTF-8") from None
    if not controls and any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise SyntaxError(f"{what} contains control characters")
    return text


class Plain(ServerMechanism):
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``; an authcid ``<BAL>*<login>`` without
    authzid means authcid ``<login>`` asking for authzid ``<BAL>`` (:func:`split_delegate`)."""

    name = "PLAIN"

    def parse(self, data: bytes) -> Credential:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise SyntaxError("PLAIN message needs exactly two NUL separators")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SyntaxError("PLAIN authcid and password must not be empty")
        if max(len(authzid), len(authcid), len(password)) > MAX_FIELD_BYTES:
            raise SyntaxError(f"PLAIN fields are limited to {MAX_FIELD_BYTES} octets")
        user, wanted = _utf8(authcid, "authcid"), _utf8(authzid, "authzid") or None
        delegate = split_delegate(user)
        if delegate is not None:
            if wanted is not None:
                raise SyntaxError("PLAIN names the BAL twice (authzid and <BAL>*<login>)")
            wanted, user = delegate
        return PasswordCredential(
            authcid=user, password=_utf8(password, "password", controls=True), authzid=wanted
        )


_KEY = re.compile(rb"^[A-Za-z]+$")
_VALUE = re.compile(rb"^[\x21-\x7e \t\r\n]*$")
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*)$", re.IGNORECASE)


def _kvpairs(data: bytes) -> dict[str, str]:
    """``key=value^A…^A^A`` (the message must end with two ^A)."""
    if not data.endswith(b"\x01\x01"):
        raise SyntaxError("message must end with two ^A separators")
    pairs: dict[str, str] = {}
    for item in data[:-2].split(b"\x01") if data[:-2] else []:
        key, sep, value = item.partition(b"=")
        if not sep or not _KEY.match(key) or not _VALUE.match(value):
            raise SyntaxError("malformed key=value pair")
        name = key.decode("ascii").lower()
        if name in pairs:
            raise SyntaxError(f"duplicate key {name}")
        pairs[name] = value.decode("ascii")
    return pairs


def _bearer(pairs: dict[str, str]) -> str:
    match = _BEARER.match(pairs.get("auth", ""))
    if not match:
        raise SyntaxError("auth=Bearer <token> is missing or malformed")
    return match.group(1)


def _saslname(value: str) -> str:
    """RFC 5801 saslname: ``=2C`` is a comma, ``=3D`` an equals sign, any other ``=`` is bad."""
    if re.search(r"=(?!2C|3D)", value):
        raise SyntaxError("bad escape in authzid")
    return value.replace("=2C", ",").replace("=3D", "=")


class OAuthBearer(ServerMechanism):
    """RFC 7628. On failure the server sends a JSON error challenge, the client answers with a
    lone ^A, and only then the exchange fails (§3.2.2)."""

    name = "OAUTHBEARER"

    def __init__(self, scope: str = "openid", openid_configuration: str | None = None) -> None:
        super().__init__()
        self.scope, self.openid_configuration = scope, openid_configuration

    def parse(self, data: bytes) -> Credential:
        header, sep, rest = data.partition(b"\x01")
        if not sep:
            raise SyntaxError("OAUTHBEARER message has no ^A separator")
        fields = _utf8(header, "GS2 header").split(",")
        if len(fields) != 3 or fields[2] != "":
            raise SyntaxError("malformed GS2 header")
        flag, authz = fields[0], fields[1]
        if flag.startswith("p="):
            raise SyntaxError("channel binding is not supported")
        if flag not in ("n", "y"):
            raise SyntaxError("malformed GS2 channel-binding flag")
        if authz and not authz.startswith("a="):
            raise SyntaxError("malformed GS2 authzid")
        authzid = _saslname(authz[2:]) if authz else None
        token = _bearer(_kvpairs(rest))
        return BearerCredential(token=token, authzid=authzid or None)

    def _failed(self) -> Event:
        error: dict[str, str] = {"status": "invalid_token", "scope": self.scope}
        if self.openid_configuration:
            error["openid-configuration"] = self.openid_configuration
        self._state = "error_sent"
        return Challenge(json.dumps(error, separators=(",", ":")).encode())

    def _after(self, data: bytes | None) -> Event:
        if self._state == "error_sent":
            malformed = data != b"\x01"
            return self._end(
                Reject(
                    "invalid_token" if not malformed else "expected ^A after the error", malformed=malformed
                )
            )
        return super()._after(data)


class XOAuth2(ServerMechanism):
    """``user=<user>^Aauth=Bearer <token>^A^A``. On failure a JSON error challenge, an empty
    client response, then failure (as Gmail does, which clients expect)."""

    name = "XOAUTH2"

    def __init__(self, scope: str = "openid") -> None:
        super().__init__()
        self.scope = scope

    def parse(self, data: bytes) -> Credential:
        pairs = _kvpairs(data)
        user = pairs.get("user", "")
        if not user:
            raise SyntaxError("XOAUTH2 user= is missing")
        return BearerCredential(token=_bearer(pairs), authzid=user)

    def _failed(self) -> Event:
        self._state = "error_sent"
        error = {"status": "401", "schemes": "bearer", "scope": self.scope}
        return Challenge(json.dumps(error, separators=(",", ":")).encode())

    def _after(self, data: bytes | None) -> Event:
        if self._state == "error_sent":
            return self._end(Reject("invalid_token"))
        return super()._after(data)


class External(ServerMechanism):
    """RFC 4422 app. A: the message is the requested authorization identity (may be empty)."""

    name = "EXTERNAL"

    def parse(self, data: bytes) -> Credential:
        if len(data) > 320:
            raise SyntaxError("EXTERNAL authzid is too long")
        return CertificateCredential(authzid=_utf8(data, "authzid") or None)


MECHANISMS: dict[str, type[ServerMechanism]] = {m.name: m for m in (External, OAuthBearer, XOAuth2, Plain)}
