"""A CDA R2 document rendered as readable data for a template: never the document's own
stylesheet (no XSLT, no processing instruction honoured), never its markup — only text taken
from known elements, which the template escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

NS = "{urn:hl7-org:v3}"
MAX_TEXT = 200_000


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class RenderedCDA:
    title: str
    date: str
    patient: str
    authors: list[str]
    sections: list[Section]


def _text(node: Element | None) -> str:
    if node is None:
        return ""
    return " ".join("".join(node.itertext()).split())


def _name(node: Element | None) -> str:
    if node is None:
        return ""
    name = node.find(f"{NS}name")
    if name is None:
        return ""
    parts = [_text(p) for p in name if p.tag in (f"{NS}prefix", f"{NS}given", f"{NS}family")]
    return " ".join(p for p in parts if p) or _text(name)


def _date(value: str) -> str:
    digits = value[:8]
    if len(digits) == 8 and digits.isdigit():
        return f"{digits[6:8]}/{digits[4:6]}/{digits[0:4]}"
    return value


def _section(node: Element) -> Section:
    out = Section(_text(node.find(f"{NS}title")) or "Section")
    text = node.find(f"{NS}text")
    if text is not None:
        for child in text.iter():
            if child.tag in (f"{NS}paragraph", f"{NS}item", f"{NS}content") and child is not text:
                value = _text(child)
                if value and value not in out.paragraphs:
                    out.paragraphs.append(value)
            elif child.tag == f"{NS}tr":
                out.rows.append([_text(c) for c in child if c.tag in (f"{NS}td", f"{NS}th")])
        if not out.paragraphs and not out.rows and _text(text):
            out.paragraphs.append(_text(text))
    return out


def render(content: bytes) -> RenderedCDA | None:
    """The readable parts of a CDA, or None when it is not one we can read."""
    try:
        root = ElementTree.fromstring(content, forbid_dtd=True)
    except (DefusedXmlException, ElementTree.ParseError, ValueError):
        return None
    if root.tag != f"{NS}ClinicalDocument":
        return None
    time = root.find(f"{NS}effectiveTime")
    patient = root.find(f"{NS}recordTarget/{NS}patientRole/{NS}patient")
    authors = [_name(a.find(f"{NS}assignedAuthor/{NS}assignedPerson")) for a in root.findall(f"{NS}author")]
    sections = [_section(s) for s in root.iter(f"{NS}section")]
    body = root.find(f"{NS}component/{NS}nonXMLBody/{NS}text")
    if body is not None and body.get("representation") != "B64" and _text(body):
        sections.append(Section("Contenu", [_text(body)[:MAX_TEXT]]))
    return RenderedCDA(
        title=_text(root.find(f"{NS}title")) or "Document",
        date=_date(time.get("value", "")) if time is not None else "",
        patient=_name(patient),
        authors=[a for a in authors if a],
        sections=sections,
    )


INS_OIDS = ("1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11")


def patient_ins(content: bytes) -> str | None:
    """The INS a CDA's header names (recordTarget/patientRole/id under an INS OID), if any."""
    try:
        root = ElementTree.fromstring(content, forbid_dtd=True)
    except (DefusedXmlException, ElementTree.ParseError, ValueError):
        return None
    for node in root.findall(f"{NS}recordTarget/{NS}patientRole/{NS}id"):
        if node.get("root") in INS_OIDS and node.get("extension"):
            return str(node.get("extension"))
    return None
