"""``mssante dmp …``: patients of the DMP store, documents as a given professional sees them,
the access history, masking and deletion, and XDM packages for integrators.

Every command that touches documents acts *as* someone (``--as``): an IdNat_PS for a
professional, a 15-character INS for a patient or legal representative, anything else for a
staff member; the same rules as over HTTP apply and the action is traced. Exit codes: 0 done,
1 refused or failed (the reason on stderr, with its ANS code), 2 bad usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from mssante.cli._common import EXIT_USAGE, command_group, console, fail, settings
from mssante.cli._common import operator_actor as _operator

app = command_group("dmp", "DMP store: patients, documents, access history, XDM packages.")
patient_app = command_group("patient", "Patients of the DMP (INS, traits, consent state).")
documents_app = command_group("documents", "Documents of a patient, as a given actor sees them.")
xdm_app = command_group("xdm", "IHE XDM packages (for integrators and tests).")
app.add_typer(patient_app)
app.add_typer(documents_app)
app.add_typer(xdm_app)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
InsOption = Annotated[str, typer.Option("--ins", help="INS matricule (15 characters).")]
AsOption = Annotated[str, typer.Option("--as", help="Who acts: IdNat_PS, INS (patient) or staff id.")]
T = TypeVar("T")


@contextmanager
def _service() -> Iterator[Any]:
    """The DMP service of a runtime opened for this command; refusals exit 1 with their code."""
    from dmp.codes import CodesError
    from dmp.service import DMPError, DMPService
    from mssante.crypto import KeyRingError
    from mssante.runtime import open_runtime
    from mssante.schema import SchemaOutdated

    try:
        runtime = open_runtime(settings())
    except (SchemaOutdated, KeyRingError, OSError) as exc:
        fail(str(exc))
    try:
        service = DMPService.from_runtime(runtime)
        yield service
        service.notifier.close()
    except DMPError as exc:
        fail(f"[{exc.code}] {exc}")
    except CodesError as exc:
        fail(f"DMP reference tables: {exc}")
    finally:
        runtime.close()


def _identity(value: str) -> Any:
    from mssante.auth.identity import Identity, InvalidIdentity

    value = value.strip()
    try:
        if len(value) == 15:
            return Identity.patient(value)
        if value.isdigit():
            return Identity.professional(value)
        return Identity.staff(value)
    except InvalidIdentity as exc:
        fail(f"--as: {exc}", EXIT_USAGE)


def _print_patient(info: Any, as_json: bool) -> None:
    t = info.traits
    data = {
        "ins": info.ins, "ins_oid": info.ins_oid, "identity_status": info.identity_status,
        "birth_name": t.birth_name, "first_given_name": t.first_given_name, "given_names": t.given_names,
        "birth_date": t.birth_date.isoformat(), "sex": t.sex, "birthplace": t.birthplace,
        "opposition": info.opposition, "emergency_access": info.emergency_access,
        "care_team": list(info.care_team), "consents": list(info.consents),
        "legal_representatives": list(info.legal_representatives),
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(data))
        return
    for key, value in data.items():
        console.print(
            f"[bold]{key}[/]: {', '.join(value) if isinstance(value, list) else value}", highlight=False
        )


def _patient_change(work: Callable[[Any], T]) -> None:
    with _service() as service:
        _print_patient(work(service), False)


@patient_app.command("add")
def patient_add(
    ins: InsOption,
    birth_name: Annotated[str, typer.Option(help="Nom de naissance.")],
    first_given_name: Annotated[str, typer.Option(help="Premier prénom de naissance.")],
    birth_date: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="YYYY-MM-DD.")],
    sex: Annotated[str, typer.Option(help="M, F or I.")],
    given_names: Annotated[str | None, typer.Option(help="All given names (default: the first).")] = None,
    birthplace: Annotated[str | None, typer.Option(help="INSEE code of the birthplace.")] = None,
    status: Annotated[
        str, typer.Option(help="Identity status: PROV, VALI, QUAL (only QUAL is fed).")
    ] = "QUAL",
    oid: Annotated[str, typer.Option(help="INS OID (NIR, NIA, test, demo).")] = "1.2.250.1.213.1.4.8",
) -> None:
    """Create or update a patient (INS, traits, identity status)."""
    from dmp.service import Traits

    traits = Traits(
        birth_name, first_given_name, given_names or first_given_name, birth_date.date(), sex, birthplace
    )
    _patient_change(
        lambda s: s.add_patient(
            ins=ins, traits=traits, identity_status=status, ins_oid=oid, actor=_operator()
        )
    )


@patient_app.command("show")
def patient_show(ins: InsOption, as_json: JsonOption = False) -> None:
    """A patient's traits and consent state (operator view)."""
    with _service() as service:
        _print_patient(service.patient(ins), as_json)


@patient_app.command("care-team")
def patient_care_team(
    ins: InsOption,
    idnat: Annotated[str, typer.Option(help="IdNat_PS of the professional.")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove instead of add.")] = False,
) -> None:
    """Add a professional to the care team (presumed consent), or remove them."""
    if remove:
        _patient_change(lambda s: s.remove_care_team(ins, idnat, actor=_operator()))
    else:
        _patient_change(lambda s: s.add_care_team(ins, idnat, actor=_operator()))


@patient_app.command("consent")
def patient_consent(
    ins: InsOption, idnat: Annotated[str, typer.Option(help="IdNat_PS of the professional.")]
) -> None:
    """Record the patient's consent for a professional outside the care team."""
    _patient_change(lambda s: s.record_consent(ins, idnat, actor=_operator()))


@patient_app.command("representative")
def patient_representative(
    ins: InsOption, representative: Annotated[str, typer.Option(help="INS of the legal representative.")]
) -> None:
    """Add a legal representative (identified by their own INS)."""
    _patient_change(lambda s: s.add_legal_representative(ins, representative, actor=_operator()))


@patient_app.command("opposition")
def patient_opposition(
    ins: InsOption,
    opposed: Annotated[bool, typer.Option("--on/--off", help="Oppose or lift the opposition.")],
) -> None:
    """Record (or lift) the patient's opposition to professional access."""
    _patient_change(lambda s: s.set_opposition(ins, opposed, actor=_operator()))


@patient_app.command("emergency-access")
def patient_emergency_access(
    ins: InsOption, allowed: Annotated[bool, typer.Option("--allow/--refuse", help="Break-glass allowed?")]
) -> None:
    """Allow or refuse emergency access (break-glass, SAMU centre 15)."""
    _patient_change(lambda s: s.set_emergency_access(ins, allowed, actor=_operator()))


@documents_app.command("list")
def documents_list(
    ins: InsOption,
    actor: AsOption,
    type_code: Annotated[str | None, typer.Option(help="Only this type code (JDV_J07).")] = None,
    author_profession: Annotated[str | None, typer.Option(help="Only authors of this profession.")] = None,
    break_glass: Annotated[bool, typer.Option("--break-glass", help="Emergency access (traced).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --break-glass).")] = None,
    as_json: JsonOption = False,
) -> None:
    """The documents of a patient that ``--as`` may see (the listing is traced)."""
    who = _identity(actor)
    with _service() as service:
        found = service.list_documents(
            who, ins, type_code=type_code, author_profession=author_profession,
            break_glass=break_glass, reason=reason, source=_operator(),
        )  # fmt: skip
    if as_json:
        console.print_json(json.dumps([d.as_json() for d in found]))
        return
    table = Table("id", "type", "space", "title", "author", "submitted", "flags")
    for d in found:
        table.add_row(d.unique_id, d.type_code, d.space, d.title, d.author_idnat,
                      d.submitted_at.isoformat(timespec="seconds"), ",".join(d.flags))  # fmt: skip
    console.print(table)


@app.command("history")
def history(ins: InsOption, as_json: JsonOption = False) -> None:
    """Every action on a patient's record, oldest first (operator view of the patient's trace)."""
    with _service() as service:
        entries = service.trace_of(ins)
    if as_json:
        console.print_json(json.dumps([e.as_json() for e in entries]))
        return
    table = Table("at", "action", "outcome", "actor", "role", "document", "reason")
    for e in entries:
        table.add_row(e.at.isoformat(timespec="seconds"), e.action, e.outcome, e.actor, e.role,
                      e.document or "", e.reason or "")  # fmt: skip
    console.print(table)


FlagOption = Annotated[
    list[str], typer.Option("--flag", help="MASQUE_PS, INVISIBLE_PATIENT, INVISIBLE_REP_LEGAUX.")
]
IdArgument = Annotated[str, typer.Argument(help="Unique id of the document.")]


@app.command("mask")
def mask(document: IdArgument, actor: AsOption, flag: FlagOption) -> None:
    """Mask a document (its author only)."""
    with _service() as service:
        info = service.set_visibility(_identity(actor), document, flag, on=True, source=_operator())
    console.print(f"{info.unique_id}: {', '.join(info.flags) or 'visible to all'}")


@app.command("unmask")
def unmask(document: IdArgument, actor: AsOption, flag: FlagOption) -> None:
    """Unmask a document (its author only)."""
    with _service() as service:
        info = service.set_visibility(_identity(actor), document, flag, on=False, source=_operator())
    console.print(f"{info.unique_id}: {', '.join(info.flags) or 'visible to all'}")


@app.command("delete")
def delete(
    document: IdArgument, actor: AsOption, reason: Annotated[str | None, typer.Option(help="Why.")] = None
) -> None:
    """Delete a document (its author only; the trace keeps it)."""
    with _service() as service:
        info = service.delete(_identity(actor), document, reason=reason, source=_operator())
    console.print(f"{info.unique_id}: {info.status}")


@xdm_app.command("build")
def xdm_build(
    ins: InsOption,
    author: Annotated[str, typer.Option(help="IdNat_PS of the author.")],
    type_code: Annotated[str, typer.Option(help="Type code (JDV_J07), e.g. 34112-3.")],
    title: Annotated[str, typer.Option(help="Title of the document.")],
    out: Annotated[Path, typer.Option(help="Where to write IHE_XDM.ZIP.")],
    birth_name: Annotated[str, typer.Option(help="Nom de naissance.")],
    first_given_name: Annotated[str, typer.Option(help="Premier prénom.")],
    birth_date: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="YYYY-MM-DD.")],
    sex: Annotated[str, typer.Option(help="M, F or I.")],
    cda: Annotated[Path | None, typer.Option(help="A CDA R2 document.")] = None,
    pdf: Annotated[Path | None, typer.Option(help="A PDF document.")] = None,
    profession: Annotated[str, typer.Option(help="Author's profession code (TRE_G15).")] = "10",
    flag: Annotated[list[str] | None, typer.Option("--flag", help="Visibility code.")] = None,
) -> None:
    """Make an IHE XDM package from a CDA and/or a PDF."""
    import uuid

    from dmp.xdm import XdmAuthor, XdmDocument, XdmPackage, XdmPatient, build

    if cda is None and pdf is None:
        fail("give --cda and/or --pdf", EXIT_USAGE)
    who = XdmAuthor(author, profession)
    docs = []
    for path, fmt, mime in ((cda, "CDA_R2", "text/xml"), (pdf, "PDF", "application/pdf")):
        if path is not None:
            try:
                content = path.read_bytes()
            except OSError as exc:
                fail(f"cannot read {path}: {exc.strerror}")
            uid = f"2.25.{uuid.uuid4().int}"
            docs.append(XdmDocument(content, type_code, title, who, format=fmt, mime_type=mime,
                                    unique_id=uid, flags=frozenset(flag or ())))  # fmt: skip
    born: date = birth_date.date()
    patient = XdmPatient(ins, birth_name=birth_name, first_given_name=first_given_name,
                         given_names=first_given_name, birth_date=born, sex=sex)  # fmt: skip
    out.write_bytes(build(XdmPackage(patient, tuple(docs), submission_id=f"2.25.{uuid.uuid4().int}")))
    console.print(f"wrote {out} ({out.stat().st_size} bytes, {len(docs)} document(s))")


@app.command("send-xdm")
def send_xdm(
    package_file: Annotated[Path, typer.Argument(help="The IHE_XDM.ZIP to send.")],
    sender: Annotated[str, typer.Option("--from", help="Sender BAL.")],
    to: Annotated[str, typer.Option(help="The patient's BAL or the DMP gateway address.")],
    subject: Annotated[str, typer.Option(help="XDM/1.0/DDM+<libellé> <NOM> <prénom> <date de naissance>.")],
    login: Annotated[str, typer.Option(help="Submission login (default: the sender BAL).")] = "",
    password_env: Annotated[str, typer.Option(help="Environment variable holding the password.")] = (
        "MSSANTE_SMTP_PASSWORD"
    ),
    host: Annotated[str, typer.Option(help="Submission server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Submission port (STARTTLS).")] = 2587,
    ca_file: Annotated[Path | None, typer.Option(help="CA to verify the server (default: system).")] = None,
    mdn: Annotated[bool, typer.Option("--mdn/--no-mdn", help="Ask for a disposition notification.")] = True,
) -> None:
    """Send an XDM package through submission, with the ANS headers (X-MSS-INS, X-MSS-CODECDA)."""
    import os
    import smtplib
    import ssl
    from email import policy

    from dmp.deposit import build_message
    from dmp.models import INS_OIDS
    from dmp.xdm_reader import Limits, XdmError, read
    from mssante.config import DMPSection

    try:
        data = package_file.read_bytes()
        packages = read(data, Limits.of(DMPSection()), INS_OIDS)  # the receiving server decides the OIDs
    except OSError as exc:
        fail(f"cannot read {package_file}: {exc.strerror}")
    except XdmError as exc:
        fail(f"[{exc.code}] {package_file}: {exc}")
    password = os.environ.get(password_env)
    if not password:
        fail(f"set the password in ${password_env}", EXIT_USAGE)
    cdas = [d for p in packages for d in p.documents if d.format == "CDA_R2"]
    codes = list(dict.fromkeys(d.cda_code or d.type_code for d in cdas))
    msg = build_message(data, sender=sender, to=to, subject=subject, cda_codes=codes,
                        notification_to=sender if mdn else None)  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        with smtplib.SMTP(host, port, timeout=60) as client:
            client.starttls(context=context)
            client.login(login or sender, password)
            refused = client.sendmail(sender, [to], msg.as_bytes(policy=policy.SMTP))
    except (smtplib.SMTPException, OSError) as exc:
        fail(f"submission failed: {exc}")
    if refused:
        fail(f"refused: {refused}")
    console.print(f"sent {package_file.name} to {to} ({msg['Message-ID']})", highlight=False)
