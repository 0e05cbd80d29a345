"""The header of a CDA R2 document: the patient's INS and traits, and the document's code.

The INS and its traits are read from the CDA (ANS guide "transmission au LPS de documents CDA
provenant d'un courriel MSSanté": the metadata's ``sourcePatientInfo`` must never be used to
compute an identifier). In ``recordTarget/patientRole``, following the CI-SIS header
conventions:

* ``id`` — every patient identifier; the INS is the one whose ``root`` is an INS OID;
* ``patient/name/family[@qualifier='BR']`` — birth name (a ``family`` without qualifier is
  taken when no ``BR`` one is given; ``SP``, the used name, is not a trait);
* ``patient/name/given`` — the first given name is the first ``given`` without qualifier; the
  list of given names is ``given[@qualifier='BR']`` when present, otherwise every unqualified
  ``given`` joined with spaces (``CL``, the used first name, is not a trait);
* ``birthTime/@value`` — birth date (``YYYYMMDD…``);
* ``administrativeGenderCode/@code`` — ``M``, ``F``; ``U`` (HL7 unknown) reads as ``I``;
* ``birthplace/place/addr/censusTract`` — the INSEE code of the birthplace (optional).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from xml.etree.ElementTree import Element

HL7 = "urn:hl7-org:v3"


def _q(path: str) -> str:
    return "/".join(f"{{{HL7}}}{step}" for step in path.split("/"))


@dataclass(frozen=True)
class CdaPatient:
    """What a CDA header says of its patient; empty strings and None where it says nothing."""

    identifiers: tuple[tuple[str, str], ...]  # (root, extension)
    birth_name: str
    first_given_name: str
    given_names: str
    birth_date: date | None
    birth_date_text: str
    sex: str
    birthplace: str | None

    def ins(self, oids: tuple[str, ...]) -> tuple[str, str] | None:
        """(matricule, OID) of the first identifier whose root is one of ``oids``."""
        for root, extension in self.identifiers:
            if root in oids and extension:
                return extension.replace(" ", "").upper(), root
        return None

    def missing_traits(self) -> list[str]:
        """The INS traits the header lacks (birthplace is optional: unknown for some births)."""
        named = (
            ("birth name", self.birth_name),
            ("first given name", self.first_given_name),
            ("given names", self.given_names),
            ("birth date", self.birth_date),
            ("sex", self.sex),
        )
        return [name for name, value in named if not value]


@dataclass(frozen=True)
class CdaHeader:
    code: str
    patient: CdaPatient | None


def _text(element: Element | None) -> str:
    return " ".join((element.text or "").split()) if element is not None else ""


def _birth_date(raw: str) -> date | None:
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date() if len(raw) >= 8 else None
    except ValueError:
        return None


def _patient(role: Element) -> CdaPatient:
    identifiers = tuple(
        ((i.get("root") or "").strip(), (i.get("extension") or "").strip()) for i in role.findall(_q("id"))
    )
    person = role.find(_q("patient"))
    families: list[Element] = []
    givens: list[Element] = []
    if person is not None:
        for name in person.findall(_q("name")):
            families += name.findall(_q("family"))
            givens += name.findall(_q("given"))
    # (An Element without children is falsy: no ``or`` between look-ups.)
    birth = next((f for f in families if f.get("qualifier") == "BR"), None)
    if birth is None:
        birth = next((f for f in families if not f.get("qualifier")), None)
    plain = [_text(g) for g in givens if not g.get("qualifier") and _text(g)]
    listed = next((_text(g) for g in givens if g.get("qualifier") == "BR" and _text(g)), "")
    first = plain[0] if plain else (listed.split()[0] if listed else "")
    born = person.find(_q("birthTime")) if person is not None else None
    born_text = (born.get("value") or "").strip() if born is not None else ""
    gender = person.find(_q("administrativeGenderCode")) if person is not None else None
    sex = (gender.get("code") or "").strip().upper() if gender is not None else ""
    place = person.find(_q("birthplace/place/addr/censusTract")) if person is not None else None
    return CdaPatient(
        identifiers=identifiers,
        birth_name=_text(birth),
        first_given_name=first,
        given_names=listed or " ".join(plain),
        birth_date=_birth_date(born_text),
        birth_date_text=born_text,
        sex="I" if sex == "U" else sex,
        birthplace=_text(place) or None,
    )


def header(root: Element) -> CdaHeader:
    """The header of a parsed CDA (``root`` is ``ClinicalDocument``)."""
    code = root.find(_q("code"))
    role = root.find(_q("recordTarget/patientRole"))
    return CdaHeader(
        code=(code.get("code") or "").strip() if code is not None else "",
        patient=_patient(role) if role is not None else None,
    )
