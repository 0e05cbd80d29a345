"""The user name a client is told to use for an address, and how it authenticates.

A login whose address is its own BAL (a doctor, a patient, a secretary's own login) types its
address. An ORG BAL (a service, a pharmacy), which nobody logs in to directly, is opened by its
members and delegates with Dovecot's master-user form ``<BAL>*<login>``
(``mssante.auth.sasl.split_delegate``): the client is given ``<BAL>*`` for the person to
complete with their own login. An application BAL authenticates with its client certificate.
Unknown addresses get the plain template, so the answer reveals no more than the annuaire does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from annuaire.lookup import Annuaire
from mssante.auth import accounts
from mssante.auth.identity import IdentityKind
from mssante.auth.sasl import DELEGATE_SEPARATOR

EMAILADDRESS = "%EMAILADDRESS%"  # Thunderbird's placeholder for the address the user typed


@dataclass(frozen=True)
class LoginHint:
    username: str  # may contain EMAILADDRESS
    certificate: bool = False  # SASL EXTERNAL with a client certificate, no password

    def for_address(self, address: str) -> str:
        return self.username.replace(EMAILADDRESS, address)


def login_hint(session: Session, annuaire: Annuaire, address: str | None) -> LoginHint:
    if not address:
        return LoginHint(EMAILADDRESS)
    account = accounts.get(session, address)
    if account is not None:
        return LoginHint(EMAILADDRESS, certificate=account.kind == IdentityKind.APPLICATION.value)
    bal = annuaire.bal(address)
    if bal is not None and bal.active and bal.type == "ORG":
        return LoginHint(EMAILADDRESS + DELEGATE_SEPARATOR)
    return LoginHint(EMAILADDRESS)
