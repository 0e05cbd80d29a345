"""SASL authorization identities (PLAIN authzid): a secretary logs in as herself and opens the
doctor's BAL as her primary mailbox when her rights allow it (``r`` on that BAL)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from mssante.auth.authenticator import authorize_self_only
from mssante.auth.identity import Identity
from mssante.policy import Policy


def sasl_authorizer(policy: Policy) -> Callable[[Session, Identity, str], bool]:
    """The ``authorize`` hook of :class:`mssante.auth.authenticator.Authenticator`."""

    def authorize(session: Session, identity: Identity, authzid: str) -> bool:
        if authorize_self_only(session, identity, authzid):
            return True
        return policy.mailbox(identity, authzid) is not None

    return authorize
