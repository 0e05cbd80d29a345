"""Reading the ANS public extraction of MSSanté addresses ("extraction-correspondance-mssante").

The file is ``|``-separated UTF-8 text with one header row and 31 columns, plain or zipped.
This module only reads and checks: it yields one :class:`ExtractionRow` or one
:class:`Reject` per data line, and raises :class:`ImportFileError` for faults of the file as a
whole (truncated zip, not UTF-8, missing columns), which must abort the import.

Columns are found by name (accents, case and apostrophe style ignored), so a reordered file
still reads. Column values the national file uses that no public document defines are read
leniently: ``Type Identifiant PP`` as a TRE_G08 code (``8``, ``0``) or a name (``RPPS``),
``Type identifiant structure`` as a TRE_G07 code (``1`` FINESS, ``2`` SIREN, ``3`` SIRET,
``4`` RPPS rang) or a name, ``Dématérialisation`` as ``O``/``N`` (or true/false, 1/0).
"""

from __future__ import annotations

import io
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from annuaire.addresses import AddressError, parse
from annuaire.identifiers import IdentifierError, idnat_from, parse_idnat_ps
from annuaire.nomenclatures import HOLDER_PROFESSIONAL, HOLDER_STRUCTURE, Nomenclatures

COLUMNS: tuple[str, ...] = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL",
    "L4NUMEROVOIE structure BAL",
    "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL",
    "L4LIBELLEVOIE structure BAL",
    "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL",
    "Code postal structure BAL",
    "Département structure BAL",
    "Pays structure BAL",
)

STRUCTURE_ID_TYPES = {"1": "FINESS", "2": "SIREN", "3": "SIRET", "4": "RPPS_RANG"}
_TRUE = {"o", "oui", "true", "1", "y", "yes"}
_FALSE = {"n", "non", "false", "0", "no"}
ZIP_MAGIC = b"PK\x03\x04"


class ImportFileError(Exception):
    """The file as a whole cannot be imported (nothing is changed)."""


@dataclass(frozen=True, slots=True)
class Reject:
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProfessionalData:
    idnat: str
    id_type: str
    identifier: str
    civilite: str | None
    nom: str | None
    prenom: str | None
    categorie_code: str | None
    profession_code: str | None
    profession_label: str | None
    savoir_faire_code: str | None
    savoir_faire_label: str | None


@dataclass(frozen=True, slots=True)
class StructureData:
    identifier: str
    id_type: str | None
    raison_sociale: str | None
    enseigne: str | None
    complement_localisation: str | None
    complement_distribution: str | None
    numero_voie: str | None
    complement_numero_voie: str | None
    type_voie: str | None
    libelle_voie: str | None
    lieu_dit: str | None
    ligne_acheminement: str | None
    code_postal: str | None
    departement: str | None
    pays: str | None


@dataclass(frozen=True, slots=True)
class ExtractionRow:
    line: int
    address: str
    address_key: str
    domain: str
    type: str
    service: str | None
    dematerialisation: bool | None
    professional: ProfessionalData | None
    structure: StructureData | None


def _fold(name: str) -> str:
    """Header names compared without accents, case, apostrophe style or spacing."""
    decomposed = unicodedata.normalize("NFKD", name.replace("’", "'"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.lower().split())


_FOLDED = {_fold(c): c for c in COLUMNS}


@contextmanager
def open_text(path: Path) -> Iterator[tuple[TextIO, IO[bytes], int]]:
    """Open a plain or zipped extraction as UTF-8 text.

    Yields the text stream, the underlying file (whose position measures progress) and the
    file size. A zip must hold exactly one file (or one ``.txt`` among others).
    """
    try:
        size = path.stat().st_size
        raw: IO[bytes] = path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"cannot open {path}: {exc.strerror}") from exc
    with ExitStack() as stack:
        stack.enter_context(raw)
        magic = raw.read(4)
        raw.seek(0)
        inner: IO[bytes] = raw
        if magic == ZIP_MAGIC:
            try:
                archive = stack.enter_context(zipfile.ZipFile(raw))
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise ImportFileError(f"{path.name}: truncated or corrupt zip archive ({exc})") from exc
            members = [m for m in archive.infolist() if not m.is_dir()]
            texts = [m for m in members if m.filename.lower().endswith(".txt")]
            chosen = members if len(members) == 1 else texts
            if len(chosen) != 1:
                names = ", ".join(m.filename for m in members) or "nothing"
                raise ImportFileError(f"{path.name}: the zip must hold one extraction file, it holds {names}")
            inner = stack.enter_context(archive.open(chosen[0]))
        text = io.TextIOWrapper(inner, encoding="utf-8-sig", errors="strict", newline="")
        yield text, raw, size


def _lines(text: TextIO, name: str) -> Iterator[tuple[int, str]]:
    """Numbered lines, turning decoding and decompression faults into ImportFileError."""
    number = 0
    try:
        for number, line in enumerate(text, start=1):
            yield number, line
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"{name}: not UTF-8 text (undecodable byte near line {number + 1}): convert it to UTF-8"
        ) from exc
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ImportFileError(
            f"{name}: truncated or corrupt zip archive near line {number + 1} ({exc})"
        ) from exc


def _split(line: str) -> list[str]:
    return line.rstrip("\r\n").split("|")


def header_index(header: list[str], name: str) -> list[int]:
    """Position of each of the 31 columns in this file's header, or ImportFileError."""
    positions = {_fold(h): i for i, h in enumerate(header)}
    missing = [c for c in COLUMNS if _fold(c) not in positions]
    if missing:
        raise ImportFileError(
            f"{name}: {len(missing)} column(s) missing from the header: {', '.join(missing)}"
        )
    return [positions[_fold(c)] for c in COLUMNS]


def _opt(value: str) -> str | None:
    value = value.strip()
    return value or None


def _flag(value: str) -> bool | None:
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    return None


class RowParser:
    """Turns the 31 fields of one line into an ExtractionRow, or says why not."""

    def __init__(self, nomenclatures: Nomenclatures, index: list[int]) -> None:
        self.bal_types = {
            code: t.titulaire
            for code, t in nomenclatures.bal_types.items()
            if t.titulaire in (HOLDER_PROFESSIONAL, HOLDER_STRUCTURE)
        }
        self.index = index
        self.width = max(index) + 1

    def __call__(self, line: int, fields: list[str]) -> ExtractionRow | Reject:
        if len(fields) == self.width + 1 and fields[-1] == "":
            fields = fields[:-1]  # a trailing separator
        if len(fields) != self.width:
            return Reject(line, f"expected {self.width} fields separated by '|', got {len(fields)}")
        v = [fields[i].strip() for i in self.index]
        bal_type = v[0].upper()
        holder = self.bal_types.get(bal_type)
        if holder is None:
            return Reject(line, f"unknown BAL type {v[0]!r} (TRE_R257: {', '.join(sorted(self.bal_types))})")
        try:
            address = parse(v[1])
        except AddressError as exc:
            return Reject(line, str(exc))
        professional = None
        if v[3] or v[4]:
            try:
                professional = self._professional(v)
            except IdentifierError as exc:
                return Reject(line, str(exc))
        elif holder == HOLDER_PROFESSIONAL:
            return Reject(line, f"BAL of type {bal_type} without a professional identifier (Identifiant PP)")
        structure = self._structure(v) if v[6] else None
        if holder == HOLDER_STRUCTURE and structure is None:
            return Reject(line, f"BAL of type {bal_type} without a structure (Identification Structure)")
        return ExtractionRow(
            line=line,
            address=address.address,
            address_key=address.key,
            domain=address.domain,
            type=bal_type,
            service=_opt(v[7]),
            dematerialisation=_flag(v[17]),
            professional=professional,
            structure=structure,
        )

    @staticmethod
    def _professional(v: list[str]) -> ProfessionalData:
        if v[3]:
            idnat = idnat_from(v[2] or "8", v[3])
            if v[4] and v[4] != idnat:
                raise IdentifierError(
                    "idnat.mismatch",
                    f"Identification nationale PP {v[4]!r} does not match "
                    f"type {v[2]!r} and identifier {v[3]!r}",
                )
            parsed = parse_idnat_ps(idnat)
        else:
            parsed = parse_idnat_ps(v[4])
        return ProfessionalData(
            idnat=parsed.value,
            id_type=parsed.type,
            identifier=parsed.number,
            civilite=_opt(v[8]),
            nom=_opt(v[9]),
            prenom=_opt(v[10]),
            categorie_code=_opt(v[11]),
            profession_code=_opt(v[13]),
            profession_label=_opt(v[14]),
            savoir_faire_code=_opt(v[15]),
            savoir_faire_label=_opt(v[16]),
        )

    @staticmethod
    def _structure(v: list[str]) -> StructureData:
        kind = v[5].strip().upper()
        return StructureData(
            identifier=v[6],
            id_type=STRUCTURE_ID_TYPES.get(kind, kind or None),
            raison_sociale=_opt(v[18]),
            enseigne=_opt(v[19]),
            complement_localisation=_opt(v[20]),
            complement_distribution=_opt(v[21]),
            numero_voie=_opt(v[22]),
            complement_numero_voie=_opt(v[23]),
            type_voie=_opt(v[24]),
            libelle_voie=_opt(v[25]),
            lieu_dit=_opt(v[26]),
            ligne_acheminement=_opt(v[27]),
            code_postal=_opt(v[28]),
            departement=_opt(v[29]),
            pays=_opt(v[30]),
        )


Progress = Callable[[int, int], None]


def read(
    path: Path, nomenclatures: Nomenclatures, progress: Progress | None = None
) -> Iterator[ExtractionRow | Reject]:
    """Stream the rows of an extraction file (line numbers count the header as line 1)."""
    with open_text(path) as (text, raw, size):
        lines = _lines(text, path.name)
        first = next(lines, None)
        if first is None:
            raise ImportFileError(f"{path.name}: empty file (no header row)")
        parser = RowParser(nomenclatures, header_index(_split(first[1]), path.name))
        for number, line in lines:
            if not line.strip():
                continue
            yield parser(number, _split(line))
            if progress is not None and number % 4096 == 0:
                progress(raw.tell(), size)
        if progress is not None:
            progress(size, size)
