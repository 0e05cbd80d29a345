"""Password hashes (argon2id) and the optional TOTP second factor of local accounts.

With TOTP enrolled, the client sends the 6-digit code after the password in the one password
field SASL PLAIN has, either appended (``secret123456``) or after a colon (``secret:123456``).
Both are tried, colon form first, so a password may itself contain colons or end in digits.
"""

from __future__ import annotations

import re
import time

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2id with OWASP's first recommended parameters (Password Storage Cheat Sheet: 19 MiB,
# 2 iterations, 1 lane): the cost an attacker pays per guess of a stolen hash, while a server
# on two cores can still verify a login storm (which the credential cache mostly spares it).
# Hashes made with other parameters still verify and are replaced at the next login.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the login is unknown, so that an unknown login costs the same time.
_DUMMY_HASH = _HASHER.hash("mssante: no such account")

TOTP_DIGITS = 6
TOTP_INTERVAL = 30
_CODE_COLON = re.compile(r"^(?P<password>.*):(?P<code>\d{6})$", re.DOTALL)
_CODE_APPENDED = re.compile(r"^(?P<password>.+?)(?P<code>\d{6})$", re.DOTALL)

MIN_PASSWORD_LENGTH = 12


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-cost check; a missing hash (no password set) still costs one verification."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return False


def rehash(password: str) -> str:
    """A new hash of an already verified password (no length rule: it was accepted before)."""
    return _HASHER.hash(password)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, login: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app enrols from (shown as text or a QR code)."""
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(
        name=login, issuer_name=issuer
    )


def split_code(secret_and_code: str) -> list[tuple[str, str]]:
    """Candidate (password, code) splits of what the client sent, most explicit first."""
    candidates: list[tuple[str, str]] = []
    for pattern in (_CODE_COLON, _CODE_APPENDED):
        match = pattern.match(secret_and_code)
        if match and (match["password"], match["code"]) not in candidates:
            candidates.append((match["password"], match["code"]))
    return candidates


def totp_step(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The time step ``code`` is valid for (current ±1 step), or None; a step already used
    (``<= last_step``) is refused so that an observed code cannot be replayed."""
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
    at = time.time() if now is None else now
    current = int(at // TOTP_INTERVAL)
    for step in (current, current - 1, current + 1):
        if last_step is not None and step <= last_step:
            continue
        if pyotp.utils.strings_equal(totp.at(step * TOTP_INTERVAL), code):
            return step
    return None
