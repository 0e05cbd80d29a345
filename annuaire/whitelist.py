"""Import of the operator whitelist (liste blanche): the domains of the space of trust.

The XML (namespace ``https://listeblanche.mssante.fr/schema``, ``Domaine/Nom`` elements) is
parsed with defusedxml: a DOCTYPE, entities or external references refuse the file. The list
is the whole list: domains missing from it are deactivated (never deleted). A file that names
no domain at all is refused rather than emptying the whitelist — that would cut the operator
off the space of trust. ``fetched_at`` records when a domain last changed, so that a second
import of the same list changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse
from sqlalchemy import Engine, select

from annuaire import generation
from annuaire.addresses import AddressError, normalise_domain
from annuaire.extraction import ImportFileError, Reject
from annuaire.importer import ImportReport
from annuaire.models import OperatorDomain
from mssante import audit
from mssante.db import transaction

NAMESPACE = "https://listeblanche.mssante.fr/schema"
_DOMAINE = f"{{{NAMESPACE}}}Domaine"
_NOM = f"{{{NAMESPACE}}}Nom"


def read_domains(path: Path, report: ImportReport) -> list[str]:
    """The valid domain names of the file, in order, without duplicates; bad ones are rejected."""
    domains: dict[str, None] = {}
    count = 0
    foreign = 0
    try:
        for _event, element in iterparse(str(path), events=("end",), forbid_dtd=True):
            if element.tag == _DOMAINE:
                count += 1
                nom = element.find(_NOM)
                text = (nom.text or "").strip() if nom is not None else ""
                report.rows += 1
                try:
                    domains[normalise_domain(text)] = None
                except AddressError as exc:
                    report.reject(Reject(count, f"Domaine #{count}: {exc}"))
                element.clear()
            elif element.tag in ("Domaine", "Nom"):
                foreign += 1
    except DefusedXmlException as exc:
        raise ImportFileError(f"{path.name}: refused, the XML has a DOCTYPE or entities ({exc})") from exc
    except ParseError as exc:
        raise ImportFileError(f"{path.name}: not well-formed XML ({exc})") from exc
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from exc
    if not domains:
        hint = f" (Domaine elements must be in namespace {NAMESPACE})" if foreign else ""
        raise ImportFileError(
            f"{path.name}: no valid Domaine/Nom in the whitelist, refusing to empty it{hint}"
        )
    return list(domains)


def import_whitelist(engine: Engine, path: Path, *, actor: str = "system") -> ImportReport:
    """Replace the whitelist by the file's domains; raise ImportFileError and change nothing if unusable."""
    started = perf_counter()
    report = ImportReport(file=str(path), full=True)
    domains = read_domains(path, report)
    now = datetime.now(UTC)
    source = path.name
    with transaction(engine) as session:
        current = {d.domain: d for d in session.scalars(select(OperatorDomain))}
        for name in domains:
            row = current.get(name)
            if row is None:
                session.add(OperatorDomain(domain=name, source=source, active=True, fetched_at=now))
                report.added += 1
            elif not row.active:
                row.active, row.source, row.fetched_at = True, source, now
                report.updated += 1
                report.reactivated += 1
            else:
                report.unchanged += 1
        wanted = set(domains)
        for name, row in current.items():
            if name not in wanted and row.active:
                row.active, row.fetched_at = False, now
                report.deactivated += 1
        session.flush()
        if report.changed:
            generation.bump(session.connection())
        report.seconds = perf_counter() - started
        audit.append(
            session,
            audit.AuditEvent(
                actor=actor,
                action="annuaire.whitelist.import",
                object=source,
                detail=report.counts(),
            ),
        )
    return report
