"""Thunderbird's autoconfiguration document (``config-v1.1.xml``), also read by K-9/Thunderbird
for Android, Evolution and KMail: every IMAP and submission endpoint, preferred first.

Passwords travel as SASL PLAIN inside TLS (``password-cleartext`` in the format's words); an
application BAL authenticates with its client certificate (``TLS-client-cert``, SASL EXTERNAL).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mssante.clientconfig.endpoints import IMPLICIT, Endpoint, Endpoints
from mssante.clientconfig.username import LoginHint

SOCKET_TYPES = {IMPLICIT: "SSL", "starttls": "STARTTLS"}


def _server(parent: ET.Element, tag: str, kind: str, endpoint: Endpoint, hint: LoginHint) -> None:
    server = ET.SubElement(parent, tag, type=kind)
    ET.SubElement(server, "hostname").text = endpoint.host
    ET.SubElement(server, "port").text = str(endpoint.port)
    ET.SubElement(server, "socketType").text = SOCKET_TYPES[endpoint.tls]
    ET.SubElement(server, "authentication").text = (
        "TLS-client-cert" if hint.certificate else "password-cleartext"
    )
    ET.SubElement(server, "username").text = hint.username


def config_xml(endpoints: Endpoints, domain: str, domains: list[str], hint: LoginHint) -> bytes:
    """The document for addresses of ``domain`` (``domains``: every domain the operator hosts)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    for name in dict.fromkeys([domain, *domains]):
        ET.SubElement(provider, "domain").text = name
    ET.SubElement(provider, "displayName").text = f"MSSanté — {domain}"
    ET.SubElement(provider, "displayShortName").text = "MSSanté"
    for endpoint in endpoints.imap:
        _server(provider, "incomingServer", "imap", endpoint, hint)
    for endpoint in endpoints.smtp:
        _server(provider, "outgoingServer", "smtp", endpoint, hint)
    provider.append(
        ET.Comment(
            " Delegates (secretaries, members of an ORG BAL): user name <BAL address>*<your login>, "
            "with your own password. "
        )
    )
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
