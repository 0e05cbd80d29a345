"""XDM packages: the builder's output read back, and hostile packages refused by the reader."""

from __future__ import annotations

import hashlib
import io
import stat
import zipfile

import pytest

from dmp import cda, xdm
from dmp.hl7 import CxError, parse_cx
from dmp.models import INS_OIDS
from dmp.testing import INS, PDF, package
from dmp.xdm_reader import Limits, XdmError, parse_xml, read

LIMITS = Limits(max_package_bytes=2 * 1024 * 1024, max_file_bytes=1024 * 1024, max_files=16, max_ratio=100)


def rezip(
    data: bytes,
    replace: dict[str, bytes | None] | None = None,
    extra: list[tuple[zipfile.ZipInfo | str, bytes]] | None = None,
) -> bytes:
    """A copy of a package with members replaced (None removes) and members added."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in replace:
                if replace[info.filename] is not None:
                    dst.writestr(info.filename, replace[info.filename] or b"")
            else:
                dst.writestr(info, src.read(info))
        for name, content in extra or []:
            dst.writestr(name, content)
    return out.getvalue()


def metadata_of(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read("IHE_XDM/SUBSET01/METADATA.XML")


def test_builder_layout_and_round_trip() -> None:
    built = xdm.build(package(with_pdf=True))
    with zipfile.ZipFile(io.BytesIO(built)) as z:
        assert z.namelist() == [
            "README.TXT", "INDEX.HTM", "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML", "IHE_XDM/SUBSET01/DOC0002.PDF",
        ]  # fmt: skip
        assert b"DOC0001.XML" in z.read("INDEX.HTM")
    meta = metadata_of(built)
    assert b"SubmitObjectsRequest" in meta and f"{INS}^^^&amp;1.2.250.1.213.1.4.8&amp;ISO".encode() in meta
    [got] = read(built, LIMITS)
    assert got.patient.ins == INS and got.patient.birth_name == "DUPONT"
    cda, pdf = got.documents
    assert (cda.format, cda.type_code, cda.author.idnat, cda.author.profession) == (
        "CDA_R2",
        "34112-3",
        "810000000010",
        "10",
    )
    assert (pdf.format, pdf.mime_type, pdf.content) == ("PDF", "application/pdf", PDF)


def test_visibility_codes_and_replacement_travel() -> None:
    base = package()
    doc = base.documents[0]
    flagged = xdm.XdmPackage(
        base.patient,
        (
            xdm.XdmDocument(
                **{
                    **doc.__dict__,
                    "flags": frozenset({"MASQUE_PS", "INVISIBLE_PATIENT"}),
                    "replaces": "2.25.7",
                }
            ),
        ),
    )
    [got] = read(xdm.build(flagged), LIMITS)
    assert (
        got.documents[0].flags == {"MASQUE_PS", "INVISIBLE_PATIENT"} and got.documents[0].replaces == "2.25.7"
    )


def _refused(data: bytes, code: int = 906, match: str | None = None) -> XdmError:
    with pytest.raises(XdmError, match=match) as caught:
        read(data, LIMITS)
    assert caught.value.code == code
    return caught.value


def test_zip_bomb_is_refused_before_decompressing() -> None:
    bomb = rezip(xdm.build(package()), extra=[("IHE_XDM/SUBSET01/BOMB.BIN", b"\0" * (900 * 1024))])
    assert len(bomb) < 20 * 1024
    _refused(bomb, match="compression ratio")


def test_oversized_member_and_package() -> None:
    _refused(rezip(xdm.build(package()), extra=[("BIG.BIN", bytes(range(256)) * 5000)]), match="larger than")
    _refused(b"PK" + b"\0" * (3 * 1024 * 1024), match="larger than")


@pytest.mark.parametrize(
    "name", ["../evil.txt", "IHE_XDM/../../evil", "/etc/cron.d/x", "C:/x", "IHE_XDM\\SUBSET01\\x"]
)
def test_unsafe_paths(name: str) -> None:
    info = zipfile.ZipInfo(name)
    data = rezip(xdm.build(package()), extra=[(info, b"x")])
    _refused(data, match="unsafe path")


def test_symlink_is_refused() -> None:
    link = zipfile.ZipInfo("IHE_XDM/SUBSET01/LINK")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    _refused(rezip(xdm.build(package()), extra=[(link, b"/etc/passwd")]), match="symbolic link")


def test_too_many_members() -> None:
    _refused(rezip(xdm.build(package()), extra=[(f"F{n}", b"x") for n in range(20)]), match="members")


def test_not_a_zip_and_no_metadata() -> None:
    _refused(b"this is not a zip", match="not a zip")
    _refused(rezip(xdm.build(package()), {"IHE_XDM/SUBSET01/METADATA.XML": None}), match="METADATA.XML")


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">
&xxe;</lcm:SubmitObjectsRequest>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<r>&lol2;</r>"""


@pytest.mark.parametrize("xml", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_dtd_and_entities_are_refused(xml: bytes) -> None:
    _refused(rezip(xdm.build(package()), {"IHE_XDM/SUBSET01/METADATA.XML": xml}), match="DTD")


def test_dtd_in_the_cda_is_refused() -> None:
    built = xdm.build(package())
    with zipfile.ZipFile(io.BytesIO(built)) as z:
        cda = z.read("IHE_XDM/SUBSET01/DOC0001.XML")
    evil = cda.replace(
        b"\n<ClinicalDocument", b'\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n<ClinicalDocument'
    )
    meta = metadata_of(built)
    meta = meta.replace(hashlib.sha1(cda).hexdigest().encode(), hashlib.sha1(evil).hexdigest().encode())
    meta = meta.replace(
        f"<rim:Value>{len(cda)}</rim:Value>".encode(), f"<rim:Value>{len(evil)}</rim:Value>".encode()
    )
    _refused(
        rezip(built, {"IHE_XDM/SUBSET01/DOC0001.XML": evil, "IHE_XDM/SUBSET01/METADATA.XML": meta}),
        match="DTD",
    )


def test_hash_and_size_mismatch() -> None:
    built = xdm.build(package())
    with zipfile.ZipFile(io.BytesIO(built)) as z:
        cda = z.read("IHE_XDM/SUBSET01/DOC0001.XML")
    tampered = cda.replace(b"SECRET", b"SECRXT")
    _refused(rezip(built, {"IHE_XDM/SUBSET01/DOC0001.XML": tampered}), match="hash")
    _refused(rezip(built, {"IHE_XDM/SUBSET01/DOC0001.XML": cda + b" "}), match="size")


def test_document_missing_from_package() -> None:
    _refused(rezip(xdm.build(package()), {"IHE_XDM/SUBSET01/DOC0001.XML": None}), match="not in the package")


def test_a_lying_declared_size_is_caught() -> None:
    """A central directory that under-declares a member's size (to slip past the bounds)."""
    built = bytearray(xdm.build(package()))
    name = b"IHE_XDM/SUBSET01/DOC0001.XML"
    entry = built.find(b"PK\x01\x02")
    while entry != -1:
        name_len = int.from_bytes(built[entry + 28 : entry + 30], "little")
        if bytes(built[entry + 46 : entry + 46 + name_len]) == name:
            built[entry + 24 : entry + 28] = (10).to_bytes(4, "little")  # uncompressed size
            break
        entry = built.find(b"PK\x01\x02", entry + 4)
    else:
        raise AssertionError("member not found")
    error = _refused(bytes(built))
    assert "cannot be read" in str(error)  # zipfile stops at the declared size: the CRC fails


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("279035121518989^^^&1.2.250.1.213.1.4.8&ISO", ("279035121518989", "", "1.2.250.1.213.1.4.8", "")),
        (
            "279035121518989^^^&1.2.250.1.213.1.4.8&ISO^NH",
            ("279035121518989", "", "1.2.250.1.213.1.4.8", "NH"),
        ),
        (
            "279035121518989^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH",
            ("279035121518989", "ASIP-SANTE-NIR", "1.2.250.1.213.1.4.8", "NH"),
        ),
        ("IPP1^^^&1.2.3&ISO^PI^^^^", ("IPP1", "", "1.2.3", "PI")),
    ],
)
def test_cx_reader_accepts_type_code_and_namespace(value: str, expected: tuple[str, str, str, str]) -> None:
    cx = parse_cx(value)
    assert (cx.id, cx.namespace, cx.authority, cx.type_code) == expected
    assert parse_cx(cx.render()) == cx


@pytest.mark.parametrize(
    "value", ["", "279035121518989", "279035121518989^^^&&ISO", "X^^^&1.2.3&L", "A\\F\\B^^^&1&ISO"]
)
def test_cx_reader_refuses_what_is_not_a_cx(value: str) -> None:
    with pytest.raises(CxError):
        parse_cx(value)


def test_cda_header_traits_follow_ci_sis() -> None:
    root = parse_xml(
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="11488-4"/><recordTarget><patientRole>'
        b'<id root="1.2.3" extension="IPP9"/><id root="1.2.250.1.213.1.4.8" extension="279035121518989"/>'
        b'<patient><name><given qualifier="CL">Mimi</given><given>MARIE</given><given>CLAIRE</given>'
        b'<family qualifier="SP">MARTIN</family><family qualifier="BR">DUPONT</family></name>'
        b'<administrativeGenderCode code="F"/><birthTime value="19790305"/>'
        b"<birthplace><place><addr><censusTract>75115</censusTract></addr></place></birthplace>"
        b"</patient></patientRole></recordTarget></ClinicalDocument>",
        "CDA",
    )
    head = cda.header(root)
    assert head.code == "11488-4" and head.patient is not None
    p = head.patient
    assert (p.birth_name, p.first_given_name, p.given_names, p.sex, p.birthplace) == (
        "DUPONT", "MARIE", "MARIE CLAIRE", "F", "75115",
    )  # fmt: skip
    assert p.ins(("1.2.250.1.213.1.4.8",)) == ("279035121518989", "1.2.250.1.213.1.4.8")
    assert p.missing_traits() == []


def test_test_and_demo_oids_only_when_allowed() -> None:
    built = xdm.build(package(oid="1.2.250.1.213.1.4.11"))
    with pytest.raises(XdmError) as refused:
        read(built, LIMITS)  # production OIDs by default
    assert refused.value.code == 903 and "INS-NIR demo" in str(refused.value)
    [got] = read(built, LIMITS, INS_OIDS)
    assert got.patient.ins_oid == "1.2.250.1.213.1.4.11"
