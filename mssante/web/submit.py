"""What a patient sends from the web goes through the real submission path: an SMTP client
connects to this server's own submission listener over TLS on loopback and authenticates as the
patient, so the MSSanté policy and the patient rules decide exactly as for a mail client, and
the refusal (``550 5.7.1 …``) is what the page shows.

Authentication is OAUTHBEARER with a one-minute token signed by the web's own issuer (key in
``<data_dir>/web-idp/``, 0600), which this process adds to the tokens it trusts: the web
session, already opened with password and second factor, vouches for the patient.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from mssante.auth.identity import Identity, IdentityKind
from mssante.auth.testidp import LocalIdP
from mssante.config import IssuerSection

AUDIENCE = "mssante-web-submit"
NAME = "web-submit"


@dataclass(frozen=True)
class Sent:
    ok: bool
    reply: str  # the server's reply, e.g. "550 5.7.1 …"


class WebSubmitter:
    def __init__(self, runtime: Any) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.idp = LocalIdP(settings.data_dir / "web-idp", f"https://{settings.server.hostname}/web-submit")
        authenticator = runtime.authenticator
        if authenticator is not None:
            authenticator.tokens.trust(
                NAME,
                IssuerSection(
                    kind="patient",
                    issuer=self.idp.issuer(IdentityKind.PATIENT),
                    audience=[AUDIENCE],
                    jwks_file=self.idp.jwks_file,
                    algorithms=["ES256"],
                ),
            )

    @classmethod
    def of(cls, runtime: Any) -> WebSubmitter:
        found = runtime.extras.get("web-submit")
        if not isinstance(found, WebSubmitter):
            found = cls(runtime)
            runtime.extras["web-submit"] = found
        return found

    def _listener(self) -> tuple[str, int]:
        for item in getattr(self.runtime, "listeners", []):
            if item.name == "submissions":
                host = "127.0.0.1" if item.host in ("0.0.0.0", "::", "") else item.host
                return host, int(item.port)
        return "127.0.0.1", int(self.runtime.settings.smtp.submissions_port)

    def send(self, identity: Identity, message: EmailMessage) -> Sent:
        """Submit ``message`` as ``identity`` (blocking: call it from a worker thread)."""
        if identity.kind is not IdentityKind.PATIENT:
            return Sent(False, "seuls les patients envoient depuis cet espace")
        token = self.idp.token(identity.id, IdentityKind.PATIENT, ttl=60, audience=AUDIENCE)
        initial = f"n,,\x01auth=Bearer {token}\x01\x01"
        context = ssl.create_default_context(cafile=self.runtime.settings.tls.ca_file)
        context.check_hostname = False  # our own listener on loopback; the chain is still verified
        host, port = self._listener()
        try:
            with smtplib.SMTP_SSL(host, port, context=context, timeout=30) as smtp:
                smtp.ehlo("web.localhost")
                code, reply = smtp.auth(
                    "OAUTHBEARER", lambda challenge=None: initial if challenge is None else "\x01"
                )
                if code != 235:
                    return Sent(False, f"{code} {_text(reply)}")
                smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:
            return Sent(False, f"{exc.smtp_code} {_text(exc.smtp_error)}")
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return Sent(False, f"{code} {_text(text)}")
        except (OSError, smtplib.SMTPException) as exc:
            return Sent(False, f"451 le service d'envoi ne répond pas ({type(exc).__name__})")
        return Sent(True, "250")


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
