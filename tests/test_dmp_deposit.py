"""Deposit from messages: success with an RFC 8098 MDN, every ANS error code from a crafted
message, hostile packages refused with nothing stored, and the plain error mail."""

from __future__ import annotations

import email
import io
import zipfile
from dataclasses import replace
from email import policy
from email.header import decode_header, make_header
from email.message import Message

import pytest
from sqlalchemy import text

from annuaire.service import add_bal
from dmp import xdm
from dmp.deposit import DepositResult, build_message, deposit_message
from dmp.service import DMPService
from dmp.testing import (
    CH_TEST,
    DPI_BAL,
    INFIRMIER,
    INS,
    MEDECIN,
    MEDECIN_TRAITANT,
    TRAITS,
    UNKNOWN_INS,
    bal_of,
    cda,
    package,
)
from mssante.auth.identity import Identity
from mssante.db import transaction

GATEWAY = "dmp@demo.mssante.fr"
SUBJECT = "XDM/1.0/DDM+CR d'hospitalisation DUPONT MARIE 19790305"
SENDER = Identity.professional(MEDECIN_TRAITANT)


def _send(
    service: DMPService,
    zip_data: bytes,
    *,
    to: str = GATEWAY,
    mdn: bool = True,
    sender: Identity = SENDER,
    headers: dict[str, str] | None = None,
    codes: list[str] | None = None,
) -> DepositResult:
    bal = bal_of(sender.id)
    msg = build_message(
        zip_data, sender=bal, to=to, subject=SUBJECT, cda_codes=codes if codes is not None else ["34112-3"],
        notification_to=bal if mdn else None,
    )  # fmt: skip
    for name, value in (headers or {}).items():
        del msg[name]
        msg[name] = value
    result = deposit_message(service, msg.as_bytes(), sender=sender, sender_bal=bal, recipients=[to])
    assert result is not None
    return result


def _stored(service: DMPService) -> int:
    with service.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM dmp_documents")).scalar_one())


def _answer(result: DepositResult) -> Message:
    assert result.answer is not None
    return email.message_from_bytes(result.answer.raw, policy=policy.compat32)


def _disposition(answer: Message) -> dict[str, str]:
    parts = answer.get_payload()
    assert isinstance(parts, list)
    report = parts[1]
    assert report.get_content_type() == "message/disposition-notification"
    blocks = report.get_payload()  # the parser reads the fields as a header block
    assert isinstance(blocks, list)
    return {key: str(value) for key, value in blocks[0].items()}


def test_deposit_with_mdn(dmp_service: DMPService) -> None:
    result = _send(dmp_service, xdm.build(package(with_pdf=True)))
    assert result.ok, result.message
    assert [d.format for d in result.documents] == ["CDA_R2", "PDF"]
    answer = _answer(result)
    assert answer.get_content_type() == "multipart/report"
    assert answer.get_param("report-type") == "disposition-notification"
    assert answer["To"] == bal_of(MEDECIN_TRAITANT) and answer["Auto-Submitted"] == "auto-replied"
    fields = _disposition(answer)
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; processed"
    assert (
        fields["Final-Recipient"] == f"rfc822;{GATEWAY}"
        and fields["Original-Recipient"] == f"rfc822;{GATEWAY}"
    )
    assert fields["Original-Message-ID"].startswith("<")
    parts = answer.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/disposition-notification", "message/rfc822", "application/zip"
    ]  # fmt: skip
    assert parts[3].get_filename() == "IHE_XDM.ZIP"
    assert answer["Subject"] == SUBJECT and answer["From"] == GATEWAY  # the original subject, exactly
    assert _stored(dmp_service) == 2
    assert dmp_service.list_documents(Identity.patient(INS), INS)[0].author_idnat == MEDECIN_TRAITANT


def test_deposit_to_the_patient_bal_without_mdn_has_no_answer(dmp_service: DMPService) -> None:
    result = _send(dmp_service, xdm.build(package()), to=f"{INS}@patient.mssante.fr", mdn=False)
    assert result.ok and result.answer is None and _stored(dmp_service) == 1


def test_plain_messages_are_not_for_the_dmp(dmp_service: DMPService) -> None:
    plain = b"Subject: hi\r\n\r\nhello\r\n"
    to_patient = [f"{INS}@patient.mssante.fr"]
    assert (
        deposit_message(
            dmp_service, plain, sender=SENDER, sender_bal="x@demo.mssante.fr", recipients=to_patient
        )
        is None
    )
    elsewhere = ["y@demo.mssante.fr"]
    assert (
        deposit_message(
            dmp_service, plain, sender=SENDER, sender_bal="x@demo.mssante.fr", recipients=elsewhere
        )
        is None
    )


def _error(result: DepositResult, code: int, mdn: bool = True) -> Message:
    assert result.code == code, result.message
    answer = _answer(result)
    subject = str(make_header(decode_header(answer["Subject"])))
    assert subject == f"[KO Intégration système !][{code}] {SUBJECT}"
    if mdn:
        disposition = _disposition(answer)["Disposition"]
        assert disposition.startswith(f"automatic-action/MDN-sent-automatically; processed/Error: {code}^")
    return answer


def _with_metadata(built: bytes, old: bytes, new: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(built)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("METADATA.XML"):
                assert old in data
                data = data.replace(old, new)
            dst.writestr(info, data)
    return out.getvalue()


def test_902_unknown_patient(dmp_service: DMPService) -> None:
    _error(_send(dmp_service, xdm.build(package(ins=UNKNOWN_INS))), 902)


def test_903_no_ins(dmp_service: DMPService) -> None:
    built = xdm.build(package())
    declared_no = _send(dmp_service, built, headers={"X-MSS-INS": "N"})  # the package decides
    assert declared_no.ok and any("X-MSS-INS" in n for n in declared_no.notes)
    doc = package().documents[0]
    no_ins_in_cda = replace(doc, content=cda().replace(b"1.2.250.1.213.1.4.8", b"1.2.250.1.71.4.2.7"))
    _error(_send(dmp_service, xdm.build(package(documents=(no_ins_in_cda,)))), 903)
    assert _stored(dmp_service) == 1
    built = xdm.build(package())
    # a local identifier in the metadata does not hide the CDA's INS: the CDA decides
    local_id = _with_metadata(built, b"&amp;1.2.250.1.213.1.4.8&amp;ISO", b"&amp;1.2.250.1.213.1.4.2&amp;ISO")
    assert _send(dmp_service, local_id).ok
    built = xdm.build(package())
    dmp_service.add_patient(ins=INS, traits=TRAITS, identity_status="VALI", actor="test")
    _error(_send(dmp_service, built), 903)  # the stored identity is not qualified
    assert _stored(dmp_service) == 2


def test_904_ins_mismatch(dmp_service: DMPService) -> None:
    built = xdm.build(package())
    _error(_send(dmp_service, built, to=f"{UNKNOWN_INS}@patient.mssante.fr"), 904)
    other_name = xdm.build(package(traits=replace(TRAITS, birth_name="MARTIN")))
    _error(_send(dmp_service, other_name), 904)
    doc = package().documents[0]
    cda_for_other = replace(doc, content=cda(UNKNOWN_INS))
    _error(_send(dmp_service, xdm.build(package(documents=(cda_for_other,)))), 904)
    assert _stored(dmp_service) == 0


def test_905_incomplete_traits(dmp_service: DMPService) -> None:
    _error(_send(dmp_service, xdm.build(package(traits=replace(TRAITS, birth_name="")))), 905)


def test_906_other_and_plain_error_mail(dmp_service: DMPService) -> None:
    mismatch = _send(dmp_service, xdm.build(package()), codes=["11488-4"], mdn=False)
    assert mismatch.ok and mismatch.answer is None and "X-MSS-CODECDA" in mismatch.notes[0]
    two_authors = package(documents=(package().documents[0], package(author=MEDECIN).documents[0]))
    answer = _error(_send(dmp_service, xdm.build(two_authors), mdn=False), 906, mdn=False)
    assert answer.get_content_type() == "multipart/mixed" and answer["To"] == bal_of(MEDECIN_TRAITANT)
    body = answer.get_payload()[0].get_payload(decode=True).decode()  # type: ignore[index,union-attr]
    assert "906 Erreur 'Autre'" in body and "one author" in body
    parts = answer.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/rfc822", "application/zip"]
    # the sender must be the author
    _error(_send(dmp_service, xdm.build(package(author=INFIRMIER)), sender=SENDER), 906)
    # a message to the gateway without a package
    msg = (
        b"From: a@demo.mssante.fr\r\nSubject: XDM/1.0/DDM\r\n"
        b"Disposition-Notification-To: a@demo.mssante.fr\r\n\r\nx\r\n"
    )
    result = deposit_message(
        dmp_service, msg, sender=SENDER, sender_bal="a@demo.mssante.fr", recipients=[GATEWAY]
    )
    assert result is not None and result.code == 906
    assert _stored(dmp_service) == 1


def test_901_and_900_replacement(dmp_service: DMPService) -> None:
    first = _send(dmp_service, xdm.build(package()))
    uid = first.documents[0].unique_id
    doc = package().documents[0]
    by_nurse = replace(doc, author=replace(doc.author, idnat=INFIRMIER, profession="60"), replaces=uid)
    nurse = Identity.professional(INFIRMIER)
    _error(_send(dmp_service, xdm.build(package(author=INFIRMIER, documents=(by_nurse,))), sender=nurse), 901)
    second = _send(dmp_service, xdm.build(package(documents=(replace(doc, replaces=uid),))))
    assert second.ok and second.documents[0].replaces == uid
    again = replace(doc, unique_id="2.25.99", replaces=uid)
    _error(_send(dmp_service, xdm.build(package(documents=(again,)))), 900)


def _from_dpi(service: DMPService, zip_data: bytes) -> DepositResult:
    dpi = Identity.application(f"CN={DPI_BAL}", "ab" * 32)
    result = deposit_message(
        service, build_message(zip_data, sender=DPI_BAL, to=GATEWAY, subject=SUBJECT,
                               cda_codes=["34112-3"], notification_to=DPI_BAL).as_bytes(),
        sender=dpi, sender_bal=DPI_BAL, recipients=[GATEWAY], return_path=DPI_BAL,
    )  # fmt: skip
    assert result is not None
    return result


def test_application_sender_acts_for_the_authors_of_its_structure(dmp_service: DMPService) -> None:
    result = _from_dpi(dmp_service, xdm.build(package()))
    assert result.ok and result.documents[0].author_idnat == MEDECIN_TRAITANT
    _error(_from_dpi(dmp_service, xdm.build(package(author=INFIRMIER))), 906)  # not of the CH
    refused = [t for t in dmp_service.trace_of(INS) if t.outcome == "refused"]
    assert refused and INFIRMIER in (refused[-1].reason or "") and DPI_BAL in (refused[-1].reason or "")
    # a colleague of the same CH replaces the first author's document (901 does not apply)
    with transaction(dmp_service.writer) as s:
        add_bal(s, address=bal_of(MEDECIN), type="PER", professional=MEDECIN, structure=CH_TEST, actor="t")
    dmp_service.annuaire.invalidate()
    doc = package(author=MEDECIN).documents[0]
    again = _from_dpi(dmp_service, xdm.build(package(author=MEDECIN, documents=(
        replace(doc, replaces=result.documents[0].unique_id),))))  # fmt: skip
    assert again.ok and again.documents[0].replaces == result.documents[0].unique_id


@pytest.mark.parametrize(
    "hostile",
    ["bomb", "traversal", "dtd", "oversized", "hash"],
)
def test_hostile_packages_store_nothing(dmp_service: DMPService, hostile: str) -> None:
    built = xdm.build(package())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(built)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if hostile == "dtd" and info.filename.endswith("METADATA.XML"):
                data = data.replace(
                    b"\n<lcm:", b'\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n<lcm:', 1
                )
            if hostile == "hash" and info.filename.endswith("DOC0001.XML"):
                data = data.replace(b"SECRET", b"SECRXT")
            dst.writestr(info, data)
        if hostile == "bomb":
            dst.writestr("IHE_XDM/SUBSET01/BOMB.BIN", b"\0" * (8 * 1024 * 1024))
        if hostile == "traversal":
            dst.writestr(zipfile.ZipInfo("../../etc/evil"), b"x")
    if hostile == "oversized":
        dmp_service.settings.dmp.max_package_bytes = 2048
    blobs_before = _count_blobs(dmp_service)
    _error(_send(dmp_service, out.getvalue()), 906)
    assert _stored(dmp_service) == 0 and _count_blobs(dmp_service) == blobs_before


def _count_blobs(service: DMPService) -> int:
    with service.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM blobs")).scalar_one())


def test_automatic_messages_get_no_answer(dmp_service: DMPService) -> None:
    result = _send(
        dmp_service, xdm.build(package(ins=UNKNOWN_INS)), headers={"Auto-Submitted": "auto-replied"}
    )
    assert result.code == 902 and result.answer is None


def test_a_package_is_deposited_whole_or_not_at_all(dmp_service: DMPService) -> None:
    doc = package().documents[0]
    bad_replacement = replace(doc, unique_id="2.25.77", replaces="2.25.404")
    _error(_send(dmp_service, xdm.build(package(documents=(doc, bad_replacement)))), 900)
    assert _stored(dmp_service) == 0 and _count_blobs(dmp_service) == 0


def test_birthplace_differs_only_when_both_sides_have_it(dmp_service: DMPService) -> None:
    elsewhere = replace(TRAITS, birthplace="13055")
    _error(_send(dmp_service, xdm.build(package(traits=elsewhere))), 904)
    unknown_place = replace(TRAITS, birthplace=None)
    assert _send(dmp_service, xdm.build(package(traits=unknown_place))).ok


def test_mss_headers_are_recorded_with_the_document_and_in_the_audit(dmp_service: DMPService) -> None:
    result = _send(dmp_service, xdm.build(package()), headers={"X-MSS-NIL": "DPI-Test 4.2", "X-MSS-INS": "N"})
    assert result.ok
    with dmp_service.engine.connect() as conn:
        row = conn.execute(
            text("SELECT mss_ins, mss_codecda, mss_nil FROM dmp_documents WHERE unique_id = :u"),
            {"u": result.documents[0].unique_id},
        ).one()
        details = [
            str(d) for (d,) in conn.execute(text("SELECT detail FROM audit_log WHERE action = 'dmp.feed'"))
        ]
    assert tuple(row) == ("N", "34112-3", "DPI-Test 4.2")
    assert any("DPI-Test 4.2" in d and "X-MSS-INS: N" in d for d in details)
