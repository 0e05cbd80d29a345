"""HL7 v2 data types as XDS metadata carries them: the CX (extended composite identifier).

One reader for every patient identifier of a package (``sourcePatientId``, the DocumentEntry and
SubmissionSet ``patientId``, ``PID-3`` of ``sourcePatientInfo``). Written the way senders write
it, a CX is ``ID^^^<namespace>&<universal id>&<universal id type>^<identifier type code>``:

* ``279035121518989^^^&1.2.250.1.213.1.4.8&ISO`` (no type code, as XDS requires at minimum);
* ``279035121518989^^^&1.2.250.1.213.1.4.8&ISO^NH`` (CI-SIS: the type code ``NH`` after the
  assigning authority);
* ``279035121518989^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH`` (a namespace before ``&``);
* ``…^INS`` or ``…^PI`` for other type codes.

Components after the fifth (assigning facility, dates) are read and ignored. HL7 escape
sequences are not expected in identifiers; a value with ``\\`` is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass


class CxError(ValueError):
    """The value is not a CX with an identifier and an ISO assigning authority."""


@dataclass(frozen=True)
class Cx:
    id: str
    namespace: str  # HD.1, e.g. ASIP-SANTE-NIR (often empty)
    authority: str  # HD.2, the OID
    authority_type: str  # HD.3, ISO
    type_code: str  # CX.5, e.g. NH, INS, PI (often empty)

    def render(self) -> str:
        """The canonical form: namespace and type code kept when present."""
        text = f"{self.id}^^^{self.namespace}&{self.authority}&{self.authority_type}"
        return f"{text}^{self.type_code}" if self.type_code else text


def parse_cx(value: str) -> Cx:
    text = value.strip()
    if not text or "\\" in text:
        raise CxError(f"{value!r} is not a CX identifier")
    components = text.split("^")
    ident = components[0].strip()
    authority = components[3] if len(components) > 3 else ""
    parts = authority.split("&")
    parts += [""] * (3 - len(parts))
    namespace, oid, oid_type = (p.strip() for p in parts[:3])
    if not ident or not oid:
        raise CxError(f"{value!r} is not a CX identifier with an assigning authority (ID^^^&OID&ISO)")
    if oid_type.upper() != "ISO":
        raise CxError(f"{value!r}: the assigning authority must be an ISO OID (…&{oid}&ISO)")
    type_code = components[4].strip() if len(components) > 4 else ""
    return Cx(ident, namespace, oid, "ISO", type_code)
