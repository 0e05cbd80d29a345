"""The production :class:`~mssante.imap.gate.Gate`: SASL through ``mssante.auth``.

The authentication module checks credentials, applies the brute-force limits and audits every
attempt; it answers with an :class:`~mssante.auth.identity.Identity`. Which BAL that identity
opens is a policy question (the BAL named as SASL authorization identity — PLAIN's authzid or
the ``<BAL>*<login>`` user name —, else its login's BAL, else its single delegated BAL), so it is
asked of ``resolve_bal``, supplied by whoever wires the server; IMAP itself decides nothing
about access.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mssante.auth.authenticator import AuthChallenge, Authenticator, AuthFailure, AuthSuccess
from mssante.auth.identity import Identity
from mssante.imap.gate import Principal, Refusal, Respond
from mssante.tls import TLSInfo

# (identity, requested authorization identity or None) → the BAL to open, or None to refuse.
ResolveBal = Callable[[Identity, str | None], Awaitable[str | None]]


class AuthenticatorGate:
    def __init__(
        self,
        authenticator: Authenticator,
        resolve_bal: ResolveBal,
        *,
        listener: str = "imap",
        without_bal: Callable[[Identity], bool] = lambda _identity: False,
    ) -> None:
        self.authenticator = authenticator
        self.resolve_bal = resolve_bal
        self.listener = listener
        # Identities that may log in with no BAL of their own (staff: only shared BALs).
        self.without_bal = without_bal

    def mechanisms(self, *, tls: TLSInfo) -> list[str]:
        return self.authenticator.mechanisms(tls)

    async def authenticate(
        self, mechanism: str, initial: str | None, respond: Respond, *, tls: TLSInfo, peer: str
    ) -> Principal | Refusal:
        host = peer.rsplit(":", 1)[0]
        exchange = self.authenticator.begin(mechanism, tls=tls, client_ip=host, listener=self.listener)
        result = await exchange.start(initial)
        while isinstance(result, AuthChallenge):
            result = await exchange.step(await respond(result.challenge))
        if isinstance(result, AuthFailure):
            status, code, text = result.imap_reply
            return Refusal(text, code, status=status, delay=result.delay)
        assert isinstance(result, AuthSuccess)
        bal = await self.resolve_bal(result.identity, result.authzid)
        if bal is None and (result.authzid or not self.without_bal(result.identity)):
            return Refusal("No mailbox for this identity", "AUTHORIZATIONFAILED")
        return Principal(actor=result.identity.principal, bal=bal, identity=result.identity)
