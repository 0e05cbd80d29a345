"""``mssante annuaire …``: import the national extraction, the whitelist and local accounts;
search and show BALs; add and disable local entries.

Human tables by default, ``--json`` for scripts. Exit codes: 0 done, 1 the file or the request
was refused (nothing changed), 2 bad usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from mssante.cli._common import checked_engine as _engine
from mssante.cli._common import command_group, console, fail, settings
from mssante.cli._common import operator_actor as _actor

app = command_group("annuaire", "Directory of professionals, structures and mailboxes (BAL).")
whitelist_app = command_group("whitelist", "Operator whitelist (liste blanche).")
accounts_app = command_group("accounts", "The operator's own accounts (TOML or CSV).")
add_app = command_group("add", "Add or update a local entry of the annuaire.")
finess_app = command_group("finess", "FINESS establishment categories of the structures.")
app.add_typer(whitelist_app)
app.add_typer(accounts_app)
app.add_typer(finess_app)
app.add_typer(add_app)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
T = TypeVar("T")


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over the bytes of the file, on a terminal only."""
    if not enabled or not console.is_terminal:
        yield None
        return
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("import", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _refused(work: Callable[[], T]) -> T:
    """Run an import or a write; a refused file or request exits 1 with its reason."""
    from annuaire.extraction import ImportFileError
    from annuaire.nomenclatures import NomenclatureError
    from annuaire.service import AnnuaireError

    try:
        return work()
    except (ImportFileError, AnnuaireError, NomenclatureError) as exc:
        fail(str(exc))


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    table = Table("added", "updated", "unchanged", "deactivated", "rejected", "rows", "seconds")
    table.add_row(
        str(report.added), str(report.updated), str(report.unchanged), str(report.deactivated),
        str(report.rejected), str(report.rows), f"{report.seconds:.1f}",
    )  # fmt: skip
    console.print(table)
    if (
        report.professionals_added
        or report.professionals_updated
        or report.structures_added
        or report.structures_updated
    ):
        console.print(
            f"professionals: {report.professionals_added} added, {report.professionals_updated} updated; "
            f"structures: {report.structures_added} added, {report.structures_updated} updated"
        )
    if report.rejects:
        rejects = Table("line", "reason", title=f"rejected ({report.rejected})")
        for r in report.rejects[:50]:
            rejects.add_row(str(r.line) if r.line else "", r.reason)
        console.print(rejects)
        if report.rejected > 50:
            console.print(f"… and {report.rejected - 50} more (use --json for the first 1000)")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="ANS extraction, plain '|'-separated text or zip.")],
    full: Annotated[
        bool, typer.Option("--full", help="The file is complete: deactivate vanished BALs.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Import the national extraction of MSSanté addresses (idempotent, all or nothing)."""
    from annuaire.importer import import_extraction

    engine = _engine(writer=True)
    with _progress(not as_json) as progress:
        report = _refused(
            lambda: import_extraction(engine, file, full=full, actor=_actor(), progress=progress)
        )
    _print_report(report, as_json)


@whitelist_app.command("import")
def whitelist_import(
    file: Annotated[Path, typer.Argument(help="Liste blanche XML (https://listeblanche.mssante.fr/schema).")],
    as_json: JsonOption = False,
) -> None:
    """Replace the whitelist by the domains of the file (missing ones are deactivated)."""
    from annuaire.whitelist import import_whitelist

    engine = _engine(writer=True)
    _print_report(_refused(lambda: import_whitelist(engine, file, actor=_actor())), as_json)


@whitelist_app.command("list")
def whitelist_list(as_json: JsonOption = False) -> None:
    """The domains of the whitelist, active or not."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from annuaire.models import OperatorDomain

    with Session(_engine()) as session:
        rows = session.scalars(select(OperatorDomain).order_by(OperatorDomain.domain)).all()
    if as_json:
        print(json.dumps([{"domain": d.domain, "active": d.active, "source": d.source,
                           "fetched_at": d.fetched_at.isoformat()} for d in rows]))  # fmt: skip
        return
    table = Table("domain", "active", "source", "since")
    for d in rows:
        table.add_row(d.domain, "yes" if d.active else "no", d.source, f"{d.fetched_at:%Y-%m-%d %H:%M}")
    console.print(table)


@whitelist_app.command("add")
def whitelist_add(domain: Annotated[str, typer.Argument(help="Operator domain to trust.")]) -> None:
    """Put one domain on the whitelist (e.g. a partner operator not yet in the national list)."""
    from annuaire.service import add_operator_domain
    from mssante.db import transaction

    def work() -> str:
        with transaction(_engine(writer=True)) as session:
            return add_operator_domain(session, domain=domain, actor=_actor()).status

    console.print(f"{domain}: {_refused(work)}")


@accounts_app.command("import")
def accounts_import(
    file: Annotated[Path, typer.Argument(help="TOML (.toml) or CSV file of local accounts.")],
    as_json: JsonOption = False,
) -> None:
    """Import the operator's own professionals, structures and BALs."""
    from annuaire.local_accounts import import_accounts

    engine = _engine(writer=True)
    _print_report(_refused(lambda: import_accounts(engine, file, actor=_actor())), as_json)


@finess_app.command("import")
def finess_import(
    file: Annotated[Path, typer.Argument(help="CSV 'finess;categorie', or the public FINESS (etalab) file.")],
    as_json: JsonOption = False,
) -> None:
    """Set the FINESS category of known structures (620 marks the pharmacies d'officine)."""
    from annuaire.finess import import_categories

    engine = _engine(writer=True)
    _print_report(_refused(lambda: import_categories(engine, file, actor=_actor())), as_json)


def _records_table(records: list[Any]) -> Table:
    table = Table("address", "type", "active", "holder", "structure", "source")
    for r in records:
        state = "yes" if r.active else "no"
        if r.liste_rouge:
            state += " (liste rouge)"
        table.add_row(r.address, r.type, state, r.holder, r.structure_name or "", r.source)
    return table


@app.command("search")
def search(
    text: Annotated[str, typer.Argument(help="Part of an address, a name or a structure name.")],
    limit: Annotated[int, typer.Option(help="At most this many results.", min=1, max=10_000)] = 50,
    as_json: JsonOption = False,
) -> None:
    """Find BALs by address, holder's name or structure name (case-insensitive)."""
    from annuaire.search import search as run_search

    found = run_search(_engine(), text, limit)
    if as_json:
        print(json.dumps([r.as_dict() for r in found], ensure_ascii=False))
        return
    console.print(_records_table(found))


@app.command("show")
def show(
    address: Annotated[str, typer.Argument(help="BAL address (any case).")],
    as_json: JsonOption = False,
) -> None:
    """Everything the annuaire knows about one BAL (exit 1 if unknown)."""
    from annuaire.search import show as run_show

    record = run_show(_engine(), address)
    if record is None:
        fail(f"no BAL {address!r} in the annuaire")
    if as_json:
        print(json.dumps(record.as_dict(), ensure_ascii=False))
        return
    table = Table("field", "value", show_header=False)
    for name, value in record.as_dict().items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


@app.command("export")
def export(
    fmt: Annotated[
        str, typer.Option("--format", help="ans (the extraction's 31 columns) or fhir (R4 Bundle).")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", help="A domain to publish (repeatable; default: server.domains)."),
    ] = None,
) -> None:
    """Publish the operator's own BALs: active, not on the liste rouge, patients excluded."""
    import sys

    from annuaire.export import FORMATS, published, write_ans, write_fhir
    from annuaire.nomenclatures import default as default_nomenclatures

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", 2)
    domains = domain or settings().server.domains
    noms = default_nomenclatures()
    with _engine().connect() as conn:
        rows = published(conn, domains, noms)
        out = output.open("w", encoding="utf-8", newline="\n") if output else sys.stdout
        try:
            count = write_ans(rows, out) if fmt == "ans" else write_fhir(rows, out, noms)
        finally:
            if output:
                out.close()
    if output:
        console.print(f"{count} BAL(s) of {', '.join(domains)} written to {output}")


@app.command("sources")
def sources(as_json: JsonOption = False) -> None:
    """The lists fetched on a schedule ([annuaire] extraction_url, [whitelist] url): last success,
    age, entries, last error."""
    from annuaire.updates import scheduled_lists, status

    found = status(_engine(), scheduled_lists(settings()))
    if as_json:
        print(json.dumps(found, ensure_ascii=False))
        return
    if not found:
        console.print("no list is fetched on a schedule ([annuaire] extraction_url, [whitelist] url)")
        return
    table = Table("list", "url", "last success", "age (s)", "stale", "entries", "last error")
    for f in found:
        table.add_row(
            f["name"], f["url"], f["last_success"] or "never", str(f["age_seconds"] or ""),
            "yes" if f["stale"] else "no", str(f["entries"] or ""), f["last_error"] or "",
        )  # fmt: skip
    console.print(table)


@app.command("refresh")
def refresh(
    force: Annotated[bool, typer.Option("--force", help="Fetch even if not due yet.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Fetch the scheduled lists now (what the server does on its timer); exit 1 if one failed."""
    from annuaire.updates import refresh as run_refresh
    from annuaire.updates import scheduled_lists

    config = settings()
    engine = _engine(writer=True)
    outcomes = [
        run_refresh(engine, item, config.server.data_dir / "updates", force=force)
        for item in scheduled_lists(config)
    ]
    found = [
        {"name": o.name, "status": o.status, "error": o.error, **(o.report.counts() if o.report else {})}
        for o in outcomes
    ]
    if as_json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        for f in found:
            console.print(f"{f['name']}: {f['status']}" + (f" — {f['error']}" if f["error"] else ""))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


def _write(work: Callable[[Any], Any], what: str, as_json: bool) -> None:
    """One write in its own transaction; prints ``added``/``updated``/``unchanged``."""
    from mssante.db import transaction

    def run() -> str:
        with transaction(_engine(writer=True)) as session:
            status: str = work(session).status
            return status

    status = _refused(run)
    if as_json:
        print(json.dumps({"object": what, "status": status}, ensure_ascii=False))
    else:
        console.print(f"{what}: {status}")


@add_app.command("professional")
def add_professional(
    idnat: Annotated[str, typer.Option(help="IdNat_PS (8 + RPPS, 0 + ADELI, …).")],
    nom: Annotated[str, typer.Option(help="Nom d'exercice.")],
    prenom: Annotated[str | None, typer.Option(help="Prénom d'exercice.")] = None,
    profession: Annotated[str | None, typer.Option(help="Profession code (TRE_G15), e.g. 10.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add or update a professional."""
    from annuaire import service

    _write(lambda s: service.add_professional(
        s, idnat=idnat, nom=nom, prenom=prenom, profession_code=profession, actor=_actor()),
        idnat, as_json)  # fmt: skip


@add_app.command("structure")
def add_structure(
    identifier: Annotated[str, typer.Option("--id", help="FINESS, SIRET, … of the structure.")],
    raison_sociale: Annotated[str, typer.Option(help="Name of the structure.")],
    id_type: Annotated[str | None, typer.Option(help="FINESS, SIRET, SIREN, …")] = None,
    categorie: Annotated[
        str | None, typer.Option(help="FINESS category (620 = pharmacie d'officine).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Add or update a structure."""
    from annuaire import service

    _write(lambda s: service.add_structure(
        s, identifier=identifier, raison_sociale=raison_sociale, id_type=id_type, categorie=categorie,
        actor=_actor()), identifier, as_json)  # fmt: skip


@add_app.command("bal")
def add_bal(
    address: Annotated[str, typer.Argument(help="The BAL address.")],
    bal_type: Annotated[str, typer.Option("--type", help="PER, CAB, ORG, APP (TRE_R257).")],
    professional: Annotated[str | None, typer.Option(help="IdNat_PS of the holder (PER, CAB).")] = None,
    structure: Annotated[str | None, typer.Option(help="Structure identifier (ORG, APP).")] = None,
    responsible: Annotated[str | None, typer.Option(help="IdNat_PS of the responsible (ORG, APP).")] = None,
    service_name: Annotated[str | None, typer.Option("--service", help="Service de rattachement.")] = None,
    description: Annotated[str | None, typer.Option(help="What the BAL is for.")] = None,
    liste_rouge: Annotated[bool, typer.Option("--liste-rouge", help="Unlisted: never published.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Add or update a local BAL (and activate it)."""
    from annuaire import service

    _write(lambda s: service.add_bal(
        s, address=address, type=bal_type, professional=professional, structure=structure,
        responsible=responsible, service=service_name, description=description, liste_rouge=liste_rouge,
        actor=_actor()), address, as_json)  # fmt: skip


@add_app.command("patient")
def add_patient(
    ins: Annotated[str, typer.Argument(help="INS matricule (15 characters, key included).")],
    as_json: JsonOption = False,
) -> None:
    """Create the BAL <INS>@patient.mssante.fr of a patient whose INS is qualified (DMP register)."""
    from mssante.patients.identity import NotQualified, open_patient_bal

    try:
        _write(lambda s: open_patient_bal(s, ins=ins, actor=_actor()), ins, as_json)
    except NotQualified as exc:
        fail(str(exc))


@app.command("disable")
def disable(
    address: Annotated[str, typer.Argument(help="The BAL to deactivate (never deleted).")],
    as_json: JsonOption = False,
) -> None:
    """Deactivate a BAL: it can neither send nor receive, its data are kept."""
    from annuaire import service

    _write(
        lambda s: service.set_bal_active(s, address=address, active=False, actor=_actor()), address, as_json
    )


@app.command("enable")
def enable(
    address: Annotated[str, typer.Argument(help="The BAL to re-activate.")],
    as_json: JsonOption = False,
) -> None:
    """Re-activate a BAL that was disabled."""
    from annuaire import service

    _write(
        lambda s: service.set_bal_active(s, address=address, active=True, actor=_actor()), address, as_json
    )
