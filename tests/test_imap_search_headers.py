"""Header SEARCH (SUBJECT, FROM, TO, CC, HEADER, SENT*) over IMAP against a reference computed by
Python's ``email`` package over messages that package wrote (RFC 2047 words, folded lines,
groups, repeated fields, bad dates): the same UIDs whether the header cache is cold or warm,
alone or combined with a body key."""

from __future__ import annotations

import asyncio
import email
import imaplib
import random
import ssl
from collections.abc import Callable
from datetime import date, datetime, timedelta
from email import policy
from email.headerregistry import Address, Group
from email.message import EmailMessage, Message
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

from sqlalchemy import text

from mssante.runtime import Runtime, open_runtime
from mssante.store import headerindex
from tests.imap_dialogues.harness import running_server

FOLDER = "Refs"
NAMES = ["Émile Durand", "Zoë Martin", "Jean-Luc Petit", "Ana García", "Dr Bernard", ""]
LOCALS = ["durand", "zoe.martin", "jl.petit", "ana", "bernard", "secretariat"]
DOMAINS = ["demo.mssante.fr", "hopital.example", "labo.test"]
SUBJECTS = [
    "Résultats d'analyse",
    "Compte rendu opératoire — urgent",
    "Ordonnance renouvelée",
    "RE: Hémoglobine glyquée élevée, à revoir avec le patient avant la consultation de jeudi",
    "naïve question",
    "Lot 07 STRASSE straße",
]
DAY = datetime(2026, 3, 5, 10, 30)


def _address(rng: random.Random) -> Address:
    return Address(rng.choice(NAMES), rng.choice(LOCALS), rng.choice(DOMAINS))


def _messages() -> list[bytes]:
    rng = random.Random(20)
    out = []
    for i in range(40):
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"] = _address(rng)
        if i % 7 == 3:
            msg["To"] = Group("Équipe soins", [_address(rng), _address(rng)])
        else:
            msg["To"] = [_address(rng) for _ in range(1 + i % 3)]
        if i % 2:
            msg["Cc"] = _address(rng)
        if i % 9 != 5:
            msg["Subject"] = rng.choice(SUBJECTS) + f" {i}"
        if i % 11 == 4:
            msg["Date"] = "not a date"
        elif i % 13 != 6:
            msg["Date"] = format_datetime(DAY + timedelta(days=i % 5 - 2, hours=i))
        msg["Message-ID"] = f"<{i}.ref@demo.mssante.fr>"
        msg["X-Tag"] = rng.choice(["dmp", "Urgence", "ordonnance"])
        if i % 4 == 0:
            msg["X-Tag"] = "second"
        msg.set_content(f"Corps du message {i}, mot {rng.choice(['alpha', 'glyquée', 'beta'])}.\n")
        out.append(msg.as_bytes())
    return out


def _values(msg: Message, name: str) -> list[str]:
    return [str(v) for v in msg.get_all(name, [])]


def _addresses(msg: Message, name: str) -> list[str]:
    """``name <local@domain>`` per address and the group names: what FROM/TO/CC match."""
    pieces: list[str] = []
    for header in msg.get_all(name, []):
        for group in header.groups:
            if group.display_name is not None:
                pieces.append(group.display_name)
            for a in group.addresses:
                pieces.append(f"{a.display_name} <{a.addr_spec}>" if a.display_name else a.addr_spec)
    return pieces


def _sent(msg: Message) -> date | None:
    try:
        return parsedate_to_datetime(str(msg["Date"])).date() if msg["Date"] else None
    except (TypeError, ValueError):
        return None


def _has(values: list[str], needle: str) -> bool:
    return any(needle.casefold() in v.casefold() for v in values)


Reference = Callable[[Message], bool]


def _programs() -> list[tuple[list[str], str | None, Reference]]:
    """(search arguments, literal UTF-8 argument or None, reference predicate)."""
    cases: list[tuple[list[str], str | None, Reference]] = []
    for needle in ["résultats", "URGENT", "straße", "strasse", "glyquée élevée", "07", "zzz"]:
        cases.append((["SUBJECT"], needle, lambda m, n=needle: _has(_values(m, "Subject"), n)))
    for key, field in [("FROM", "From"), ("TO", "To"), ("CC", "Cc")]:
        for needle in ["durand", "ZOË", "@labo.test", "García <", "équipe soins", "secretariat@hopital"]:
            cases.append(([key], needle, lambda m, n=needle, f=field: _has(_addresses(m, f), n)))
    for name, needle in [("X-Tag", "urgence"), ("X-Tag", "second"), ("Message-ID", "7.ref"), ("Subject", "")]:
        cases.append((["HEADER", name], needle, lambda m, h=name, n=needle: _has(_values(m, h), n)))
    for key, test in [
        ("SENTON", lambda d: d == DAY.date()),
        ("SENTBEFORE", lambda d: d < DAY.date()),
        ("SENTSINCE", lambda d: d >= DAY.date()),
    ]:
        cases.append(
            ([key, "5-Mar-2026"], None, lambda m, t=test: (lambda d: d is not None and t(d))(_sent(m)))
        )
    cases.append(
        (
            ["NOT", "FROM", "durand", "BODY", "glyqu", "TO"],
            "zoë",
            lambda m: (
                not _has(_addresses(m, "From"), "durand")
                and "glyqu" in m.get_body().get_content()  # type: ignore[union-attr]
                and _has(_addresses(m, "To"), "zoë")
            ),
        )
    )
    return cases


def _search(imap: imaplib.IMAP4, args: list[str], literal: str | None) -> list[int]:
    if literal is not None:
        imap.literal = literal.encode()  # type: ignore[attr-defined]
    typ, data = imap.uid("SEARCH", "CHARSET", "UTF-8", *args)
    assert typ == "OK", (args, literal, data)
    return [int(x) for x in data[0].split()]


def _check(port: int, context: ssl.SSLContext, raws: list[bytes], *, append: bool) -> None:
    parsed = [email.message_from_bytes(raw, policy=policy.default) for raw in raws]
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context) as imap:
        imap.login("alice", "wonderland")
        if append:
            assert imap.create(FOLDER)[0] == "OK"
            for raw in raws:
                assert imap.append(FOLDER, None, None, raw)[0] == "OK"
        assert imap.select(FOLDER)[0] == "OK"
        uids = [int(x) for x in imap.uid("SEARCH", "ALL")[1][0].split()]
        assert len(uids) == len(raws)
        for round_ in ("cold", "warm"):
            for args, literal, reference in _programs():
                expected = [u for u, m in zip(uids, parsed, strict=True) if reference(m)]
                assert _search(imap, args, literal) == expected, (round_, args, literal)


async def test_header_search_matches_python_email_reference(runtime: Runtime, tmp_path: Path) -> None:
    raws = _messages()
    async with running_server(runtime.store, tmp_path / "tls") as running:
        await asyncio.to_thread(_check, running.tls_port, running.tls.client, raws, append=True)
    # Blobs stored before migration 0022 have no sealed header fields: a server that starts
    # with an empty cache matches them from their parsed structure, with the same results.
    with runtime.store.engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM blobs WHERE search IS NULL")).scalar() == 0
        conn.execute(text("UPDATE blobs SET search = NULL WHERE id % 2 = 0"))
    second = open_runtime(runtime.settings)
    try:
        async with running_server(second.store, tmp_path / "tls2") as running:
            await asyncio.to_thread(_check, running.tls_port, running.tls.client, raws, append=False)
    finally:
        second.close()


def test_fields_hold_values_with_separators_apart() -> None:
    """A decoded value may hold the string's own separators: such a message keeps its fields
    apart (and is not stored in the compact form), so no needle matches across two fields."""
    meta = {
        "envelope": {"date": "Thu, 5 Mar 2026 10:00:00 +0100", "from": [[None, None, "a", "b.fr"]]},
        "headers": [["Subject", "un\x1esubject\x1fdeux"], ["X-Other", "trois"]],
    }
    fields = headerindex.fields_of(meta)
    assert fields.records is not None and headerindex.stored(fields) is None
    assert headerindex.header_test("Subject", "un\x1esubject")(fields)
    assert not headerindex.header_test("Subject", "deux\x1ex-other")(fields)
    assert not headerindex.header_test("subject\x1fdeux", "")(fields)
    assert headerindex.address_test("from", "A@B.FR")(fields)
    plain = headerindex.fields_of({"envelope": meta["envelope"], "headers": [["Subject", "Un Été"]]})
    assert headerindex.from_stored(headerindex.stored(plain) or b"") == plain
    assert headerindex.sent_test("ON", date(2026, 3, 5))(plain)
    assert not headerindex.header_test("Subject", "été\x1ex-other")(plain)


def test_header_cache_is_bounded_oldest_out() -> None:
    metas = {i: {"headers": [["Subject", f"sujet {i:011d}"]]} for i in range(1, 31)}
    one = len(headerindex.fields_of(metas[1]).text) + headerindex._ENTRY_OVERHEAD
    index = headerindex.HeaderIndex(budget=10 * one)  # ten messages' worth
    got = index.fields(None, None, list(metas), metas)  # type: ignore[arg-type]
    assert len(got) == 30 and headerindex.header_test("subject", "00000000007")(got[7])
    held = index.cached(list(range(21, 31)))
    assert held is not None and len(held) == 10
    assert index.cached([1]) is None and index.cached([20]) is None
