"""Microsoft's "plain old XML" autodiscover (``POST /autodiscover/autodiscover.xml``), which
Outlook and several mobile clients ask before anything else.

The request names the address (``<EMailAddress>``); it is hostile input, parsed with defusedxml
(no DTD, no entities), with a size cap applied by the caller. The answer lists one IMAP and one
SMTP protocol, the preferred endpoint of each.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from mssante.clientconfig.endpoints import IMPLICIT, Endpoint, Endpoints

MAX_REQUEST_BYTES = 16 * 1024
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


class BadRequest(ValueError):
    """A request that is not an autodiscover request naming an address."""


def requested_address(body: bytes) -> str:
    """The ``EMailAddress`` of an autodiscover request (any namespace, as clients vary)."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest("request too large")
    try:
        root = fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadRequest(f"not an XML document: {exc}") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress" and element.text:
            address: str = element.text.strip()
            if address.count("@") == 1 and len(address) <= 320:
                return address
    raise BadRequest("no EMailAddress")


def _protocol(account: ET.Element, kind: str, endpoint: Endpoint, login: str) -> None:
    protocol = ET.SubElement(account, "Protocol")
    ET.SubElement(protocol, "Type").text = kind
    ET.SubElement(protocol, "Server").text = endpoint.host
    ET.SubElement(protocol, "Port").text = str(endpoint.port)
    ET.SubElement(protocol, "LoginName").text = login
    ET.SubElement(protocol, "DomainRequired").text = "off"
    ET.SubElement(protocol, "SPA").text = "off"
    # SSL "on" with Encryption SSL: TLS from the first byte; Encryption TLS: STARTTLS.
    ET.SubElement(protocol, "SSL").text = "on"
    ET.SubElement(protocol, "Encryption").text = "SSL" if endpoint.tls == IMPLICIT else "TLS"
    ET.SubElement(protocol, "AuthRequired").text = "on"
    if kind == "SMTP":
        ET.SubElement(protocol, "UsePOPAuth").text = "off"
        ET.SubElement(protocol, "SMTPLast").text = "off"


def response_xml(endpoints: Endpoints, login: str, display_name: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_NS)
    user = ET.SubElement(response, "User")
    ET.SubElement(user, "DisplayName").text = display_name
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    if endpoints.imap:
        _protocol(account, "IMAP", endpoints.imap[0], login)
    if endpoints.smtp:
        _protocol(account, "SMTP", endpoints.smtp[0], login)
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def error_xml(code: int, message: str) -> bytes:
    root = ET.Element("Autodiscover", xmlns=RESPONSE_NS)
    response = ET.SubElement(root, "Response")
    error = ET.SubElement(response, "Error", Id="0", Time="00:00:00")
    ET.SubElement(error, "ErrorCode").text = str(code)
    ET.SubElement(error, "Message").text = message
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
