"""Reading an XDM package that arrived by message: hostile input until proven otherwise.

Before anything is decompressed the central directory is checked: number of entries, names
(no absolute path, no ``..``, no backslash or drive letter, no duplicate), no symbolic link,
no encryption, declared sizes within the per-file and total bounds and a bounded compression
ratio (zip bombs). Decompression then counts the bytes really produced, since a declared size
may lie. XML is parsed with defusedxml with DTDs, entities and external references refused
(XXE, billion laughs). Each document's size and hash are checked against METADATA.XML.

The patient is the one the CDA headers name (:mod:`dmp.cda`): every CDA must carry an INS
with complete traits; the metadata's patient identifiers (read by :mod:`dmp.hl7`, with or
without the ``^NH`` type code and a namespace) must agree with it; ``sourcePatientInfo`` is
optional and only read for a package without any CDA. Replacements are ``RPLC`` associations,
deletions ``UpdateAvailabilityStatus`` associations to ``Deprecated`` (IHE Metadata Update);
either may target a uniqueId or the entryUUID the sender gave the document.

Every failure is an :class:`XdmError` carrying the ANS integration code: 903 when the CDA has
patient identifiers but no INS (or an INS OID not accepted here), 904 when two parts of the
package name different patients, 905 when INS traits are incomplete, 906 for everything else.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from annuaire.identifiers import IdentifierError, parse_idnat_ps, validate_nir
from dmp import cda
from dmp.cda import CdaPatient
from dmp.hl7 import Cx, CxError, parse_cx
from dmp.models import INS_OID_NAMES, INS_OIDS, PRODUCTION_INS_OIDS
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
    SS_PATIENT_ID,
    SS_UNIQUE_ID,
    STATUS_DEPRECATED,
    UPDATE_STATUS,
    XdmAuthor,
    XdmDocument,
    XdmPackage,
    XdmPatient,
)
from mssante.config import DMPSection

E_NO_INS, E_INS_MISMATCH, E_TRAITS, E_OTHER = 903, 904, 905, 906
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


def _cx(value: str) -> Cx | None:
    try:
        return parse_cx(value)
    except CxError:
        return None


def _checked_ins(ins: str, oid: str, where: str, oids: tuple[str, ...]) -> str:
    """The canonical matricule of an INS found ``where``, or 903 when it cannot be one here."""
    if oid not in oids:
        raise XdmError(
            f"{where}: INS OID {oid} ({INS_OID_NAMES.get(oid, 'unknown')}) is not accepted here "
            f"(accepted: {', '.join(oids)})",
            E_NO_INS,
        )
    try:
        return validate_nir(ins)
    except IdentifierError as exc:
        raise XdmError(f"{where}: {ins!r} is not an INS matricule ({exc})", E_NO_INS) from None


def _source_patient(info: Iterable[str]) -> dict[str, str]:
    fields = {}
    for line in info:
        key, _, value = line.partition("|")
        fields[key.strip().upper()] = value.strip()
    return fields


def _metadata_traits(ins: str, oid: str, info: Iterable[str]) -> XdmPatient:
    """Traits from ``sourcePatientInfo`` — used only for a package without any CDA."""
    fields = _source_patient(info)
    names = fields.get("PID-5", "").split("^")
    names += [""] * (3 - len(names))
    raw = fields.get("PID-7", "")
    born = None
    if raw:
        try:
            born = datetime.strptime(raw[:8], "%Y%m%d").date()
        except ValueError:
            raise XdmError(f"birth date {raw!r} of sourcePatientInfo is not YYYYMMDD", E_TRAITS) from None
    place = fields.get("PID-11", "").split("^")[-1] or None
    given = names[1].strip()
    return XdmPatient(
        ins, oid, names[0].strip(), given, names[2].strip() or given, born, fields.get("PID-8", ""), place
    )


def _cda_identity(doc: XdmDocument, patient: CdaPatient | None, oids: tuple[str, ...]) -> XdmPatient:
    """The INS and traits of one CDA's header: 903 without INS, 905 with incomplete traits."""
    name = posixpath.basename(doc.path)
    if patient is None or not any(ext for _root, ext in patient.identifiers):
        raise XdmError(f"the CDA {name} names no patient (recordTarget/patientRole/id)", E_NO_INS)
    found = patient.ins(INS_OIDS)
    if found is None:
        roots = ", ".join(sorted({root for root, _ in patient.identifiers}))
        raise XdmError(f"the CDA {name} carries patient identifiers ({roots}) but no INS", E_NO_INS)
    ins = _checked_ins(found[0], found[1], f"the CDA {name}", oids)
    missing = patient.missing_traits()
    if missing:
        raise XdmError(
            f"the CDA {name} carries the INS {ins} without its traits: {', '.join(missing)}", E_TRAITS
        )
    return XdmPatient(
        ins, found[1], patient.birth_name, patient.first_given_name, patient.given_names,
        patient.birth_date, patient.sex, patient.birthplace,
    )  # fmt: skip


def _author(element: Element) -> XdmAuthor:
    found = _classifications(element, DE_AUTHOR)
    if not found:
        raise XdmError("a document has no author")
    slots = _slots(found[0])
    person = _first(slots, "authorPerson").split("^")
    try:
        idnat = parse_idnat_ps(person[0]).value  # a bare RPPS reads as 8 + RPPS
    except IdentifierError as exc:
        raise XdmError(f"the author's identifier (authorPerson) is not an IdNat_PS: {exc}") from None
    specialty = _first(slots, "authorSpecialty").split("^")
    institution = _first(slots, "authorInstitution").split("^")
    return XdmAuthor(
        idnat=idnat,
        profession=specialty[0] or None,
        profession_label=specialty[1] if len(specialty) > 1 else "",
        nom=person[1] if len(person) > 1 else "",
        prenom=person[2] if len(person) > 2 else "",
        structure=(institution[9].strip() or None) if len(institution) >= 10 else None,
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


def _document(element: Element, subset: str, files: dict[str, bytes]) -> XdmDocument:
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
    types = _classifications(element, DE_TYPE)
    type_code = (types[0].get("nodeRepresentation") or "").strip() if types else ""
    if not type_code:
        raise XdmError(f"document {uri} has no type code")
    mime = element.get("mimeType", "application/octet-stream")
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
    ident = element.get("id") or ""
    return XdmDocument(
        content=content,
        type_code=type_code,
        title=(title_el.get("value") if title_el is not None else None) or type_code,
        author=_author(element),
        format=_format(mime, element),
        mime_type=mime,
        created_at=created_at,
        unique_id=_external(element, DE_UNIQUE_ID),
        flags=flags,
        space=classes[0].get("nodeRepresentation") if classes else None,
        path=path,
        entry_uuid=ident if ident.lower().startswith("urn:uuid:") else "",
    )


def _metadata_ins(
    objects: Element, entries: list[Element], oids: tuple[str, ...]
) -> list[tuple[str, str, str]]:
    """Every INS the metadata names: (matricule, OID, where). Other identifiers are ignored."""
    found: list[tuple[str, str, str]] = []
    candidates = [("XDSSubmissionSet.patientId", _external(p, SS_PATIENT_ID))
                  for p in objects.findall(_q("RegistryPackage"))]  # fmt: skip
    for e in entries:
        candidates.append(("XDSDocumentEntry.patientId", _external(e, DE_PATIENT_ID)))
        candidates.append(("sourcePatientId", _first(_slots(e), "sourcePatientId")))
    for where, value in candidates:
        cx = _cx(value) if value else None
        if cx is not None and cx.authority in INS_OIDS:
            found.append((_checked_ins(cx.id, cx.authority, where, oids), cx.authority, where))
    return found


def _targets(objects: Element, entries: list[Element]) -> tuple[dict[str, str], tuple[str, ...]]:
    """RPLC targets by new entry id, and the documents to delete (UpdateAvailabilityStatus to
    Deprecated: IHE ITI Metadata Update). A target is a uniqueId or an entryUUID."""
    unique_of = {e.get("id"): _external(e, DE_UNIQUE_ID) for e in entries}
    replaced: dict[str, str] = {}
    deleted: list[str] = []
    for a in objects.findall(_q("Association")):
        kind, target = a.get("associationType"), (a.get("targetObject") or "").strip()
        if kind == RPLC:
            replaced[a.get("sourceObject") or ""] = target
        elif kind == UPDATE_STATUS and _first(_slots(a), "NewStatus") == STATUS_DEPRECATED:
            deleted.append(unique_of.get(target) or target)
    return replaced, tuple(deleted)


def _submission(subset: str, metadata: bytes, files: dict[str, bytes], oids: tuple[str, ...]) -> XdmPackage:
    root = parse_xml(metadata, f"IHE_XDM/{subset}/METADATA.XML")
    if root.tag != "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}SubmitObjectsRequest":
        raise XdmError("METADATA.XML is not an ebRIM 3.0 SubmitObjectsRequest")
    objects = root.find(_q("RegistryObjectList"))
    entries = objects.findall(_q("ExtrinsicObject")) if objects is not None else []
    if objects is None or not entries:
        raise XdmError("METADATA.XML describes no document")
    replaced, deletions = _targets(objects, entries)
    documents: list[XdmDocument] = []
    identities: list[XdmPatient] = []
    for element in entries:
        doc = _document(element, subset, files)
        if doc.format == "CDA_R2":
            head = cda.header(parse_xml(doc.content, f"the CDA {posixpath.basename(doc.path)}"))
            doc = replace(doc, cda_code=head.code)
            identities.append(_cda_identity(doc, head.patient, oids))
        target = replaced.get(element.get("id") or "")
        documents.append(replace(doc, replaces=target) if target else doc)
    named = _metadata_ins(objects, entries, oids)
    if identities:
        patient = identities[0]
        for other in identities[1:]:
            if other.ins != patient.ins:
                raise XdmError(
                    f"the CDAs of the package name two patients ({patient.ins}, {other.ins})", E_INS_MISMATCH
                )
        for ins, _oid, where in named:
            if ins != patient.ins:
                raise XdmError(f"{where} names INS {ins}, the CDA {patient.ins}", E_INS_MISMATCH)
    elif named:
        ins, oid, _where = named[0]
        if any(n[0] != ins for n in named):
            raise XdmError("the metadata names two patients", E_INS_MISMATCH)
        patient = _metadata_traits(ins, oid, _slots(entries[0]).get("sourcePatientInfo", []))
        missing = [
            n
            for n, v in (
                ("birth name", patient.birth_name),
                ("first given name", patient.first_given_name),
                ("birth date", patient.birth_date),
                ("sex", patient.sex),
            )
            if not v
        ]
        if missing:
            raise XdmError(
                f"incomplete INS traits (no CDA; sourcePatientInfo): {', '.join(missing)}", E_TRAITS
            )
        identities.append(patient)
    else:
        raise XdmError("the package names no INS (no CDA, no INS in the metadata)", E_NO_INS)
    package_el = objects.find(_q("RegistryPackage"))
    return XdmPackage(
        patient=patient,
        documents=tuple(documents),
        submission_id=_external(package_el, SS_UNIQUE_ID) if package_el is not None else "",
        identities=tuple(identities),
        deletions=deletions,
    )


def read(data: bytes, limits: Limits, ins_oids: tuple[str, ...] = PRODUCTION_INS_OIDS) -> list[XdmPackage]:
    """The submission sets of a package (usually one), or :class:`XdmError` with its code.

    ``ins_oids`` are the INS OIDs accepted (production: INS-NIR and INS-NIA only)."""
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
    return [_submission(s, files[f"IHE_XDM/{s}/METADATA.XML"], files, ins_oids) for s in subsets]
