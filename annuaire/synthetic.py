"""Synthetic ANS extraction files: same 31 columns, realistic values, some malformed rows.

The national file cannot be downloaded in tests or benchmarks; this generator stands in for
it. Output is deterministic for a given seed. Identifiers are invented (RPPS ``1`` + 10
digits from the row number) and cannot collide with real people's.
"""

from __future__ import annotations

import io
import random
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from annuaire.extraction import COLUMNS

NOMS = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau", "Laurent",
    "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard",
    "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Müller", "Lefebvre", "Faure", "André",
)  # fmt: skip
PRENOMS = (
    "Marie", "Jean", "Pierre", "Michel", "André", "Philippe", "Nathalie", "Isabelle", "Sylvie", "Catherine",
    "Françoise", "Jacques", "Anne", "Christine", "Hélène", "Léa", "Chloé", "Lucas", "Hugo", "Zoé",
)  # fmt: skip
VILLES = (
    ("75013", "75", "PARIS"), ("69003", "69", "LYON"), ("13005", "13", "MARSEILLE"),
    ("31000", "31", "TOULOUSE"), ("20000", "2A", "AJACCIO"), ("20200", "2B", "BASTIA"),
    ("59000", "59", "LILLE"), ("33000", "33", "BORDEAUX"),
)  # fmt: skip
PROFESSIONS = (
    ("10", "Médecin", "SM54", "Médecine générale"),
    ("10", "Médecin", "SM04", "Cardiologie et maladies vasculaires"),
    ("21", "Pharmacien", "", ""),
    ("60", "Infirmier", "", ""),
    ("70", "Masseur-kinésithérapeute", "", ""),
    ("40", "Chirurgien-dentiste", "", ""),
    ("50", "Sage-femme", "", ""),
)
PER_DOMAINS = ("medecin.mssante.fr", "infirmier.mssante.fr", "pharmacien.mssante.fr", "ch-demo.mssante.fr")
ORG_DOMAINS = ("ch-demo.mssante.fr", "pharmacie.mssante.fr", "chu-sud.mssante.fr", "clinique-nord.mssante.fr")
MALFORMED_KINDS = (
    "field count",
    "address",
    "bal type",
    "rpps length",
    "no professional",
    "idnat mismatch",
    "no structure",
)


@dataclass
class GeneratedFile:
    path: Path
    rows: int
    malformed: int
    malformed_lines: list[int]


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def rpps_of(n: int) -> str:
    return f"1{n:010d}"


def finess_of(n: int) -> str:
    return f"{(n % 95) + 1:02d}{n:07d}"[:9]


def structure_fields(n: int) -> list[str]:
    """Columns 6–7 and 19–31 of the structure number ``n`` (every 7th one is a pharmacy)."""
    cp, dep, ville = VILLES[n % len(VILLES)]
    pharmacy = n % 7 == 0
    name = f"PHARMACIE {NOMS[n % len(NOMS)].upper()}" if pharmacy else f"CENTRE DE SANTÉ {ville} {n}"
    return [
        "1", finess_of(n), name, name.title() if pharmacy else "", "", "", str(n % 200 + 1), "", "RUE",
        f"DES {NOMS[(n * 7) % len(NOMS)].upper()}", "", f"{cp} {ville}", cp, dep, "FRANCE",
    ]  # fmt: skip


def row_fields(i: int, rng: random.Random) -> list[str]:
    """A valid row number ``i`` (31 fields): PER 70 %, CAB 5 %, ORG 20 %, APP 5 %."""
    kind = rng.random()
    structure_no = i // 10
    s = structure_fields(structure_no)
    if kind < 0.75:
        bal_type = "PER" if kind < 0.70 else "CAB"
        prof_no = i - (i % 3 == 2)  # one professional in three holds two BALs
        nom, prenom = NOMS[prof_no % len(NOMS)], PRENOMS[(prof_no // 3) % len(PRENOMS)]
        code, label, sf_code, sf_label = PROFESSIONS[prof_no % len(PROFESSIONS)]
        rpps = rpps_of(prof_no)
        domain = PER_DOMAINS[i % len(PER_DOMAINS)]
        address = f"{_ascii(prenom)}.{_ascii(nom)}.{i}@{domain}"
        return [
            bal_type, address, "8", rpps, "8" + rpps, s[0], s[1], "", "M" if prof_no % 2 else "MME",
            nom.upper(), prenom, "C", "Civil", code, label, sf_code, sf_label, "O" if i % 4 else "N", *s[2:],
        ]  # fmt: skip
    bal_type = "ORG" if kind < 0.95 else "APP"
    pharmacy = structure_no % 7 == 0
    domain = "pharmacie.mssante.fr" if pharmacy else ORG_DOMAINS[i % len(ORG_DOMAINS)]
    service = "" if pharmacy else rng.choice(("Cardiologie", "Urgences", "Secrétariat", "Imagerie", "DPI"))
    local = "officine" if pharmacy else _ascii(service or "accueil")
    address = f"{local}.{structure_no}.{i}@{domain}"
    return [
        bal_type,
        address,
        "",
        "",
        "",
        s[0],
        s[1],
        service,
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "O",
        *s[2:],
    ]


def malform(fields: list[str], kind: str) -> list[str]:
    """Break a valid row in one of the ways the importer must reject."""
    out = list(fields)
    if kind == "field count":
        return out[:-3]
    if kind == "address":
        out[1] = out[1].replace("@", " at ")
    elif kind == "bal type":
        out[0] = "XYZ"
    elif kind == "rpps length":
        out[0], out[2], out[3], out[4] = "PER", "8", "123456789", ""
    elif kind == "no professional":
        out[0], out[3], out[4] = "PER", "", ""
    elif kind == "idnat mismatch":
        out[0], out[2], out[3], out[4] = "PER", "8", rpps_of(7), "8" + rpps_of(8)
    elif kind == "no structure":
        out[0], out[3], out[4], out[6] = "ORG", "", "", ""
    return out


def rows(n: int, *, seed: int = 0, malformed_ratio: float = 0.01) -> Iterator[tuple[list[str], bool]]:
    """``n`` data rows as field lists, each with whether it was deliberately malformed."""
    rng = random.Random(seed)
    for i in range(n):
        fields = row_fields(i, rng)
        if malformed_ratio and rng.random() < malformed_ratio:
            yield malform(fields, MALFORMED_KINDS[i % len(MALFORMED_KINDS)]), True
        else:
            yield fields, False


def write_rows(out: TextIO, data: Iterator[tuple[list[str], bool]]) -> tuple[int, list[int]]:
    out.write("|".join(COLUMNS) + "\n")
    count, bad = 0, []
    for count, (fields, malformed) in enumerate(data, start=1):
        out.write("|".join(fields) + "\n")
        if malformed:
            bad.append(count + 1)  # the header is line 1
    return count, bad


def generate(
    path: Path, n: int, *, seed: int = 0, malformed_ratio: float = 0.01, zipped: bool = False
) -> GeneratedFile:
    """Write an extraction of ``n`` rows to ``path`` (a zip holding one .txt if ``zipped``)."""
    data = rows(n, seed=seed, malformed_ratio=malformed_ratio)
    if zipped:
        with (
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
            archive.open("Extraction_Correspondance_MSSante.txt", "w") as raw,
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as text,
        ):
            count, bad = write_rows(text, data)
    else:
        with path.open("w", encoding="utf-8", newline="") as f:
            count, bad = write_rows(f, data)
    return GeneratedFile(path, count, len(bad), bad)


def write_finess_categories(path: Path, rows: int) -> int:
    """A FINESS category file for the structures of an extraction of ``rows`` rows
    (pharmacies 620, the others centres de santé 124); returns the number of pharmacies."""
    pharmacies = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("finess;categorie\n")
        for n in range((rows + 9) // 10):
            pharmacy = n % 7 == 0
            pharmacies += pharmacy
            f.write(f"{finess_of(n)};{'620' if pharmacy else '124'}\n")
    return pharmacies
