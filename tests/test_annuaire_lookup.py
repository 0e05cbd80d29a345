"""The policy's look-up service: answers, cache invalidation (same and other process), speed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Engine

from annuaire import service, synthetic
from annuaire.importer import import_extraction
from annuaire.lookup import Annuaire, NotCached
from annuaire.whitelist import import_whitelist
from mssante.annuaire_watch import start_annuaire_watch
from mssante.auth.identity import Identity
from mssante.db import make_engine, transaction
from mssante.policy import Policy
from mssante.schema import upgrade

PHARMACIST = "810102727017"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, writer=True)
    upgrade(eng)
    with transaction(eng) as s:
        service.add_professional(
            s, idnat=PHARMACIST, nom="Martin", prenom="Marie", profession_code="21", actor="t"
        )
        service.add_structure(
            s, identifier="750000001", raison_sociale="Pharmacie du Centre", categorie="620", actor="t"
        )
        service.add_structure(s, identifier="750000002", raison_sociale="CH Demo", categorie="355", actor="t")
        service.add_bal(
            s, address="Marie.Martin@demo.mssante.fr", type="PER", professional=PHARMACIST, actor="t"
        )
        service.add_bal(s, address="officine@demo.mssante.fr", type="ORG", structure="750000001",
                        responsible=PHARMACIST, actor="t")  # fmt: skip
        service.add_bal(s, address="cardio@demo.mssante.fr", type="ORG", structure="750000002", actor="t")
        service.add_patient_bal(s, ins="288091234567894", actor="t")
        service.add_operator_domain(s, domain="other.mssante.fr", actor="t")
    yield eng
    eng.dispose()


def test_answers(engine: Engine) -> None:
    annuaire = Annuaire(engine)
    bal = annuaire.bal("MARIE.MARTIN@Demo.MSSante.fr")
    assert bal is not None and bal.professional_idnat == PHARMACIST and bal.type == "PER" and bal.active
    assert bal.address == "Marie.Martin@demo.mssante.fr"
    assert annuaire.bal("nobody@demo.mssante.fr") is None
    assert annuaire.bal("not an address") is None
    assert [b.key for b in annuaire.bals_of_professional(PHARMACIST)] == ["marie.martin@demo.mssante.fr"]
    assert [b.key for b in annuaire.bals_of_structure("750000001")] == ["officine@demo.mssante.fr"]
    officine = annuaire.bal("officine@demo.mssante.fr")
    assert officine is not None and officine.responsible_idnat == PHARMACIST
    assert annuaire.is_pharmacy_org_bal("officine@demo.mssante.fr")
    assert not annuaire.is_pharmacy_org_bal("cardio@demo.mssante.fr")
    assert not annuaire.is_pharmacy_org_bal("marie.martin@demo.mssante.fr")
    patient = annuaire.bal("288091234567894@patient.mssante.fr")
    assert patient is not None and patient.type == "PAT" and patient.ins == "288091234567894"
    assert annuaire.is_domain_whitelisted("Other.MSSante.fr.")
    assert not annuaire.is_domain_whitelisted("gmail.com")
    assert not annuaire.is_domain_whitelisted("not a domain")
    pro = annuaire.professional(PHARMACIST)
    assert pro is not None and pro.profession_label == "Pharmacien"
    structure = annuaire.structure("750000001")
    assert structure is not None and structure.kind == "pharmacie_officine"
    assert annuaire.professional("899999999999") is None


def test_invalidate_in_process(engine: Engine) -> None:
    annuaire = Annuaire(engine, refresh_interval=3600)
    assert annuaire.is_active("officine@demo.mssante.fr")
    assert annuaire.bal("new@demo.mssante.fr") is None  # cached negative answer
    with transaction(engine) as s:
        service.set_bal_active(s, address="officine@demo.mssante.fr", active=False, actor="t")
        service.add_bal(s, address="new@demo.mssante.fr", type="ORG", structure="750000002", actor="t")
    assert annuaire.is_active("officine@demo.mssante.fr")  # still cached: no refresh for an hour
    annuaire.invalidate()
    assert not annuaire.is_active("officine@demo.mssante.fr")
    assert not annuaire.is_pharmacy_org_bal("officine@demo.mssante.fr")  # inactive
    assert annuaire.is_active("new@demo.mssante.fr")


def test_policy_answers_rcpt_from_memory_only_what_the_cache_would_answer(engine: Engine) -> None:
    """The event loop decides an RCPT without a thread hop only when the annuaire's cache holds
    the answer and its generation check is not due; the verdict is the one ``recipient`` gives."""
    annuaire = Annuaire(engine, refresh_interval=0.2)
    policy = Policy(annuaire, ["demo.mssante.fr", "patient.mssante.fr"])
    pro = Identity.professional(PHARMACIST, login="marie.martin@demo.mssante.fr")
    sender = annuaire.bal("marie.martin@demo.mssante.fr")
    assert sender is not None
    for rcpt in ("cardio@demo.mssante.fr", "nobody@demo.mssante.fr", "x@other.mssante.fr"):
        assert policy.recipient_from_memory(pro, sender, rcpt) is None  # not cached yet
        asked = policy.recipient(pro, sender, rcpt)
        assert policy.recipient_from_memory(pro, sender, rcpt) == asked
    # The liste blanche is cached whole: any remote domain is then answered from memory.
    assert policy.recipient_from_memory(pro, sender, "x@gmail.com") == policy.recipient(
        pro, sender, "x@gmail.com"
    )
    assert policy.recipient_from_memory(pro, sender, "<bad address") == policy.recipient(
        pro, sender, "<bad address"
    )
    patient = Identity.patient("288091234567894", login="288091234567894@patient.mssante.fr")
    assert policy.recipient_from_memory(patient, sender, "cardio@demo.mssante.fr") is None  # rules read
    assert policy.message_in_memory(pro)
    time.sleep(0.25)  # the generation check is due: the database is asked again, from a thread
    assert policy.recipient_from_memory(pro, sender, "cardio@demo.mssante.fr") is None
    annuaire.bal("cardio@demo.mssante.fr")
    assert policy.recipient_from_memory(pro, sender, "cardio@demo.mssante.fr") is not None
    annuaire.invalidate()  # a write of this process: everything is asked again
    assert policy.recipient_from_memory(pro, sender, "cardio@demo.mssante.fr") is None


def test_policy_answers_mail_from_memory_for_the_bal_owner_only(engine: Engine) -> None:
    """MAIL FROM is decided on the event loop for the BAL's owner once the annuaire's cache holds
    the BAL; a delegate's rights come from the grants, read from the database every time."""
    annuaire = Annuaire(engine, refresh_interval=3600)
    policy = Policy(annuaire, ["demo.mssante.fr", "patient.mssante.fr"])
    owner = Identity.professional(PHARMACIST, login="marie.martin@demo.mssante.fr")
    delegate = Identity.staff("secretaire", login="secretaire@demo.mssante.fr")
    address = "<marie.martin@demo.mssante.fr>"
    assert policy.sender_from_memory(owner, address) is None  # not cached yet
    asked = policy.sender(owner, address)
    assert asked[0].ok and policy.sender_from_memory(owner, address) == asked
    assert policy.sender_from_memory(delegate, address) is None
    assert not policy.sender(delegate, address)[0].ok
    for refused in ("<>", "<nobody@demo.mssante.fr>", "<x@other.mssante.fr>"):
        policy.sender(owner, refused)
        assert policy.sender_from_memory(owner, refused) == policy.sender(owner, refused)
    assert policy.sender_from_memory(None, address) == policy.sender(None, address)


def test_change_by_another_process_is_seen_after_refresh(engine: Engine, tmp_path: Path) -> None:
    annuaire = Annuaire(engine, refresh_interval=0.05)
    address = next(synthetic.rows(1, malformed_ratio=0))[0][1]
    assert not annuaire.is_domain_whitelisted("medecin.mssante.fr")
    assert annuaire.bal(address) is None
    # Another writer (another engine, as the CLI would be) changes the annuaire.
    other = make_engine(str(engine.url.render_as_string(hide_password=False)), writer=True)
    wl = tmp_path / "wl.xml"
    wl.write_text(
        '<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">'
        "<Domaine><Nom>medecin.mssante.fr</Nom></Domaine></ListeBlanche>"
    )
    import_whitelist(other, wl)
    import_extraction(other, synthetic.generate(tmp_path / "e.txt", 10, malformed_ratio=0).path)
    other.dispose()
    time.sleep(0.1)
    assert annuaire.is_domain_whitelisted("medecin.mssante.fr")
    assert not annuaire.is_domain_whitelisted("other.mssante.fr")  # replaced by the file
    assert annuaire.bal(address) is not None


async def test_the_background_check_keeps_answers_from_memory_from_falling_due(engine: Engine) -> None:
    """With the server's watch running, the answers the event loop gives from memory are never
    found due for their generation check (a command then waited for a thread and the database),
    and a change by another process is still seen within the interval."""
    annuaire = Annuaire(engine, refresh_interval=0.2)
    assert annuaire.bal("cardio@demo.mssante.fr") is not None
    running = await start_annuaire_watch(cast(Any, SimpleNamespace(annuaire=annuaire)))
    try:
        due = 0
        for _ in range(80):  # four intervals
            try:
                assert annuaire.peek_bal("cardio@demo.mssante.fr") is not None
            except NotCached:
                due += 1
            await asyncio.sleep(0.01)
        assert due == 0
        other = make_engine(str(engine.url.render_as_string(hide_password=False)), writer=True)
        with transaction(other) as s:
            service.add_bal(
                s, address="urgences@demo.mssante.fr", type="ORG", structure="750000002", actor="t"
            )
        other.dispose()
        await asyncio.sleep(0.3)
        with pytest.raises(NotCached):  # the watch dropped what the change may have made stale
            annuaire.peek_bal("cardio@demo.mssante.fr")
    finally:
        for item in running:
            await item.close()


def test_lookup_rate(engine: Engine, tmp_path: Path) -> None:
    import_extraction(engine, synthetic.generate(tmp_path / "e.txt", 2000, malformed_ratio=0).path)
    annuaire = Annuaire(engine)
    addresses = [fields[1] for fields, _ in synthetic.rows(1000, malformed_ratio=0)]
    for a in addresses:  # warm the cache
        assert annuaire.bal(a) is not None
    n = 0
    started = time.perf_counter()
    while n < 200_000:
        for a in addresses:
            annuaire.is_active(a)
        n += len(addresses)
    rate = n / (time.perf_counter() - started)
    print(f"{rate:,.0f} look-ups/s")
    assert rate > 50_000
