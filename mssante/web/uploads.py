"""Uploaded files are hostile input: bounded in size, typed by their content (never by their
name or the browser's declared type), and refused with a French message otherwise.

Accepted: PDF, JPEG, PNG (a prescription, a scanned document) and CDA R2 XML (a DMP document),
the XML parsed without DTDs or entities (``defusedxml``).
"""

from __future__ import annotations

from dataclasses import dataclass

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException
from starlette.datastructures import UploadFile

CDA_NS = "urn:hl7-org:v3"
KINDS = {
    "pdf": ("application/pdf", "pdf"),
    "jpeg": ("image/jpeg", "jpg"),
    "png": ("image/png", "png"),
    "cda": ("text/xml", "xml"),
}


class UploadRefused(ValueError):
    """Why a file is refused, in French, for the page (``status``: the HTTP answer)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    kind: str  # pdf | jpeg | png | cda
    content: bytes
    filename: str

    @property
    def mime_type(self) -> str:
        return KINDS[self.kind][0]


def sniff(data: bytes) -> str | None:
    """The kind of a file by its first bytes (and, for XML, its root element)."""
    if data.startswith(b"%PDF-") and b"%%EOF" in data[-2048:]:
        return "pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\0\r\n").endswith(b"\xff\xd9"):
        return "jpeg"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        try:
            root = ElementTree.fromstring(data, forbid_dtd=True)
        except (DefusedXmlException, ElementTree.ParseError, ValueError):
            return None
        return "cda" if root.tag == f"{{{CDA_NS}}}ClinicalDocument" else None
    return None


async def read_upload(field: object, allowed: tuple[str, ...], limit: int) -> Upload:
    """The uploaded file of a form field, checked; :class:`UploadRefused` otherwise."""
    if not isinstance(field, UploadFile) or not field.filename:
        raise UploadRefused("Aucun fichier n'a été joint.")
    data = await field.read(limit + 1)
    if len(data) > limit:
        raise UploadRefused(
            f"Le fichier dépasse la taille autorisée ({limit // (1024 * 1024)} Mo au plus).", 413
        )
    if not data:
        raise UploadRefused("Le fichier est vide.")
    kind = sniff(data)
    names = {"pdf": "PDF", "jpeg": "JPEG", "png": "PNG", "cda": "CDA (XML)"}
    if kind is None or kind not in allowed:
        wanted = ", ".join(names[k] for k in allowed)
        raise UploadRefused(f"Ce fichier n'est pas d'un type accepté ({wanted}), d'après son contenu.")
    name = "".join(c for c in field.filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1] if c.isprintable())
    return Upload(kind, data, name[:120] or f"document.{KINDS[kind][1]}")
