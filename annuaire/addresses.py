"""BAL addresses: parsing, normalisation and the comparison key.

Choice (see ``annuaire.models``): the domain is lower-cased; the local part is kept as
published (RFC 5321 lets it be case-sensitive) but every comparison uses ``key`` — the whole
address lower-cased — because MSSanté mailboxes are never told apart by case and clients
re-case addresses freely. Only unquoted dot-atom local parts are accepted: the national
directory has no other kind, and quoted forms are a classic source of confusion attacks.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import idna

from annuaire.identifiers import validate_nir

PATIENT_DOMAIN = "patient.mssante.fr"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_RE = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
# RFC 6531 §3.3: atext extended with any non-ASCII character (controls and spaces excepted below).
_UTF8_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+"
_UTF8_LOCAL_RE = re.compile(rf"{_UTF8_ATOM}(?:\.{_UTF8_ATOM})*")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class AddressError(ValueError):
    """An address that cannot be a BAL address; the message says why."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    @property
    def address(self) -> str:
        """As stored and shown: local part as given, domain lower-cased."""
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The comparison key: the whole address lower-cased."""
        return f"{self.local.lower()}@{self.domain}"


def normalise_domain(domain: str) -> str:
    value = domain.strip().rstrip(".").lower()
    if not value or len(value) > 253:
        raise AddressError(f"domain {domain!r} is empty or longer than 253 characters")
    labels = value.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise AddressError(f"domain {domain!r} is not a valid host name")
    return value


def parse(raw: str) -> Address:
    """Parse and normalise one address; raise :class:`AddressError` naming the fault."""
    value = raw.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise AddressError(f"address {raw!r} has no local part or no '@'")
    if len(local) > 64:
        raise AddressError(f"address {raw!r}: local part longer than 64 characters")
    if not _LOCAL_RE.match(local):
        raise AddressError(f"address {raw!r}: local part is not a plain dot-atom")
    return Address(local, normalise_domain(domain))


def parse_international(raw: str) -> Address:
    """An RFC 6531 address (UTF-8 local part, U-label domain) in the form it is compared in.

    The whole address is NFC-normalised (a client may send "é" as "e" + combining accent), the
    domain converted to A-labels (UTS 46, which also folds case), the local part kept as a
    dot-string. Controls, spaces, format characters and unpaired surrogates (undecodable
    bytes) are refused. ``Address.key`` then compares case-insensitively, as for ASCII.
    """
    value = raw.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    value = unicodedata.normalize("NFC", value)
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise AddressError(f"address {raw!r} has no local part or no '@'")
    if len(local.encode("utf-8", "surrogatepass")) > 64:
        raise AddressError(f"address {raw!r}: local part longer than 64 octets")
    if any(unicodedata.category(c)[0] in "CZ" for c in local if not c.isascii()):
        raise AddressError(f"address {raw!r}: control, space or invalid character in the local part")
    if _UTF8_LOCAL_RE.fullmatch(local) is None:
        raise AddressError(f"address {raw!r}: local part is not a dot-string")
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"address {raw!r}: domain is not a valid internationalised name") from exc
    return Address(local, normalise_domain(ascii_domain))


def key(raw: str) -> str:
    """Comparison key of an address (raises :class:`AddressError` if it is not one)."""
    return parse(raw).key


def patient_address(ins: str, domain: str = PATIENT_DOMAIN) -> Address:
    """The BAL of a patient: ``<INS matricule>@patient.mssante.fr`` (key checked)."""
    return Address(validate_nir(ins), normalise_domain(domain))
