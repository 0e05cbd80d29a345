"""IHE XDM packages: the values they carry and a builder.

A package (``IHE_XDM.ZIP``, IHE ITI TF-2b §3.32) holds ``README.TXT`` and ``INDEX.HTM`` at the
root and, per submission set, ``IHE_XDM/SUBSETnn/METADATA.XML`` — an ebRIM 3.0
``SubmitObjectsRequest`` — beside the documents it describes (``DOC0001.XML``, ``DOC0002.PDF``).

The builder is used by the tests, the demo and the ``send-xdm`` command, and is meant for DPI
integrators too; the reader (``dmp.xdm_reader``) treats every package as hostile.

Choices where the guides leave room (documented for integrators):
* ``hash`` is the SHA-1 of the document as XDS requires; the reader also accepts a SHA-256;
* the patient is ``<INS>^^^&<INS OID>&ISO^NH`` (INS-NIR, INS-NIA, test or demo OID); the INS
  and its traits must also be in each CDA's ``recordTarget`` (the receiver reads them there);
* the author is ``authorPerson`` = ``<IdNat_PS>^<NOM>^<Prénom>^^^^^^&1.2.250.1.71.4.2.1&ISO``,
  ``authorSpecialty`` = ``<TRE_G15 code>^<libellé>^1.2.250.1.71.1.2.7`` and
  ``authorInstitution`` = ``<raison sociale>^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^<id>``;
* visibility codes are ``confidentialityCode`` classifications in TRE_A07
  (1.2.250.1.213.1.1.4.13), beside the normal code ``N``;
* ``classCode`` carries the DMP space of ``config/dmp/spaces.csv`` (the product's own table);
* a replacement is an ``RPLC`` association whose target is the replaced document's uniqueId.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from xml.etree import ElementTree as ET

from dmp.models import OID_INS_NIR

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"

DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
STATUS_DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"

OID_IDNAT_PS = "1.2.250.1.71.4.2.1"
OID_IDNAT_STRUCT = "1.2.250.1.71.4.2.2"
OID_PROFESSIONS = "1.2.250.1.71.1.2.7"
OID_TYPE_CODES = "1.2.250.1.213.1.1.5.471"
OID_VISIBILITY = "1.2.250.1.213.1.1.4.13"
OID_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
OID_SPACES = "1.2.250.1.213.1.1.4.0.mssante-spaces"  # the product's own table (assumption)
FORMAT_CODES = {
    "CDA_R2": "urn:asip:ci-sis:2010",
    "PDF": "urn:ihe:iti:xds-sd:pdf:2008",
    "OTHER": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
}
EXTENSIONS = {"CDA_R2": "XML", "PDF": "PDF", "OTHER": "BIN"}
ZIP_NAME = "IHE_XDM.ZIP"


@dataclass(frozen=True)
class XdmPatient:
    ins: str
    ins_oid: str = OID_INS_NIR
    birth_name: str = ""
    first_given_name: str = ""
    given_names: str = ""
    birth_date: date | None = None
    sex: str = ""
    birthplace: str | None = None


@dataclass(frozen=True)
class XdmAuthor:
    idnat: str
    profession: str | None = None
    profession_label: str = ""
    nom: str = ""
    prenom: str = ""
    structure: str | None = None
    structure_name: str = ""


@dataclass(frozen=True)
class XdmDocument:
    content: bytes
    type_code: str
    title: str
    author: XdmAuthor
    format: str = "CDA_R2"
    mime_type: str = "text/xml"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    unique_id: str = ""
    flags: frozenset[str] = frozenset()
    space: str | None = None
    replaces: str | None = None
    # Set by the reader: the path of the file inside the package, the CDA's own code
    # (``ClinicalDocument/code``) and the entryUUID the sender gave the entry.
    path: str = ""
    cda_code: str = ""
    entry_uuid: str = ""


@dataclass(frozen=True)
class XdmPackage:
    patient: XdmPatient
    documents: tuple[XdmDocument, ...]
    submission_id: str = ""
    submitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source_id: str = "1.2.250.1.213.1.4.2.mssante"
    # Set by the reader: the INS identity of each CDA (or of the metadata), and the uniqueIds
    # (or entryUUIDs) of documents the package asks to delete.
    identities: tuple[XdmPatient, ...] = ()
    deletions: tuple[str, ...] = ()


def hl7_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def patient_id(patient: XdmPatient) -> str:
    """CX with the CI-SIS identifier type code ``NH`` after the assigning authority."""
    return f"{patient.ins}^^^&{patient.ins_oid}&ISO^NH"


def _slot(parent: ET.Element, name: str, *values: str) -> None:
    slot = ET.SubElement(parent, f"{{{RIM}}}Slot", name=name)
    value_list = ET.SubElement(slot, f"{{{RIM}}}ValueList")
    for value in values:
        ET.SubElement(value_list, f"{{{RIM}}}Value").text = value


def _name(parent: ET.Element, text: str) -> None:
    ET.SubElement(ET.SubElement(parent, f"{{{RIM}}}Name"), f"{{{RIM}}}LocalizedString", value=text)


def _classification(
    parent: ET.Element,
    ident: str,
    scheme: str,
    node: str,
    coding_scheme: str | None,
    display: str | None = None,
) -> ET.Element:
    c = ET.SubElement(
        parent,
        f"{{{RIM}}}Classification",
        id=ident,
        classificationScheme=scheme,
        classifiedObject=parent.get("id", ""),
        nodeRepresentation=node,
        objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification",
    )
    if coding_scheme is not None:
        _slot(c, "codingScheme", coding_scheme)
    if display is not None:
        _name(c, display)
    return c


def _external_id(parent: ET.Element, ident: str, scheme: str, value: str, name: str) -> None:
    e = ET.SubElement(
        parent,
        f"{{{RIM}}}ExternalIdentifier",
        id=ident,
        identificationScheme=scheme,
        registryObject=parent.get("id", ""),
        value=value,
        objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier",
    )
    _name(e, name)


def _author(parent: ET.Element, ident: str, scheme: str, author: XdmAuthor) -> None:
    c = _classification(parent, ident, scheme, "", None)
    _slot(c, "authorPerson", f"{author.idnat}^{author.nom}^{author.prenom}^^^^^^&{OID_IDNAT_PS}&ISO")
    if author.profession:
        _slot(c, "authorSpecialty", f"{author.profession}^{author.profession_label}^{OID_PROFESSIONS}")
    if author.structure:
        _slot(
            c,
            "authorInstitution",
            f"{author.structure_name}^^^^^&{OID_IDNAT_STRUCT}&ISO^IDNST^^^{author.structure}",
        )


def document_file_name(index: int, fmt: str) -> str:
    return f"DOC{index:04d}.{EXTENSIONS.get(fmt, 'BIN')}"


def metadata_xml(package: XdmPackage, file_names: list[str]) -> bytes:
    """The ``SubmitObjectsRequest`` describing ``package`` (documents at ``file_names``)."""
    ET.register_namespace("rim", RIM)
    ET.register_namespace("lcm", LCM)
    root = ET.Element(f"{{{LCM}}}SubmitObjectsRequest")
    objects = ET.SubElement(root, f"{{{RIM}}}RegistryObjectList")
    pid = patient_id(package.patient)
    p = package.patient
    info = [f"PID-3|{pid}", f"PID-5|{p.birth_name}^{p.first_given_name}^{p.given_names}^^^^L"]
    if p.birth_date:
        info.append(f"PID-7|{p.birth_date:%Y%m%d}")
    if p.sex:
        info.append(f"PID-8|{p.sex}")
    if p.birthplace:
        info.append(f"PID-11|^^^^^^BDL^^{p.birthplace}")
    doc_ids = []
    for n, (doc, file_name) in enumerate(zip(package.documents, file_names, strict=True), start=1):
        ident = f"Document{n:02d}"
        doc_ids.append(ident)
        eo = ET.SubElement(
            objects, f"{{{RIM}}}ExtrinsicObject", id=ident, mimeType=doc.mime_type, objectType=DOCUMENT_ENTRY
        )
        _slot(eo, "creationTime", hl7_time(doc.created_at))
        _slot(eo, "hash", hashlib.sha1(doc.content, usedforsecurity=False).hexdigest())
        _slot(eo, "size", str(len(doc.content)))
        _slot(eo, "URI", file_name)
        _slot(eo, "languageCode", "fr-FR")
        _slot(eo, "sourcePatientId", pid)
        _slot(eo, "sourcePatientInfo", *info)
        _name(eo, doc.title)
        _author(eo, f"{ident}-author", DE_AUTHOR, doc.author)
        if doc.space:
            _classification(eo, f"{ident}-class", DE_CLASS, doc.space, OID_SPACES)
        _classification(eo, f"{ident}-conf", DE_CONFIDENTIALITY, "N", OID_CONFIDENTIALITY, "Normal")
        for k, flag in enumerate(sorted(doc.flags)):
            _classification(eo, f"{ident}-vis{k}", DE_CONFIDENTIALITY, flag, OID_VISIBILITY, flag)
        _classification(
            eo,
            f"{ident}-format",
            DE_FORMAT,
            FORMAT_CODES.get(doc.format, FORMAT_CODES["OTHER"]),
            "1.2.250.1.213.1.1.4.2.282",
        )
        _classification(eo, f"{ident}-type", DE_TYPE, doc.type_code, OID_TYPE_CODES)
        _external_id(eo, f"{ident}-pid", DE_PATIENT_ID, pid, "XDSDocumentEntry.patientId")
        _external_id(eo, f"{ident}-uid", DE_UNIQUE_ID, doc.unique_id, "XDSDocumentEntry.uniqueId")
    ss = ET.SubElement(objects, f"{{{RIM}}}RegistryPackage", id="SubmissionSet01")
    _slot(ss, "submissionTime", hl7_time(package.submitted_at))
    _name(ss, "XDM/1.0/DDM")
    if package.documents:
        _author(ss, "SubmissionSet01-author", SS_AUTHOR, package.documents[0].author)
    _classification(ss, "SubmissionSet01-ctc", SS_CONTENT_TYPE, "04", "1.2.250.1.213.1.1.4.12")
    _external_id(ss, "SubmissionSet01-uid", SS_UNIQUE_ID, package.submission_id, "XDSSubmissionSet.uniqueId")
    _external_id(ss, "SubmissionSet01-src", SS_SOURCE_ID, package.source_id, "XDSSubmissionSet.sourceId")
    _external_id(ss, "SubmissionSet01-pid", SS_PATIENT_ID, pid, "XDSSubmissionSet.patientId")
    ET.SubElement(objects, f"{{{RIM}}}Classification", id="SubmissionSet01-node",
                  classifiedObject="SubmissionSet01", classificationNode=SUBMISSION_SET)  # fmt: skip
    for n, (ident, doc) in enumerate(zip(doc_ids, package.documents, strict=True), start=1):
        a = ET.SubElement(objects, f"{{{RIM}}}Association", id=f"as{n:02d}", associationType=HAS_MEMBER,
                          sourceObject="SubmissionSet01", targetObject=ident)  # fmt: skip
        _slot(a, "SubmissionSetStatus", "Original")
        if doc.replaces:
            ET.SubElement(objects, f"{{{RIM}}}Association", id=f"rplc{n:02d}", associationType=RPLC,
                          sourceObject=ident, targetObject=doc.replaces)  # fmt: skip
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def _index_htm(package: XdmPackage, file_names: list[str]) -> bytes:
    items = "".join(
        f'<li><a href="IHE_XDM/SUBSET01/{name}">{_html(doc.title)}</a></li>'
        for doc, name in zip(package.documents, file_names, strict=True)
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>XDM</title></head><body>"
        f"<h1>Documents</h1><ul>{items}</ul>"
        '<p><a href="IHE_XDM/SUBSET01/METADATA.XML">METADATA.XML</a></p></body></html>'
    ).encode()


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


README = (
    "IHE XDM package (ITI TF-2b 3.32) made by mssante.\r\n"
    "Contents: INDEX.HTM, IHE_XDM/SUBSET01/METADATA.XML and the documents beside it.\r\n"
)


def build(package: XdmPackage) -> bytes:
    """The bytes of ``IHE_XDM.ZIP`` for ``package`` (one submission set, SUBSET01)."""
    names = [document_file_name(n, d.format) for n, d in enumerate(package.documents, start=1)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("README.TXT", README)
        z.writestr("INDEX.HTM", _index_htm(package, names))
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata_xml(package, names))
        for doc, name in zip(package.documents, names, strict=True):
            z.writestr(f"IHE_XDM/SUBSET01/{name}", doc.content)
    return out.getvalue()
