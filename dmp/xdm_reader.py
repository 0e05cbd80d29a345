"""Reading an XDM package that arrived by message: hostile input until proven otherwise.

Before anything is decompressed the central directory is checked: number of entries, names
(no absolute path, no ``..``, no backslash or drive letter, no duplicate), no symbolic link,
no encryption, declared sizes within the per-file and total bounds and a bounded compression
ratio (zip bombs). Decompression then counts the bytes really produced, since a declared size
may lie. XML is parsed with defusedxml with DTDs, entities and external references refused
(XXE, billion laughs). Each document's size and hash are checked against METADATA.XML.

Every failure is an :class:`XdmError` carrying the ANS integration code: 903 when no usable
INS is in the package, 904 when the CDA names another patient than the metadata, 905 when
INS traits are incomplete, 906 for everything else.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from dmp.models import INS_OIDS
from dmp.xdm import (
    DE_AUTHOR,
    DE_CLASS,
    DE_CONFIDENTIALITY,
    DE_PATIENT_ID,
    DE_TYPE,
    DE_UNIQUE_ID,
    FORMAT_CODES,
    OID_VISIBILITY,
    RIM,
    RPLC,
    SS_UNIQUE_ID,
    XdmAuthor,
    XdmDocument,
    XdmPackage,
    XdmPatient,
)
from mssante.auth.identity import InvalidIdentity, check_ins
from mssante.config import DMPSection

E_NO_INS, E_INS_MISMATCH, E_TRAITS, E_OTHER = 903, 904, 905, 906
HL7 = "urn:hl7-org:v3"
_METADATA = re.compile(r"^IHE_XDM/(SUBSET\d{2,})/METADATA\.XML$")
_READ_BLOCK = 64 * 1024
# Small members (README, METADATA) compress very well; the ratio bound applies above this.
_RATIO_FLOOR = 256 * 1024


class XdmError(Exception):
    def __init__(self, message: str, code: int = E_OTHER) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    max_package_bytes: int
    max_file_bytes: int
    max_files: int
    max_ratio: int

    @classmethod
    def of(cls, section: DMPSection) -> Limits:
        return cls(section.max_package_bytes, section.max_file_bytes, section.max_files, section.max_ratio)


def _check_name(name: str) -> None:
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise XdmError(f"package member {name!r} has an unsafe path")
    parts = name.rstrip("/").split("/")
    if any(part in ("..", "") for part in parts[:-1]) or parts[-1] == "..":
        raise XdmError(f"package member {name!r} has an unsafe path (path traversal)")


def _members(archive: zipfile.ZipFile, limits: Limits) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise XdmError(f"package has {len(infos)} members, more than {limits.max_files}")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        _check_name(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise XdmError(f"package member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise XdmError(f"package member {info.filename!r} is encrypted")
        if info.filename in members:
            raise XdmError(f"package member {info.filename!r} appears twice")
        if info.file_size > limits.max_file_bytes:
            raise XdmError(f"package member {info.filename!r} is larger than {limits.max_file_bytes} bytes")
        if info.file_size > _RATIO_FLOOR and info.file_size > info.compress_size * limits.max_ratio:
            raise XdmError(
                f"package member {info.filename!r} has a compression ratio above {limits.max_ratio}"
            )
        total += info.file_size
        if total > limits.max_package_bytes:
            raise XdmError(f"package expands to more than {limits.max_package_bytes} bytes")
        if not info.is_dir():
            members[info.filename] = info
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    """Decompress one member, stopping as soon as it produces more than it declared."""
    bound = min(info.file_size, limits.max_file_bytes)
    out = bytearray()
    try:
        with archive.open(info) as stream:
            while block := stream.read(_READ_BLOCK):
                out += block
                if len(out) > bound:
                    raise XdmError(f"package member {info.filename!r} expands beyond its declared size")
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise XdmError(f"package member {info.filename!r} cannot be read: {exc}") from None
    return bytes(out)


def parse_xml(data: bytes, what: str) -> Element:
    try:
        root: Element = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise XdmError(
            f"{what}: DTDs, entities and external references are refused ({type(exc).__name__})"
        ) from None
    except ParseError as exc:
        raise XdmError(f"{what} is not well-formed XML: {exc}") from None
    return root


def _q(tag: str) -> str:
    return f"{{{RIM}}}{tag}"


def _slots(element: Element) -> dict[str, list[str]]:
    return {
        slot.get("name", ""): [v.text or "" for v in slot.iter(_q("Value"))]
        for slot in element.findall(_q("Slot"))
    }


def _first(values: dict[str, list[str]], name: str) -> str:
    found = values.get(name) or [""]
    return found[0].strip()


def _classifications(element: Element, scheme: str) -> list[Element]:
    return [c for c in element.findall(_q("Classification")) if c.get("classificationScheme") == scheme]


def _external(element: Element, scheme: str) -> str:
    for e in element.findall(_q("ExternalIdentifier")):
        if e.get("identificationScheme") == scheme:
            return (e.get("value") or "").strip()
    return ""


def _patient_ref(value: str) -> tuple[str, str]:
    """``INS^^^&OID&ISO`` → (INS, OID); 903 when it is not an INS."""
    match = re.fullmatch(r"([0-9AB]{15})\^\^\^&([0-9.]+)&ISO", value.strip())
    if not match:
        raise XdmError(f"patient identifier {value!r} is not an INS (INS^^^&OID&ISO)", E_NO_INS)
    ins, oid = match.groups()
    if oid not in INS_OIDS:
        raise XdmError(f"patient identifier OID {oid} is not an INS OID", E_NO_INS)
    try:
        return check_ins(ins), oid
    except InvalidIdentity as exc:
        raise XdmError(str(exc), E_NO_INS) from None


def _patient(ins: str, oid: str, info: Iterable[str]) -> XdmPatient:
    fields = {}
    for line in info:
        key, _, value = line.partition("|")
        fields[key.strip()] = value.strip()
    names = fields.get("PID-5", "").split("^")
    names += [""] * (3 - len(names))
    born: date | None = None
    raw = fields.get("PID-7", "")
    if raw:
        try:
            born = datetime.strptime(raw[:8], "%Y%m%d").date()
        except ValueError:
            raise XdmError(f"birth date {raw!r} is not YYYYMMDD", E_TRAITS) from None
    birthplace = fields.get("PID-11", "").split("^")[-1] or None
    patient = XdmPatient(
        ins, oid, names[0], names[1], names[2] or names[1], born, fields.get("PID-8", ""), birthplace
    )
    missing = [
        n for n, v in (("birth name", patient.birth_name), ("given name", patient.first_given_name),
                       ("birth date", born), ("sex", patient.sex)) if not v
    ]  # fmt: skip
    if missing:
        raise XdmError(f"incomplete INS traits in sourcePatientInfo: {', '.join(missing)}", E_TRAITS)
    return patient


def _author(element: Element) -> XdmAuthor:
    found = _classifications(element, DE_AUTHOR)
    if not found:
        raise XdmError("a document has no author")
    slots = _slots(found[0])
    person = _first(slots, "authorPerson").split("^")
    idnat = person[0].strip()
    if not idnat:
        raise XdmError("the author has no IdNat_PS (authorPerson)")
    specialty = _first(slots, "authorSpecialty").split("^")
    institution = _first(slots, "authorInstitution").split("^")
    return XdmAuthor(
        idnat=idnat,
        profession=specialty[0] or None,
        profession_label=specialty[1] if len(specialty) > 1 else "",
        nom=person[1] if len(person) > 1 else "",
        prenom=person[2] if len(person) > 2 else "",
        structure=institution[-1] if len(institution) >= 10 and institution[-1] else None,
        structure_name=institution[0],
    )


def _format(mime: str, element: Element) -> str:
    codes = {c.get("nodeRepresentation") for c in element.findall(_q("Classification"))}
    for name, code in FORMAT_CODES.items():
        if code in codes:
            return name
    return (
        "PDF"
        if mime == "application/pdf"
        else "CDA_R2"
        if mime in ("text/xml", "application/xml")
        else "OTHER"
    )


def cda_patient_ins(content: bytes) -> str | None:
    """The INS of a CDA's ``recordTarget`` (``patientRole/id`` with an INS OID root), if any."""
    root = parse_xml(content, "CDA document")
    for ident in root.iterfind(f"{{{HL7}}}recordTarget/{{{HL7}}}patientRole/{{{HL7}}}id"):
        if ident.get("root") in INS_OIDS and ident.get("extension"):
            return (ident.get("extension") or "").strip().upper()
    return None


def _document(element: Element, subset: str, files: dict[str, bytes], patient: XdmPatient) -> XdmDocument:
    slots = _slots(element)
    uri = _first(slots, "URI")
    _check_name(uri)
    path = posixpath.normpath(f"IHE_XDM/{subset}/{uri}")
    if not path.startswith(f"IHE_XDM/{subset}/") or path not in files:
        raise XdmError(f"document {uri!r} named by METADATA.XML is not in the package")
    content = files[path]
    size = _first(slots, "size")
    if size and size != str(len(content)):
        raise XdmError(f"size of {uri} is {len(content)} bytes, METADATA.XML says {size}")
    declared = _first(slots, "hash").lower()
    digest = {
        40: hashlib.sha1(content, usedforsecurity=False).hexdigest(),
        64: hashlib.sha256(content).hexdigest(),
    }
    if declared not in (digest[40], digest[64]):
        raise XdmError(f"hash of {uri} does not match METADATA.XML")
    doc_pid = _external(element, DE_PATIENT_ID)
    if not doc_pid:
        raise XdmError(f"document {uri} carries no patient identifier", E_NO_INS)
    ins, _oid = _patient_ref(doc_pid)
    if ins != patient.ins:
        raise XdmError(f"document {uri} names patient {ins}, the package {patient.ins}", E_INS_MISMATCH)
    types = _classifications(element, DE_TYPE)
    type_code = (types[0].get("nodeRepresentation") or "").strip() if types else ""
    if not type_code:
        raise XdmError(f"document {uri} has no type code")
    mime = element.get("mimeType", "application/octet-stream")
    fmt = _format(mime, element)
    if fmt == "CDA_R2":
        in_cda = cda_patient_ins(content)
        if in_cda is None:
            raise XdmError(f"the CDA {uri} carries no INS in recordTarget", E_NO_INS)
        if in_cda != patient.ins:
            raise XdmError(f"the CDA {uri} names INS {in_cda}, METADATA.XML {patient.ins}", E_INS_MISMATCH)
    flags = frozenset(
        (c.get("nodeRepresentation") or "")
        for c in _classifications(element, DE_CONFIDENTIALITY)
        if _first(_slots(c), "codingScheme") == OID_VISIBILITY
    )
    created = _first(slots, "creationTime")
    try:
        created_at = datetime.strptime(created[:14].ljust(14, "0"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise XdmError(f"creationTime {created!r} of {uri} is not an HL7 time") from None
    names = element.find(_q("Name"))
    title_el = names.find(_q("LocalizedString")) if names is not None else None
    classes = _classifications(element, DE_CLASS)
    return XdmDocument(
        content=content,
        type_code=type_code,
        title=(title_el.get("value") if title_el is not None else None) or type_code,
        author=_author(element),
        format=fmt,
        mime_type=mime,
        created_at=created_at,
        unique_id=_external(element, DE_UNIQUE_ID),
        flags=flags,
        space=classes[0].get("nodeRepresentation") if classes else None,
        path=path,
    )


def _submission(subset: str, metadata: bytes, files: dict[str, bytes]) -> XdmPackage:
    root = parse_xml(metadata, f"IHE_XDM/{subset}/METADATA.XML")
    if root.tag != "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest":
        raise XdmError("METADATA.XML is not an ebRIM 3.0 SubmitObjectsRequest")
    objects = root.find(_q("RegistryObjectList"))
    entries = objects.findall(_q("ExtrinsicObject")) if objects is not None else []
    if objects is None or not entries:
        raise XdmError("METADATA.XML describes no document")
    first = _slots(entries[0])
    pid = _external(entries[0], DE_PATIENT_ID) or _first(first, "sourcePatientId")
    if not pid:
        raise XdmError("METADATA.XML carries no patient identifier", E_NO_INS)
    ins, oid = _patient_ref(pid)
    patient = _patient(ins, oid, first.get("sourcePatientInfo", []))
    replaced = {
        a.get("sourceObject"): a.get("targetObject")
        for a in objects.findall(_q("Association"))
        if a.get("associationType") == RPLC
    }
    documents = []
    for element in entries:
        doc = _document(element, subset, files, patient)
        target = replaced.get(element.get("id"))
        documents.append(XdmDocument(**{**doc.__dict__, "replaces": target}) if target else doc)
    package_el = objects.find(_q("RegistryPackage"))
    return XdmPackage(
        patient=patient,
        documents=tuple(documents),
        submission_id=_external(package_el, SS_UNIQUE_ID) if package_el is not None else "",
    )


def read(data: bytes, limits: Limits) -> list[XdmPackage]:
    """The submission sets of a package (usually one), or :class:`XdmError` with its code."""
    if len(data) > limits.max_package_bytes:
        raise XdmError(f"package is larger than {limits.max_package_bytes} bytes")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise XdmError(f"not a zip archive: {exc}") from None
    with archive:
        members = _members(archive, limits)
        subsets = sorted(m.group(1) for name in members if (m := _METADATA.match(name)))
        if not subsets:
            raise XdmError("no IHE_XDM/SUBSETnn/METADATA.XML in the package")
        files = {name: _read_member(archive, info, limits) for name, info in members.items()}
    return [_submission(s, files[f"IHE_XDM/{s}/METADATA.XML"], files) for s in subsets]
