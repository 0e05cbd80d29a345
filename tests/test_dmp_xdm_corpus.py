"""Conformance corpus: XDM packages written the way the guides and public examples write them
(``tests/xdm_corpus/builder.py``, independent of ``dmp.xdm``), each sent over SMTP submission
(STARTTLS, real TLS) to ``mssante serve --demo``, each answer read back over IMAPS and compared
with what the ANS guide "transmission au LPS de documents CDA provenant d'un courriel MSSanté"
shows: structure of the MDN, subjects, ``From``, fields, libellés (FACTS.md), the original
message and attachments. Every error code 900–906 comes from a real package.

The demo server is shared by the session: every document has its own unique ids, and tests that
need a first deposit make it themselves.
"""

from __future__ import annotations

import email
import imaplib
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import formatdate, make_msgid
from typing import Any

import httpx
import pytest

from tests.demo_server import DemoServer
from tests.xdm_corpus.builder import Author, Doc, Package, Patient, build, uid

# The libellés of the guide (applicationErrorCondition, v1.1.3), as FACTS.md lists them.
LIBELLES = {
    900: "Version du document incorrecte lors d'une demande de remplacement/suppression",
    901: "Auteur non autorisé à remplacer ou supprimer un document",
    902: "Identifiant patient inconnu",
    903: "INS non présent dans le document",
    904: "L'INS transmis ne correspond pas exactement à celui stocké dans la base du consommateur",
    905: "L'INS transmis n'est pas complet",
    906: "Erreur 'Autre'",
}
PROCESSED = "automatic-action/MDN-sent-automatically; processed"
BERNARD_IDNAT = "810100000037"  # the demo pharmacist, responsible of the pharmacy's ORG BAL
PDF_NAME = "20260101_CR d'imagerie médicale_DUPONT_MARIE.pdf"


@dataclass
class Cast:
    demo: DemoServer
    domain: str
    gateway: str
    martin: Author
    durand: Author
    patients: list[dict[str, Any]]

    def addr(self, local: str) -> str:
        return f"{local}@{self.domain}"

    def patient(self, n: int = 0, **changes: Any) -> Patient:
        p = self.patients[n]
        t = p["traits"]
        values: dict[str, Any] = {
            "ins": p["ins"],
            "oid": p["ins_oid"],
            "birth_name": t["birth_name"],
            "first_given_name": t["first_given_name"],
            "given_names": t["given_names"],
            "birth_date": t["birth_date"].replace("-", ""),
            "sex": t["sex"],
            "birthplace": t["birthplace"],
        }
        values.update(changes)
        return Patient(**values)


@pytest.fixture(scope="module")
def cast(demo: DemoServer) -> Cast:
    doc = demo.doc
    pros = {a["address"].split("@")[0]: a for a in doc["accounts"] if a["kind"] == "professional"}
    martin, durand = pros["claire.martin"], pros["paul.durand"]
    return Cast(
        demo,
        doc["domain"],
        doc["dmp_gateway"],
        Author(martin["idnat"], "MARTIN", "Claire"),
        Author(durand["idnat"], "DURAND", "Paul"),
        [a for a in doc["accounts"] if a["kind"] == "patient"],
    )


@pytest.fixture(scope="module")
def documents_of(demo: DemoServer) -> Callable[[str], dict[str, dict[str, Any]]]:
    """The current documents of a patient, as the patient sees them over the HTTPS API."""
    tokens: dict[str, str] = {}
    http = demo.listener("http")
    client = httpx.Client(
        base_url=f"https://localhost:{http['port']}",
        verify=ssl.create_default_context(cafile=demo.ca_cert),
        timeout=10,
    )

    def get(ins: str) -> dict[str, dict[str, Any]]:
        if ins not in tokens:
            tokens[ins] = demo.token(ins, "patient")
        found = client.get("/dmp/me/documents", headers={"Authorization": f"Bearer {tokens[ins]}"})
        assert found.status_code == 200, found.text
        return {d["unique_id"]: d for d in found.json()["documents"]}

    return get


# -- sending and reading back ---------------------------------------------------------------------
def mail(
    cast: Cast,
    *,
    sender: str,
    zip_bytes: bytes,
    subject: str,
    to: str | None = None,
    dnt: str | None = "sender",
    codecda: str | None = None,
    ins_header: str | None = "O",
    pdf: bytes | None = None,
) -> EmailMessage:
    """A message as a DPI writes it (Référentiel #2 headers, the package and its PDF)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to or cast.gateway, subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    if ins_header is not None:
        msg["X-MSS-INS"] = ins_header
    if codecda is not None:
        msg["X-MSS-CODECDA"] = codecda
    msg["X-MSS-NIL"] = "DPI-Corpus 2.1"
    if dnt is not None:
        msg["Disposition-Notification-To"] = sender if dnt == "sender" else dnt
    msg.set_content("Veuillez trouver ci-joint le compte rendu.\n")
    msg.add_attachment(zip_bytes, maintype="application", subtype="zip", filename="IHE_XDM.zip")
    if pdf is not None:
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=PDF_NAME)
    return msg


def _context(demo: DemoServer, cert_of: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=demo.ca_cert)
    if cert_of is not None:
        account = demo.account(cert_of)
        ctx.load_cert_chain(account["client_cert"], account["client_key"])
    return ctx


def send(cast: Cast, msg: EmailMessage, *, login: str, mail_from: str | None = None) -> bytes:
    """Submit over STARTTLS; ``login`` is a demo account address (an APP BAL uses its certificate)."""
    demo = cast.demo
    account = demo.account(login)
    raw = msg.as_bytes(policy=policy.SMTP)
    cert = login if account["client_cert"] else None
    with smtplib.SMTP("127.0.0.1", demo.port("submission"), timeout=30) as client:
        client.ehlo("dpi.corpus.test")
        client.starttls(context=_context(demo, cert))
        client.ehlo("dpi.corpus.test")
        if cert:
            code, reply = client.docmd("AUTH", "EXTERNAL =")
            assert code == 235, reply
        else:
            client.login(account["login"], account["password"])
        assert client.sendmail(mail_from or str(msg["From"]), [str(msg["To"])], raw) == {}
    return raw


def _imap(cast: Cast, login: str, bal: str) -> imaplib.IMAP4_SSL:
    demo = cast.demo
    account = demo.account(login)
    cert = login if account["client_cert"] else None
    imap = imaplib.IMAP4_SSL("localhost", demo.port("imaps"), ssl_context=_context(demo, cert), timeout=15)
    if cert:
        imap.authenticate("EXTERNAL", lambda _: b"")
    else:
        authzid = "" if bal == account["login"] else bal
        secret = f"{authzid}\0{account['login']}\0{account['password']}".encode()
        imap.authenticate("PLAIN", lambda _: secret)
    imap.select("INBOX", readonly=True)
    return imap


def answers_to(cast: Cast, message_id: str, *, login: str, bal: str, wait: float = 30) -> list[bytes]:
    """The answers (In-Reply-To the message) in ``bal``'s INBOX, read over IMAPS; waits for one
    unless ``wait`` is 0."""
    imap = _imap(cast, login, bal)
    try:
        deadline = time.monotonic() + wait
        while True:
            imap.noop()
            typ, data = imap.uid("SEARCH", "HEADER", "In-Reply-To", f'"{message_id}"')
            assert typ == "OK", data
            uids = data[0].split()
            if uids or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        found = []
        for u in uids:
            typ, fetched = imap.uid("FETCH", u, "(BODY.PEEK[])")
            assert typ == "OK"
            found.append(bytes(fetched[0][1]))  # type: ignore[index]
        return found
    finally:
        imap.logout()


# -- what the guide says an answer is ----------------------------------------------------------------
def _subject(message: Message) -> str:
    return str(make_header(decode_header(str(message["Subject"]))))


def _fields(raw: bytes) -> dict[str, str]:
    found = re.search(
        rb"Content-Type: message/disposition-notification\r\n(?:[^\r\n]+\r\n)*\r\n(.*?)\r\n\r\n--", raw, re.S
    )
    assert found, "no message/disposition-notification part"
    lines = found.group(1).decode("utf-8").split("\r\n")
    return dict(line.split(": ", 1) for line in lines)


def check_answer(
    raw: bytes,
    sent: bytes,
    *,
    code: int | None,
    receiving: str,
    to: str,
    subject: str,
    zip_bytes: bytes,
    pdf: bytes | None = None,
    mdn: bool = True,
) -> str:
    """Assert the answer is exactly what the guide shows; returns its human text."""
    answer = email.message_from_bytes(raw, policy=policy.compat32)
    assert answer["From"] == receiving and answer["To"] == to
    expected_subject = subject if code is None else f"[KO Intégration système !][{code}] {subject}"
    assert _subject(answer) == expected_subject
    assert answer["Auto-Submitted"] == "auto-replied"
    sent_msg = email.message_from_bytes(sent, policy=policy.compat32)
    assert answer["In-Reply-To"] == sent_msg["Message-ID"]
    parts = answer.get_payload()
    assert isinstance(parts, list)
    kinds = [p.get_content_type() for p in parts]
    tail = ["application/zip"] + (["application/pdf"] if pdf is not None else [])
    if mdn:
        assert answer.get_content_type() == "multipart/report"
        assert answer.get_param("report-type") == "disposition-notification"
        assert kinds == ["text/plain", "message/disposition-notification", "message/rfc822", *tail]
        disposition = PROCESSED if code is None else f"{PROCESSED}/Error: {code}^{LIBELLES[code]}"
        assert _fields(raw) == {
            "Original-Recipient": f"rfc822;{receiving}",
            "Final-Recipient": f"rfc822;{receiving}",
            "Original-Message-ID": sent_msg["Message-ID"],
            "Disposition": disposition,
        }
    else:
        assert answer.get_content_type() == "multipart/mixed"
        assert kinds == ["text/plain", "message/rfc822", *tail]
    original = parts[kinds.index("message/rfc822")]
    assert original.get_payload()[0]["Message-ID"] == sent_msg["Message-ID"]  # type: ignore[index]
    assert sent.split(b"\r\n\r\n", 1)[1] in raw  # the original body, byte for byte
    zip_part = parts[len(kinds) - len(tail)]
    assert zip_part.get_filename() == "IHE_XDM.zip" and zip_part.get_payload(decode=True) == zip_bytes
    if pdf is not None:
        pdf_part = parts[-1]
        assert pdf_part.get_payload(decode=True) == pdf
        assert str(make_header(decode_header(pdf_part.get_filename() or ""))) == PDF_NAME
    text = parts[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    human = text.decode("utf-8")
    if code is not None:
        assert f"{code} {LIBELLES[code]}" in human
    return human


def _subject_for(cast: Cast, n: int, libelle: str) -> str:
    t = cast.patients[n]["traits"]
    born = t["birth_date"].replace("-", "")
    return f"XDM/1.0/DDM+{libelle} {t['birth_name']} {t['first_given_name']} {born}"


def deposit(
    cast: Cast,
    pkg: Package,
    *,
    login: str,
    sender: str | None = None,
    code: int | None,
    libelle: str = "CR d'hospitalisation",
    patient: int = 0,
    pdf: bytes | None = None,
    **mail_options: Any,
) -> tuple[bytes, str]:
    """Send ``pkg`` from ``sender`` (default: the login's own BAL), read the MDN from the sender's
    BAL over IMAPS and check it; returns the zip and the human text."""
    sender = sender or login
    zip_bytes = build(pkg)
    subject = _subject_for(cast, patient, libelle)
    codes = ",".join(d.type_code for d in pkg.docs if d.kind == "CDA")
    msg = mail(
        cast, sender=sender, zip_bytes=zip_bytes, subject=subject, codecda=codes, pdf=pdf, **mail_options
    )
    sent = send(cast, msg, login=login, mail_from=sender)
    [raw] = answers_to(cast, str(msg["Message-ID"]), login=login, bal=sender)
    human = check_answer(
        raw,
        sent,
        code=code,
        receiving=str(msg["To"]),
        to=sender,
        subject=subject,
        zip_bytes=zip_bytes,
        pdf=pdf,
    )
    return zip_bytes, human


def cr(author: Author, **kw: Any) -> Doc:
    return Doc("34112-3", "CR d'hospitalisation", author, **kw)


# -- the guide's own example, and packages as the public examples write them -------------------------
def test_guide_example_dpi_of_a_service_sends_cr_and_pdf(
    cast: Cast, documents_of: Callable[[str], dict[str, Any]]
) -> None:
    """The guide's case: a hospital service's automatic (APP) BAL sends an imaging report authored
    by one of its physicians, namespaced ^NH patient id, PDF beside the zip; the MDN comes back
    to that BAL from the receiving BAL, with the original message, the zip and the PDF."""
    p = cast.patient()
    image = Doc("18748-4", "CR d'imagerie médicale", cast.durand)
    pdf = Doc(
        "18748-4", "CR d'imagerie médicale (PDF)", cast.durand, kind="PDF", pdf=b"%PDF-1.4\n%corpus\n%%EOF\n"
    )
    pkg = Package(p, [image, pdf], cx="{ins}^^^ASIP-SANTE-NIR&{oid}&ISO^NH")
    dpi = cast.addr("dpi")
    _, human = deposit(cast, pkg, login=dpi, code=None, libelle="CR d'imagerie médicale", pdf=pdf.pdf)
    assert "2 document(s) deposited" in human
    docs = documents_of(p.ins)
    assert docs[image.unique_id]["author_idnat"] == cast.durand.idnat
    assert docs[pdf.unique_id]["format"] == "PDF"


CASES: list[tuple[str, Callable[[Cast], Package], str]] = [
    (
        "no type code",
        lambda c: Package(c.patient(), [cr(c.martin)], cx="{ins}^^^&{oid}&ISO"),
        "claire.martin",
    ),
    (
        "type code INS",
        lambda c: Package(c.patient(1), [cr(c.durand)], cx="{ins}^^^&{oid}&ISO^INS"),
        "paul.durand",
    ),
    (
        "DocumentEntry patientId only",
        lambda c: Package(c.patient(), [cr(c.martin)], submission_set_patient=False),
        "claire.martin",
    ),
    (
        "SubmissionSet patientId only",
        lambda c: Package(c.patient(), [cr(c.martin)], entry_patient=False),
        "claire.martin",
    ),
    (
        "sourcePatientInfo present (never decisive)",
        lambda c: Package(c.patient(), [cr(c.martin)], source_patient_info=True),
        "claire.martin",
    ),
    (
        "bare RPPS in authorPerson",
        lambda c: Package(c.patient(), [cr(Author(c.martin.idnat[1:], "MARTIN", "Claire"))]),
        "claire.martin",
    ),
    (
        "several CDAs and a PDF",
        lambda c: Package(
            c.patient(),
            [
                cr(c.martin),
                Doc("11490-0", "Lettre de liaison", c.martin),
                Doc("34112-3", "CR (PDF)", c.martin, kind="PDF"),
            ],
        ),
        "claire.martin",
    ),
    ("DPI of the CH for Dr DURAND", lambda c: Package(c.patient(1), [cr(c.durand)]), "dpi"),
    (
        "INS without birthplace",
        lambda c: Package(c.patient(birthplace=None), [cr(c.martin)]),
        "claire.martin",
    ),
]


@pytest.mark.parametrize(("name", "make", "login"), CASES, ids=[c[0] for c in CASES])
def test_conforming_packages_are_deposited(
    cast: Cast,
    documents_of: Callable[[str], dict[str, Any]],
    name: str,
    make: Callable[[Cast], Package],
    login: str,
) -> None:
    pkg = make(cast)
    index = [p["ins"] for p in cast.patients].index(pkg.patient.ins)
    deposit(cast, pkg, login=cast.addr(login), code=None, patient=index)
    docs = documents_of(pkg.patient.ins)
    assert all(d.unique_id in docs for d in pkg.docs), name


def test_secretary_sends_for_her_doctor_and_org_bal_for_its_physician(
    cast: Cast, documents_of: Callable[[str], dict[str, Any]]
) -> None:
    p = cast.patient()
    by_secretary = Package(p, [cr(cast.martin)])
    deposit(
        cast, by_secretary, login=cast.addr("secretaire.martin"), sender=cast.addr("claire.martin"), code=None
    )
    by_service = Package(p, [cr(cast.martin)])
    deposit(cast, by_service, login=cast.addr("paul.durand"), sender=cast.addr("cardiologie"), code=None)
    docs = documents_of(p.ins)
    assert by_secretary.docs[0].unique_id in docs and by_service.docs[0].unique_id in docs


def test_replacement_by_unique_id_and_by_entry_uuid_then_900_and_deletion(
    cast: Cast, documents_of: Callable[[str], dict[str, Any]]
) -> None:
    p, martin = cast.patient(), cast.addr("claire.martin")
    first = cr(cast.martin)
    deposit(cast, Package(p, [first]), login=martin, code=None)
    second = cr(cast.martin, replaces=first.unique_id)  # RPLC naming the uniqueId
    deposit(cast, Package(p, [second]), login=martin, code=None)
    third = cr(cast.durand, replaces=second.entry_uuid)  # a colleague of the CH, naming the entryUUID
    deposit(cast, Package(p, [third]), login=cast.addr("dpi"), code=None)
    docs = documents_of(p.ins)
    assert third.unique_id in docs and first.unique_id not in docs and second.unique_id not in docs
    assert docs[third.unique_id]["replaces"] == second.unique_id
    # 900: replacing a version that is no longer the current one
    stale = cr(cast.martin, replaces=first.unique_id)
    deposit(cast, Package(p, [stale]), login=martin, code=900)
    # deletion (UpdateAvailabilityStatus → Deprecated) of the current version by its author's colleague
    evidence = Doc("34112-3", "CR d'hospitalisation", cast.martin, unique_id=third.unique_id)
    _, human = deposit(cast, Package(p, [evidence], deletions=[third.unique_id]), login=martin, code=None)
    assert "1 deleted" in human
    assert third.unique_id not in documents_of(p.ins)
    # 900: deleting what is already deleted, and what never existed
    deposit(cast, Package(p, [evidence], deletions=[third.unique_id]), login=martin, code=900)
    ghost = uid()
    deposit(
        cast,
        Package(p, [Doc("34112-3", "CR", cast.martin, unique_id=ghost)], deletions=[ghost]),
        login=martin,
        code=900,
    )


def test_901_replacement_by_someone_outside_the_authors_organisation(cast: Cast) -> None:
    p = cast.patient()
    original = cr(cast.martin)
    deposit(cast, Package(p, [original]), login=cast.addr("claire.martin"), code=None)
    bernard = Author(BERNARD_IDNAT, "BERNARD", "Sophie", specialty="21", institution="1750000027")
    intruder = Doc("34112-3", "CR d'hospitalisation", bernard, replaces=original.unique_id)
    deposit(cast, Package(p, [intruder]), login=cast.addr("pharmacie.parc"), code=901)


ERRORS: list[tuple[str, Callable[[Cast], Package], int]] = [
    ("902 unknown INS", lambda c: Package(c.patient(ins="185057800608491"), [cr(c.martin)]), 902),
    (
        "903 only a local IPP in the CDA",
        lambda c: Package(
            c.patient(with_ins=False), [cr(c.martin)], cx="IPP000123^^^&1.2.250.1.213.1.4.2.99&ISO^PI"
        ),
        903,
    ),
    (
        "903 no patient identifier at all",
        lambda c: Package(c.patient(with_ins=False, local_ids=()), [cr(c.martin)], cx="X^^^&1.2.3&ISO^PI"),
        903,
    ),
    ("904 birth name differs", lambda c: Package(c.patient(birth_name="DUPONTEL"), [cr(c.martin)]), 904),
    ("904 birth date differs", lambda c: Package(c.patient(birth_date="19800116"), [cr(c.martin)]), 904),
    ("904 given names differ", lambda c: Package(c.patient(given_names="Marie"), [cr(c.martin)]), 904),
    (
        "904 metadata names another INS",
        lambda c: Package(c.patient(), [cr(c.martin)], ss_patient_override="185057800608491^^^&{oid}&ISO^NH"),
        904,
    ),
    ("905 no birth name", lambda c: Package(c.patient(birth_name=None), [cr(c.martin)]), 905),
    (
        "905 no birth date nor sex",
        lambda c: Package(c.patient(birth_date=None, sex=None), [cr(c.martin)]),
        905,
    ),
    ("906 hash mismatch", lambda c: Package(c.patient(), [cr(c.martin, corrupt_hash=True)]), 906),
    (
        "906 author outside the DPI's structure",
        lambda c: Package(c.patient(), [cr(Author(BERNARD_IDNAT, "BERNARD", "Sophie"))]),
        906,
    ),
]


@pytest.mark.parametrize(("name", "make", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_codes_from_real_packages(
    cast: Cast,
    documents_of: Callable[[str], dict[str, Any]],
    name: str,
    make: Callable[[Cast], Package],
    code: int,
) -> None:
    pkg = make(cast)
    login = "dpi" if "DPI" in name else "claire.martin"
    deposit(cast, pkg, login=cast.addr(login), code=code)
    assert not any(d.unique_id in documents_of(cast.patients[0]["ins"]) for d in pkg.docs)


def test_without_dnt_success_is_silent_and_error_is_a_plain_mail(
    cast: Cast, documents_of: Callable[[str], dict[str, Any]]
) -> None:
    martin = cast.addr("claire.martin")
    good = Package(cast.patient(), [cr(cast.martin)])
    zip_ok = build(good)
    msg = mail(cast, sender=martin, zip_bytes=zip_ok, subject=_subject_for(cast, 0, "CR"), dnt=None)
    send(cast, msg, login=martin)
    deadline = time.monotonic() + 30
    while good.docs[0].unique_id not in documents_of(good.patient.ins):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1)
    assert answers_to(cast, str(msg["Message-ID"]), login=martin, bal=martin, wait=0) == []
    bad = Package(cast.patient(ins="185057800608491"), [cr(cast.martin)])
    zip_bad = build(bad)
    subject = _subject_for(cast, 0, "CR")
    msg = mail(cast, sender=martin, zip_bytes=zip_bad, subject=subject, dnt=None)
    sent = send(cast, msg, login=martin)
    [raw] = answers_to(cast, str(msg["Message-ID"]), login=martin, bal=martin)
    check_answer(
        raw, sent, code=902, receiving=cast.gateway, to=martin, subject=subject, zip_bytes=zip_bad, mdn=False
    )


def test_no_automatic_mdn_when_dnt_differs_from_return_path(cast: Cast) -> None:
    """RFC 8098 §2.1 and the guide: DNT elsewhere than Return-Path gets no MDN; an error still
    gets the plain mail, to the Return-Path."""
    martin, durand = cast.addr("claire.martin"), cast.addr("paul.durand")
    bad = Package(cast.patient(ins="185057800608491"), [cr(cast.martin)])
    zip_bad = build(bad)
    subject = _subject_for(cast, 0, "CR")
    msg = mail(cast, sender=martin, zip_bytes=zip_bad, subject=subject, dnt=durand)
    sent = send(cast, msg, login=martin)
    [raw] = answers_to(cast, str(msg["Message-ID"]), login=martin, bal=martin)
    check_answer(
        raw, sent, code=902, receiving=cast.gateway, to=martin, subject=subject, zip_bytes=zip_bad, mdn=False
    )
    assert answers_to(cast, str(msg["Message-ID"]), login=durand, bal=durand, wait=0) == []


def test_declarative_headers_are_reported_not_decisive(cast: Cast) -> None:
    martin = cast.addr("claire.martin")
    pkg = Package(cast.patient(), [cr(cast.martin)])
    _, human = deposit(cast, pkg, login=martin, code=None, ins_header="N")
    assert "X-MSS-INS: N" in human
    pkg = Package(cast.patient(), [cr(cast.martin)])
    zip_bytes = build(pkg)
    subject = _subject_for(cast, 0, "CR")
    msg = mail(cast, sender=martin, zip_bytes=zip_bytes, subject=subject, codecda="11488-4")
    sent = send(cast, msg, login=martin)
    [raw] = answers_to(cast, str(msg["Message-ID"]), login=martin, bal=martin)
    human = check_answer(
        raw, sent, code=None, receiving=cast.gateway, to=martin, subject=subject, zip_bytes=zip_bytes
    )
    assert "X-MSS-CODECDA (11488-4) ne correspond pas" in human


def test_deposit_to_the_patient_bal_is_answered_from_that_bal(cast: Cast) -> None:
    martin = cast.addr("claire.martin")
    p = cast.patient()
    pkg = Package(p, [cr(cast.martin)])
    zip_bytes = build(pkg)
    subject = _subject_for(cast, 0, "CR")
    patient_bal = cast.patients[0]["address"]
    msg = mail(cast, sender=martin, zip_bytes=zip_bytes, subject=subject, to=patient_bal)
    sent = send(cast, msg, login=martin)
    [raw] = answers_to(cast, str(msg["Message-ID"]), login=martin, bal=martin)
    check_answer(raw, sent, code=None, receiving=patient_bal, to=martin, subject=subject, zip_bytes=zip_bytes)


def test_demo_json_carries_what_a_dpi_harness_needs(demo: DemoServer) -> None:
    doc = demo.doc
    assert doc["dmp_gateway"] == f"dmp@{doc['domain']}"
    martin = demo.account(f"claire.martin@{doc['domain']}")
    assert martin["idnat"] == "8" + martin["rpps"] and len(martin["rpps"]) == 11
    for patient in (a for a in doc["accounts"] if a["kind"] == "patient"):
        assert patient["address"] == f"{patient['ins']}@{doc['patient_domain']}"
        assert patient["ins_oid"] == "1.2.250.1.213.1.4.11"
        assert set(patient["traits"]) == {
            "birth_name", "first_given_name", "given_names", "birth_date", "sex", "birthplace"
        }  # fmt: skip
