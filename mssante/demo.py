"""Demo mode (``mssante serve --demo``): a realistic operator anyone can try with a mail client.

It creates, once, in the data directory: the development PKI, an operator ``demo.mssante.fr``
hosting two doctors (PER BALs bound to their RPPS), a medical secretary with a delegation on
Dr MARTIN's BAL, a cardiology service (ORG BAL, responsible Dr DURAND, members Dr MARTIN and the
front desk), a pharmacy (ORG BAL of a pharmacie d'officine), a hospital software (APP BAL with a
client certificate) and two patients with qualified INS; and writes ``demo.json``, whose shape
is a public contract (scripts and people use it to connect; extend it, never break it)::

    {"domain", "patient_domain", "ca_cert", "dmp_gateway",
     "listeners": [{"name", "protocol", "host", "port", "tls"}],
     "accounts": [{"address", "kind", "login", "password", "client_cert", "client_key", "delegated",
                   "delegations": [{"address", "rights", "via", "username"}],
                   "rpps", "idnat",                 # professional accounts
                   "ins", "ins_oid", "traits"}]}    # patient accounts: what a DPI puts in its CDA

``delegated`` lists every other BAL the login may open (as addresses, its original shape);
``delegations`` says, for each, the rights, how (holder, member, delegate) and the user name
that opens it as the session's own mailbox.

The demo patients' INS carry the INS-NIR *demo* OID (1.2.250.1.213.1.4.11): they are not real
identities, and demo mode accepts the test and demo OIDs (``dmp.test_ins_oids``).

Passwords are random, made at the first start and kept in ``demo.json`` (mode 0600). Patient
accounts also carry their TOTP secret (``totp_secret``, demo only: the second factor of the
patient space) and every person's account the ``web`` URLs of the pages they use; each patient
has a few documents in the DMP so that the pages are not empty.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from annuaire import service as annuaire_service
from annuaire.identifiers import nir_key
from annuaire.lookup import Annuaire
from dmp.models import OID_INS_NIR_DEMO
from dmp.service import DMPService, Traits
from mssante.auth import accounts
from mssante.auth.devpki import DevCA, prepare_demo
from mssante.auth.identity import Identity
from mssante.auth.models import AccountCertificate
from mssante.auth.sasl import DELEGATE_SEPARATOR
from mssante.config import Settings
from mssante.crypto import KeyRing
from mssante.db import make_engine
from mssante.listening import RunningListener
from mssante.patients.identity import open_patient_bal
from mssante.policy import Policy
from mssante.smtp.dkim import generate_key, key_path

DEFAULT_DOMAIN = "demo.mssante.fr"
PATIENT_DOMAIN = "patient.mssante.fr"
ACTOR = "demo-setup"


def _password() -> str:
    """16 letters and digits: no leading "-" that command-line tools (swaks, curl) would take
    for an option, nothing a shell would need quoted."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


def _ins(first13: str) -> str:
    return f"{first13}{nir_key(first13):02d}"


@dataclass(frozen=True)
class DemoAccount:
    address: str
    kind: str  # professional | secretary | org | pharmacy | app | patient
    login: str
    identity_kind: str  # the auth account kind behind the login
    identifier: str | None
    display_name: str


CH: dict[str, Any] = {
    "identifier": "750000019",
    "raison_sociale": "Centre hospitalier de Démo",
    "categorie": "101",
}
PHARMACY: dict[str, Any] = {
    "identifier": "750000027",
    "raison_sociale": "Pharmacie du Parc",
    "categorie": "620",
}
MARTIN: dict[str, Any] = {
    "idnat": "810100000011",
    "nom": "MARTIN",
    "prenom": "Claire",
    "profession_code": "10",
}
DURAND: dict[str, Any] = {"idnat": "810100000029", "nom": "DURAND", "prenom": "Paul", "profession_code": "10"}
BERNARD: dict[str, Any] = {
    "idnat": "810100000037",
    "nom": "BERNARD",
    "prenom": "Sophie",
    "profession_code": "21",
}
PATIENTS: list[dict[str, Any]] = [
    {
        "ins": _ins("2800175123456"),
        "name": "Marie DUPONT",
        "traits": Traits("DUPONT", "Marie", "Marie Anne", date(1980, 1, 15), "F", "75056"),
    },
    {
        "ins": _ins("1750569123789"),
        "name": "Jean LEROY",
        "traits": Traits("LEROY", "Jean", "Jean Pierre", date(1975, 5, 20), "M", "69123"),
    },
]


# A minor with a DMP but no account: his mother (the first patient) is his legal representative.
CHILD: dict[str, Any] = {
    "ins": _ins("1150675123456"),
    "traits": Traits("DUPONT", "Léo", "Léo Paul", date(2015, 6, 1), "M", "75056"),
}


def demo_accounts(domain: str) -> list[DemoAccount]:
    """The demo logins of an operator hosting ``domain`` (its first configured domain)."""
    return [
        DemoAccount(
            f"claire.martin@{domain}",
            "professional",
            f"claire.martin@{domain}",
            "professional",
            MARTIN["idnat"],
            "Dr Claire MARTIN",
        ),
        DemoAccount(
            f"paul.durand@{domain}",
            "professional",
            f"paul.durand@{domain}",
            "professional",
            DURAND["idnat"],
            "Dr Paul DURAND",
        ),
        DemoAccount(
            f"cardiologie@{domain}",
            "org",
            f"paul.durand@{domain}",
            "professional",
            DURAND["idnat"],
            "Service de cardiologie",
        ),
        DemoAccount(
            f"pharmacie.parc@{domain}",
            "pharmacy",
            f"sophie.bernard@{domain}",
            "professional",
            BERNARD["idnat"],
            "Pharmacie du Parc",
        ),
        DemoAccount(f"dpi@{domain}", "app", f"dpi@{domain}", "application", None, "DPI du CH de Démo"),
        # A medical secretary with a delegation on Dr MARTIN's BAL (reads, sorts, sends on behalf).
        DemoAccount(
            f"secretaire.martin@{domain}",
            "secretary",
            f"secretaire.martin@{domain}",
            "staff",
            "secretaire.martin",
            "Julie ROBERT (secrétariat du Dr MARTIN)",
        ),
        # The cardiology service's front desk: a member of the ORG BAL.
        DemoAccount(
            f"accueil.cardiologie@{domain}",
            "secretary",
            f"accueil.cardiologie@{domain}",
            "staff",
            "accueil.cardiologie",
            "Accueil de cardiologie",
        ),
        *(
            DemoAccount(
                f"{p['ins']}@{PATIENT_DOMAIN}",
                "patient",
                f"{p['ins']}@{PATIENT_DOMAIN}",
                "patient",
                p["ins"],
                p["name"],
            )
            for p in PATIENTS
        ),
    ]


def demo_settings(settings: Settings) -> list[str]:
    """Adjust settings for demo mode (domains, PKI, demo identity provider)."""
    done = prepare_demo(settings)
    domain = operator_domain(settings)
    domains = list(dict.fromkeys([*settings.server.domains, domain, PATIENT_DOMAIN]))
    if domains != settings.server.domains:
        settings.server.domains = domains
    settings.server.patient_domain = PATIENT_DOMAIN
    settings.dmp.gateway_address = f"dmp@{domain}"
    settings.dmp.test_ins_oids = True  # DPI test harnesses use the INS-NIR test and demo OIDs
    assert settings.dkim.keys_dir is not None
    if not key_path(settings.dkim.keys_dir, domain, settings.dkim.selector).exists():
        generate_key(settings.dkim.keys_dir, domain, settings.dkim.selector)
        done.append(f"created the DKIM key of {domain} (selector {settings.dkim.selector})")
    return done


def operator_domain(settings: Settings) -> str:
    """The demo operator's domain: the first configured domain (``demo.mssante.fr`` by default)."""
    return settings.server.domains[0] if settings.server.domains else DEFAULT_DOMAIN


def _populate(session: Session, domain: str) -> None:
    svc = annuaire_service
    svc.add_structure(session, id_type="FINESS", actor=ACTOR, **CH)
    svc.add_structure(session, id_type="FINESS", actor=ACTOR, **PHARMACY)
    for person in (MARTIN, DURAND, BERNARD):
        svc.add_professional(session, actor=ACTOR, **person)
    # The two doctors practise at the CH: their PER BALs hang on it, so the CH's DPI (APP BAL) may
    # deposit in the DMP the documents they author.
    for who, person in ((f"claire.martin@{domain}", MARTIN), (f"paul.durand@{domain}", DURAND)):
        svc.add_bal(
            session,
            address=who,
            type="PER",
            professional=person["idnat"],
            structure=CH["identifier"],
            actor=ACTOR,
        )
    svc.add_bal(
        session,
        address=f"cardiologie@{domain}",
        type="ORG",
        structure=CH["identifier"],
        responsible=DURAND["idnat"],
        service="Cardiologie",
        description="Secrétariat de cardiologie",
        actor=ACTOR,
    )
    svc.add_bal(
        session,
        address=f"pharmacie.parc@{domain}",
        type="ORG",
        structure=PHARMACY["identifier"],
        responsible=BERNARD["idnat"],
        description="Pharmacie d'officine",
        actor=ACTOR,
    )
    svc.add_bal(
        session,
        address=f"dpi@{domain}",
        type="APP",
        structure=CH["identifier"],
        responsible=DURAND["idnat"],
        description="Envois automatiques du DPI",
        actor=ACTOR,
    )
    # The DMP gateway: messages carrying an IHE XDM package sent here are deposited in the DMP.
    svc.add_bal(
        session,
        address=f"dmp@{domain}",
        type="APP",
        structure=CH["identifier"],
        responsible=DURAND["idnat"],
        description="Passerelle DMP (dépôt des paquets XDM)",
        actor=ACTOR,
    )
    for patient in PATIENTS:
        open_patient_bal(session, ins=patient["ins"], domain=PATIENT_DOMAIN, actor=ACTOR)
    svc.add_operator_domain(session, domain=domain, actor=ACTOR)
    svc.add_operator_domain(session, domain=PATIENT_DOMAIN, actor=ACTOR)


def _qualify_patients(settings: Settings, engine: Engine) -> None:
    """The demo patients' INS, qualified with their traits, in the register of identities (the
    DMP's): a patient BAL is opened only for a qualified INS."""
    service = DMPService(engine, engine, KeyRing.load(settings.keyring_path), settings)
    for patient in PATIENTS:
        service.add_patient(
            ins=patient["ins"], traits=patient["traits"], ins_oid=OID_INS_NIR_DEMO, actor=ACTOR
        )


def _create_logins(
    session: Session,
    certs_dir: Path,
    passwords: dict[str, str],
    logins: list[DemoAccount],
    known: set[str],
) -> dict[str, dict[str, str]]:
    """Accounts behind the demo logins; returns client certificate paths of APP accounts."""
    client_files: dict[str, dict[str, str]] = {}
    for acct in logins:
        existing = accounts.get(session, acct.login)
        if existing is not None and acct.identity_kind != "application" and acct.login not in known:
            # demo.json was lost: give the account a password demo.json will tell again.
            accounts.set_password(session, acct.login, passwords[acct.login], actor=ACTOR)
        if existing is None:
            if acct.identity_kind == "application":
                accounts.create(
                    session, acct.login, "application", display_name=acct.display_name, actor=ACTOR
                )
            else:
                accounts.create(
                    session,
                    acct.login,
                    acct.identity_kind,
                    acct.identifier,
                    display_name=acct.display_name,
                    password=passwords[acct.login],
                    actor=ACTOR,
                )
        if acct.identity_kind == "application":
            cert = certs_dir / "clients" / f"{acct.login}.pem"
            key = certs_dir / "clients" / f"{acct.login}.key"
            if not cert.exists():
                issued = DevCA.load(certs_dir).issue_client(certs_dir / "clients", acct.login)
                cert, key = issued.cert_file, issued.key_file
                accounts.add_certificate(session, acct.login, cert.read_bytes(), actor=ACTOR)
            client_files[acct.login] = {"cert": str(cert.resolve()), "key": str(key.resolve())}
    return client_files


@dataclass(frozen=True)
class _DemoBal:
    """The facts of a demo BAL the delegation rules need (the annuaire rows are not committed yet)."""

    key: str
    type: str
    professional_idnat: str | None = None
    responsible_idnat: str | None = None
    active: bool = True
    ins: str | None = None


DEMO_RIGHTS = "lrswite send"  # read, sort, file into folders, send on behalf


def _delegate(session: Session, domain: str) -> None:
    """The demo's delegation and memberships, each written once (a revocation made later by
    the operator is not undone by the next start)."""
    from delegation import grants
    from delegation.models import Grant
    from delegation.rights import parse_rights

    wanted = [
        (_DemoBal(f"claire.martin@{domain}", "PER", professional_idnat=MARTIN["idnat"]),
         Identity.staff("secretaire.martin"), "delegate"),
        (_DemoBal(f"cardiologie@{domain}", "ORG", responsible_idnat=DURAND["idnat"]),
         Identity.professional(MARTIN["idnat"]), "member"),
        (_DemoBal(f"cardiologie@{domain}", "ORG", responsible_idnat=DURAND["idnat"]),
         Identity.staff("accueil.cardiologie"), "member"),
    ]  # fmt: skip
    for bal, grantee, role in wanted:
        exists = session.scalars(
            select(Grant.id).where(
                Grant.bal == bal.key, Grant.grantee == grantee.principal, Grant.role == role
            )
        ).first()
        if exists is None:
            grants.grant(
                session,
                bal=bal,
                grantee=grantee,
                rights=parse_rights(DEMO_RIGHTS),
                actor=None,
                operator=ACTOR,
                reason="demo operator",
                role=role,
                source="demo",
            )


def _identity(session: Session, login: str) -> Identity | None:
    account = accounts.get(session, login)
    if account is None:
        return None
    if account.kind != "application":
        return accounts.identity_of(account)
    cert = session.scalars(
        select(AccountCertificate).where(AccountCertificate.account_id == account.id)
    ).first()
    return Identity.application(cert.subject, cert.fingerprint, login=login) if cert is not None else None


def _username(bal: str, login: str) -> str:
    """What a mail client is given as user name to open ``bal`` as its own mailbox."""
    return login if bal == login.lower() else f"{bal}{DELEGATE_SEPARATOR}{login}"


def _reach(settings: Settings, engine: Engine, logins: list[DemoAccount]) -> dict[str, list[dict[str, Any]]]:
    """For each demo address, every other BAL its login may open, as the server decides it
    (``delegation.reach``): the address, the rights, how (holder, member, delegate) and the user
    name that opens it as the session's own mailbox (``<BAL>*<login>``; None for a certificate)."""
    from delegation.grants import GrantBook
    from delegation.reach import reachable, via
    from delegation.rights import format_rights

    book = GrantBook(engine)
    policy = Policy(Annuaire(engine), settings.server.domains, grants=book)
    with Session(engine) as session:
        identities = {acct.login: _identity(session, acct.login) for acct in logins}
    out: dict[str, list[dict[str, Any]]] = {}
    for acct in logins:
        identity = identities[acct.login]
        if identity is not None:
            password = acct.identity_kind != "application"
            out[acct.address] = [
                {
                    "address": r.bal.address,
                    "rights": format_rights(r.rights),
                    "via": via(book, identity, r),
                    "username": _username(r.bal.key, acct.login) if password else None,
                }
                for r in reachable(policy, book, identity)
                if r.bal.key != acct.address.lower()
            ]
    return out


def setup(settings: Settings) -> dict[str, Any]:
    """Create the demo operator if absent (idempotent); returns the demo.json document so far."""
    path = settings.data_dir / "demo.json"
    domain = operator_domain(settings)
    logins = demo_accounts(domain)
    previous = json.loads(path.read_text()) if path.exists() else {}
    known = {a["login"]: a.get("password") for a in previous.get("accounts", [])}
    passwords = {
        a.login: known.get(a.login) or _password() for a in logins if a.identity_kind != "application"
    }
    certs_dir = settings.data_dir / "certs"
    engine = make_engine(settings.database_url, writer=True)
    try:
        _qualify_patients(settings, engine)
        with Session(engine) as session, session.begin():
            _populate(session, domain)
            known_logins = {login for login, password in known.items() if password}
            client_files = _create_logins(session, certs_dir, passwords, logins, known_logins)
            _delegate(session, domain)
        totp = _patient_totp(settings, engine, logins, previous)
        _demo_documents(settings, engine)
    finally:
        engine.dispose()
    reader = make_engine(settings.database_url)
    try:
        reach = _reach(settings, reader, logins)
    finally:
        reader.dispose()
    return {
        "domain": domain,
        "patient_domain": PATIENT_DOMAIN,
        "ca_cert": str(Path(settings.tls.ca_file or certs_dir / "ca.pem").resolve()),
        "listeners": [],
        "accounts": [
            {
                "address": a.address,
                "kind": a.kind,
                "login": a.login,
                "password": passwords.get(a.login),
                "client_cert": client_files.get(a.login, {}).get("cert"),
                "client_key": client_files.get(a.login, {}).get("key"),
                "delegated": [d["address"] for d in reach.get(a.address, [])],
                "delegations": reach.get(a.address, []),
                **_dpi_fields(a),
                **({"totp_secret": totp[a.login]} if a.login in totp else {}),
            }
            for a in logins
        ],
        "dmp_gateway": settings.dmp.gateway_address,
    }


def _dpi_fields(account: DemoAccount) -> dict[str, Any]:
    """What a DPI test harness needs to write a package: RPPS and IdNat_PS of professionals, INS,
    INS OID and traits of patients (as the CDA ``recordTarget`` must carry them)."""
    if account.kind == "professional" and account.identifier:
        return {"rpps": account.identifier[1:], "idnat": account.identifier}
    patient = next((p for p in PATIENTS if p["ins"] == account.identifier), None)
    if account.kind != "patient" or patient is None:
        return {}
    t: Traits = patient["traits"]
    traits = {
        "birth_name": t.birth_name,
        "first_given_name": t.first_given_name,
        "given_names": t.given_names,
        "birth_date": t.birth_date.isoformat(),
        "sex": t.sex,
        "birthplace": t.birthplace,
    }
    return {"ins": patient["ins"], "ins_oid": OID_INS_NIR_DEMO, "traits": traits}


def write_demo_json(settings: Settings, document: dict[str, Any], listeners: list[RunningListener]) -> Path:
    document = dict(document)
    http = next((item for item in listeners if item.name == "http" and item.public), None)
    if http is not None:
        base = f"{'https' if http.tls != 'none' else 'http'}://{http.host}:{http.port}"
        spaces = {"patient": "patient", "professional": "pro", "secretary": "pro", "pharmacy": "pro"}
        document["accounts"] = [
            {**a, "web": f"{base}/{spaces[a['kind']]}/"} if a["kind"] in spaces else a
            for a in document["accounts"]
        ]
    document["listeners"] = [
        {"name": item.name, "protocol": item.protocol, "host": item.host, "port": item.port, "tls": item.tls}
        for item in listeners
        if item.public
    ]
    path = settings.data_dir / "demo.json"
    tmp = path.with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(document, fh, indent=2, ensure_ascii=False)
    os.replace(tmp, path)
    return path


def _patient_totp(
    settings: Settings, engine: Engine, logins: list[DemoAccount], previous: dict[str, Any]
) -> dict[str, str]:
    """Each demo patient's TOTP secret (the patient space's second factor; mail clients keep
    logging in with the password alone), enrolled once and told again by demo.json; enrolled
    anew when demo.json lost it."""
    from mssante.web import second_factor

    known = {a["login"]: a.get("totp_secret") for a in previous.get("accounts", [])}
    ring = KeyRing.load(settings.keyring_path)
    secrets_out: dict[str, str] = {}
    with Session(engine) as session, session.begin():
        for acct in logins:
            if acct.kind != "patient":
                continue
            if second_factor.enrolled(session, acct.login) and known.get(acct.login):
                secrets_out[acct.login] = str(known[acct.login])
            else:
                secrets_out[acct.login] = second_factor.enrol(session, ring, acct.login, actor=ACTOR)
    return secrets_out


def _demo_documents(settings: Settings, engine: Engine) -> None:
    """The demo record: a care team, a médecin traitant and a few documents per patient
    (written once: a patient with documents is left as they made it)."""
    reader = make_engine(settings.database_url)  # reads (the annuaire) outside the write lock
    try:
        _feed_demo(DMPService(reader, engine, KeyRing.load(settings.keyring_path), settings))
    finally:
        reader.dispose()


def _feed_demo(service: DMPService) -> None:
    from dmp.service import DocumentMeta

    # Marie DUPONT's son, a minor without an account of his own: she is his legal representative.
    child = CHILD["ins"]
    service.add_patient(ins=child, traits=CHILD["traits"], ins_oid=OID_INS_NIR_DEMO, actor=ACTOR)
    service.add_legal_representative(child, PATIENTS[0]["ins"], actor=ACTOR)
    service.add_care_team(child, MARTIN["idnat"], actor=ACTOR)
    if not service.list_documents(Identity.patient(child), child):
        service.feed(Identity.professional(MARTIN["idnat"]), child,
                     _cda(child, "11369-6", "Historique des vaccinations"),
                     DocumentMeta("11369-6", "Historique des vaccinations"))  # fmt: skip
    martin, durand = Identity.professional(MARTIN["idnat"]), Identity.professional(DURAND["idnat"])
    for patient in PATIENTS:
        ins = patient["ins"]
        if service.list_documents(Identity.patient(ins), ins):
            continue
        service.add_care_team(ins, MARTIN["idnat"], actor=ACTOR)
        if patient is PATIENTS[0]:
            service.add_care_team(ins, DURAND["idnat"], actor=ACTOR)
            service.set_medecin_traitant(Identity.patient(ins), ins, MARTIN["idnat"])
        service.feed(martin, ins, _cda(ins, "11488-4", "Compte rendu de consultation"),
                     DocumentMeta("11488-4", "Compte rendu de consultation"))  # fmt: skip
        service.feed(durand, ins, _cda(ins, "11502-2", "Bilan sanguin", DURAND),
                     DocumentMeta("11502-2", "Bilan sanguin"))  # fmt: skip
        service.feed(martin, ins, _PDF, DocumentMeta("57833-6", "Ordonnance de sortie", format="PDF",
                                                      mime_type="application/pdf"))  # fmt: skip
        service.feed(martin, ins, _cda(ins, "11369-6", "Historique des vaccinations"),
                     DocumentMeta("11369-6", "Historique des vaccinations"))  # fmt: skip


def _one_page_pdf(line: str) -> bytes:
    """A valid one-page PDF showing ``line`` (ASCII), with its cross-reference table, so that a
    viewer opens the demo's PDF documents (the pages' inline preview) instead of failing."""
    text = f"BT /F1 18 Tf 72 760 Td ({line}) Tj ET".encode()
    objects = [
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 4 0 R/Resources<</Font<</F1 5 0 R>>>>>>",
        b"<</Length %d>>stream\n%s\nendstream" % (len(text), text),
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


_PDF = _one_page_pdf("Ordonnance de sortie - document de demonstration")


def _cda(ins: str, code: str, title: str, author: dict[str, Any] = MARTIN) -> bytes:
    """A small CDA R2 of the demo: header (patient, author, date) and one readable section."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">'
        f'<code code="{code}" codeSystem="2.16.840.1.113883.6.1"/><title>{title}</title>'
        '<effectiveTime value="20261201103000+0100"/>'
        f'<recordTarget><patientRole><id root="{OID_INS_NIR_DEMO}" extension="{ins}"/></patientRole>'
        "</recordTarget><author><assignedAuthor><assignedPerson><name><prefix>Dr</prefix>"
        f"<given>{author['prenom']}</given><family>{author['nom']}</family></name></assignedPerson>"
        "</assignedAuthor></author>"
        "<component><structuredBody><component><section><title>Conclusion</title><text>"
        "<paragraph>Examen clinique sans particularité. Tension artérielle 12/8.</paragraph>"
        "<paragraph>Contrôle dans six mois.</paragraph></text></section></component>"
        "</structuredBody></component></ClinicalDocument>"
    ).encode()
