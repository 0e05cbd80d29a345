"""An XDM package writer for the conformance corpus, deliberately independent of ``dmp.xdm``.

It writes text from templates (no ElementTree, no import from ``dmp``), the way a DPI vendor
would after reading IHE ITI TF-3 §4.2 (XDS metadata: ebRIM 3.0 ``SubmitObjectsRequest``,
DocumentEntry and SubmissionSet classifications and external identifiers, ``HasMember``,
``RPLC`` and ``UpdateAvailabilityStatus`` associations), ITI TF-2b §3.32 (XDM media layout:
``README.TXT``, ``INDEX.HTM``, ``IHE_XDM/SUBSET01/METADATA.XML`` and the documents) and the
CI-SIS conventions (patient CX with the ``NH`` type code, IdNat_PS authors under
1.2.250.1.71.4.2.1, ``authorInstitution`` with IdNat_Struct, INS and traits in the CDA header).

Every knob exists to write one variant of the corpus; defaults give a conforming package.
"""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

# IHE ITI TF-3 Table 4.2.5-1 (classification schemes and identification schemes).
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
STATUS = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
DE_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"

OID_INS_NIR = "1.2.250.1.213.1.4.8"
OID_INS_DEMO = "1.2.250.1.213.1.4.11"
OID_IDNAT_PS = "1.2.250.1.71.4.2.1"
OID_IDNAT_STRUCT = "1.2.250.1.71.4.2.2"
OID_LOINC = "2.16.840.1.113883.6.1"


def uid() -> str:
    """An OID-form unique id (2.25 + UUID as an integer, ISO/IEC 9834-8)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Patient:
    ins: str
    oid: str = OID_INS_DEMO
    birth_name: str | None = "DUPONT"
    first_given_name: str | None = "Marie"
    given_names: str | None = "Marie Anne"
    birth_date: str | None = "19800115"
    sex: str | None = "F"
    birthplace: str | None = "75056"
    local_ids: tuple[tuple[str, str], ...] = (("1.2.250.1.213.1.4.2.99", "IPP000123"),)
    with_ins: bool = True


@dataclass
class Author:
    idnat: str  # as written in authorPerson: 8 + RPPS, or a bare RPPS
    nom: str
    prenom: str
    specialty: str = "10"
    institution: str = "1750000019"  # IdNat_Struct: 1 + FINESS
    institution_name: str = "Centre hospitalier de Demo"


@dataclass
class Doc:
    type_code: str
    title: str
    author: Author
    kind: str = "CDA"  # CDA | PDF
    unique_id: str = field(default_factory=uid)
    entry_uuid: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    patient: Patient | None = None  # the CDA's recordTarget (None: the package's patient)
    replaces: str | None = None  # RPLC target: a uniqueId or an entryUUID
    pdf: bytes = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    corrupt_hash: bool = False
    content: bytes = b""  # filled by build()


@dataclass
class Package:
    patient: Patient
    docs: list[Doc]
    # How the metadata writes the patient: a CX template, "{ins}" and "{oid}" substituted.
    cx: str = "{ins}^^^&{oid}&ISO^NH"
    submission_set_patient: bool = True
    entry_patient: bool = True
    source_patient_info: bool = False
    ss_patient_override: str | None = None
    deletions: list[str] = field(default_factory=list)  # uniqueIds / entryUUIDs to deprecate


def cda(doc: Doc, patient: Patient) -> bytes:
    """A CDA R2 header following the CI-SIS conventions, with a minimal non-XML body."""
    p = patient
    ids = "".join(f"<id root={quoteattr(root)} extension={quoteattr(ext)}/>" for root, ext in p.local_ids)
    if p.with_ins:
        ids = f"<id root={quoteattr(p.oid)} extension={quoteattr(p.ins)}/>" + ids
    names = ""
    if p.given_names:
        names += f'<given qualifier="BR">{escape(p.given_names)}</given>'
    if p.first_given_name:
        names = f"<given>{escape(p.first_given_name)}</given>" + names
    if p.birth_name:
        names += f'<family qualifier="BR">{escape(p.birth_name)}</family>'
    names += '<family qualifier="SP">UTILISE</family><given qualifier="CL">Mimi</given>'
    sex = f'<administrativeGenderCode code="{p.sex}" codeSystem="2.16.840.1.113883.5.1"/>' if p.sex else ""
    born = f'<birthTime value="{p.birth_date}"/>' if p.birth_date else ""
    place = (
        f"<birthplace><place><addr><censusTract>{p.birthplace}</censusTract></addr></place></birthplace>"
        if p.birthplace
        else ""
    )
    a = doc.author
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <id root="{doc.unique_id}"/>
  <code code="{doc.type_code}" codeSystem="{OID_LOINC}" displayName={quoteattr(doc.title)}/>
  <title>{escape(doc.title)}</title>
  <effectiveTime value="20260101120000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <setId root="{doc.unique_id}.0"/>
  <versionNumber value="1"/>
  <recordTarget>
    <patientRole>
      {ids}
      <patient>
        <name>{names}</name>
        {sex}
        {born}
        {place}
      </patient>
    </patientRole>
  </recordTarget>
  <author>
    <time value="20260101120000+0100"/>
    <assignedAuthor>
      <id root="{OID_IDNAT_PS}" extension="{a.idnat}"/>
      <assignedPerson><name><family>{escape(a.nom)}</family><given>{escape(a.prenom)}</given></name></assignedPerson>
    </assignedAuthor>
  </author>
  <custodian><assignedCustodian><representedCustodianOrganization>
    <id root="{OID_IDNAT_STRUCT}" extension="{a.institution}"/>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <component><nonXMLBody>
    <text mediaType="text/plain">Compte rendu (corpus de conformité).</text>
  </nonXMLBody></component>
</ClinicalDocument>
""".encode()


def _slot(name: str, *values: str) -> str:
    inner = "".join(f"<rim:Value>{escape(v)}</rim:Value>" for v in values)
    return f'<rim:Slot name="{name}"><rim:ValueList>{inner}</rim:ValueList></rim:Slot>'


def _classification(ident: str, scheme: str, obj: str, node: str, coding: str | None, name: str = "") -> str:
    slot = _slot("codingScheme", coding) if coding else ""
    label = f"<rim:Name><rim:LocalizedString value={quoteattr(name)}/></rim:Name>" if name else ""
    return (
        f'<rim:Classification id="{ident}" classificationScheme="{scheme}" classifiedObject="{obj}" '
        f"nodeRepresentation={quoteattr(node)}>{slot}{label}</rim:Classification>"
    )


def _external(ident: str, scheme: str, obj: str, value: str, name: str) -> str:
    return (
        f'<rim:ExternalIdentifier id="{ident}" identificationScheme="{scheme}" registryObject="{obj}" '
        f'value={quoteattr(value)}><rim:Name><rim:LocalizedString value="{name}"/></rim:Name>'
        "</rim:ExternalIdentifier>"
    )


def _author(ident: str, scheme: str, obj: str, a: Author) -> str:
    return (
        f'<rim:Classification id="{ident}" classificationScheme="{scheme}" classifiedObject="{obj}" '
        'nodeRepresentation="">'
        + _slot("authorPerson", f"{a.idnat}^{a.nom}^{a.prenom}^^^^^^&{OID_IDNAT_PS}&ISO^D^^^IDNPS")
        + _slot(
            "authorInstitution", f"{a.institution_name}^^^^^&{OID_IDNAT_STRUCT}&ISO^IDNST^^^{a.institution}"
        )
        + _slot("authorSpecialty", f"{a.specialty}^Médecin^1.2.250.1.71.1.2.7")
        + "</rim:Classification>"
    )


def metadata(pkg: Package, names: list[str]) -> bytes:
    p = pkg.patient
    cx = pkg.cx.format(ins=p.ins, oid=p.oid)
    objects: list[str] = []
    for doc, name in zip(pkg.docs, names, strict=True):
        e = doc.entry_uuid
        mime = "text/xml" if doc.kind == "CDA" else "application/pdf"
        fmt = "urn:asip:ci-sis:2010" if doc.kind == "CDA" else "urn:ihe:iti:xds-sd:pdf:2008"
        digest = hashlib.sha1(doc.content, usedforsecurity=False).hexdigest()
        if doc.corrupt_hash:
            digest = "0" * 40
        slots = [
            _slot("creationTime", "20260101110000"),
            _slot("hash", digest),
            _slot("languageCode", "fr-FR"),
            _slot("size", str(len(doc.content))),
            _slot("sourcePatientId", cx),
            _slot("URI", name),
        ]
        if pkg.source_patient_info:
            slots.append(
                _slot(
                    "sourcePatientInfo",
                    f"PID-3|{cx}",
                    f"PID-5|{p.birth_name}^{p.first_given_name}^^^^^L",
                    f"PID-7|{p.birth_date}",
                    f"PID-8|{p.sex}",
                )
            )
        parts = [
            f'<rim:ExtrinsicObject id="{e}" mimeType="{mime}" objectType="{DE_OBJECT_TYPE}">',
            *slots,
            f"<rim:Name><rim:LocalizedString value={quoteattr(doc.title)}/></rim:Name>",
            _author(f"{e}-a", DE_AUTHOR, e, doc.author),
            _classification(f"{e}-c", DE_CLASS, e, "10", "1.2.250.1.213.1.1.4.1", "Compte rendu"),
            _classification(f"{e}-n", DE_CONFIDENTIALITY, e, "N", "2.16.840.1.113883.5.25", "Normal"),
            _classification(f"{e}-f", DE_FORMAT, e, fmt, "1.2.250.1.213.1.1.4.2.282"),
            _classification(f"{e}-h", DE_FACILITY, e, "SA01", "1.2.250.1.71.4.2.4", "Etablissement public"),
            _classification(f"{e}-p", DE_PRACTICE, e, "ETABLISSEMENT", "1.2.250.1.213.1.1.4.9"),
            _classification(f"{e}-t", DE_TYPE, e, doc.type_code, "2.16.840.1.113883.6.1", doc.title),
        ]
        if pkg.entry_patient:
            parts.append(_external(f"{e}-pid", DE_PATIENT_ID, e, cx, "XDSDocumentEntry.patientId"))
        parts.append(_external(f"{e}-uid", DE_UNIQUE_ID, e, doc.unique_id, "XDSDocumentEntry.uniqueId"))
        parts.append("</rim:ExtrinsicObject>")
        objects.append("".join(parts))
    ss = "urn:uuid:" + str(uuid.uuid4())
    ss_parts = [
        f'<rim:RegistryPackage id="{ss}">',
        _slot("submissionTime", "20260101120000"),
        '<rim:Name><rim:LocalizedString value="XDM/1.0/DDM"/></rim:Name>',
        _author(f"{ss}-a", SS_AUTHOR, ss, pkg.docs[0].author),
        _classification(f"{ss}-ct", SS_CONTENT_TYPE, ss, "04", "1.2.250.1.213.1.1.4.12", "Hospitalisation"),
        _external(f"{ss}-uid", SS_UNIQUE_ID, ss, uid(), "XDSSubmissionSet.uniqueId"),
        _external(f"{ss}-src", SS_SOURCE_ID, ss, "1.2.250.1.999.1", "XDSSubmissionSet.sourceId"),
    ]
    if pkg.submission_set_patient:
        value = pkg.ss_patient_override.format(oid=p.oid) if pkg.ss_patient_override else cx
        ss_parts.append(_external(f"{ss}-pid", SS_PATIENT_ID, ss, value, "XDSSubmissionSet.patientId"))
    ss_parts.append("</rim:RegistryPackage>")
    objects.append("".join(ss_parts))
    objects.append(
        f'<rim:Classification id="{ss}-node" classifiedObject="{ss}" classificationNode="{SS_NODE}"/>'
    )
    for n, doc in enumerate(pkg.docs):
        objects.append(
            f'<rim:Association id="as{n}" associationType="{HAS_MEMBER}" '
            f'sourceObject="{ss}" targetObject="{doc.entry_uuid}">{_slot("SubmissionSetStatus", "Original")}'
            "</rim:Association>"
        )
        if doc.replaces:
            objects.append(
                f'<rim:Association id="rp{n}" associationType="{RPLC}" '
                f'sourceObject="{doc.entry_uuid}" targetObject="{doc.replaces}"/>'
            )
    for n, target in enumerate(pkg.deletions):
        objects.append(
            f'<rim:Association id="up{n}" associationType="{UPDATE_STATUS}" '
            f'sourceObject="{ss}" targetObject="{target}">'
            + _slot("OriginalStatus", f"{STATUS}Approved")
            + _slot("NewStatus", f"{STATUS}Deprecated")
            + "</rim:Association>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" '
        'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0">\n<rim:RegistryObjectList>\n'
        + "\n".join(objects)
        + "\n</rim:RegistryObjectList>\n</lcm:SubmitObjectsRequest>\n"
    ).encode()


def build(pkg: Package) -> bytes:
    """The bytes of IHE_XDM.zip (ITI TF-2b §3.32.4.1.4: one submission set in SUBSET01)."""
    names = []
    for n, doc in enumerate(pkg.docs, start=1):
        if doc.kind == "CDA":
            doc.content = cda(doc, doc.patient or pkg.patient)
            names.append(f"DOC{n:04d}.XML")
        else:
            doc.content = doc.pdf
            names.append(f"DOC{n:04d}.PDF")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("README.TXT", "Paquet IHE XDM - corpus de conformite (ITI TF-2b 3.32)\r\n")
        links = "".join(f'<li><a href="IHE_XDM/SUBSET01/{n}">{n}</a></li>' for n in names)
        z.writestr("INDEX.HTM", f"<html><body><ul>{links}</ul></body></html>")
        z.writestr("IHE_XDM/SUBSET01/METADATA.XML", metadata(pkg, names))
        for doc, name in zip(pkg.docs, names, strict=True):
            z.writestr(f"IHE_XDM/SUBSET01/{name}", doc.content)
    return out.getvalue()
