"""The keys SORT and THREAD compare (:mod:`mssante.store.sortkeys`): the Date field read directly
agrees with the standard library's parser on every form, and the cache stays bounded."""

from __future__ import annotations

import functools
import json
import random
import tracemalloc
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from mssante.imap.sortkeys import KeyCache, footprint
from mssante.imap.threading import SORT_KEYS, sort_order
from mssante.store.blobs import envelope_and_field
from mssante.store.mime import analyse
from mssante.store.sortkeys import from_stored, keys_from, keys_of, sent_timestamp, stored

# RFC 5322 §3.3 and appendix A, the obsolete forms of §4.3, and what broken clients write.
WRITTEN = [
    "Fri, 21 Nov 1997 09:55:06 -0600",
    "Tue, 1 Jul 2003 10:52:37 +0200",
    "Thu, 13 Feb 1969 23:32:54 -0330",
    "21 Nov 97 09:55:06 GMT",
    "Fri, 21 Nov 1997 09:55:06 -0000",
    "Fri, 21 Nov 1997 09:55 +0000",
    "Fri, 21 Nov 1997 09:55:06 +0000 (UTC)",
    "Friday, 21 November 1997 09:55:06 +0100",
    "  Fri,  21  Nov  1997  09:55:06  +0100  ",
    "Fri,21 Nov 1997 09:55:06 +0100",
    "Fri, 21 Nov 0097 09:55:06 +0100",
    "Mon, 4 Mar 2024 10:00:00 EST",
    "Mon, 31 Feb 2024 10:00:00 +0000",
    "Mon, 4 Mar 2024 25:00:00 +0000",
    "Mon, 4 Mar 2024 10:60:00 +0000",
    "Mon, 4 Mar 2024 10:00:60 +0000",
    "Mon, 4 Mar 2024 10:00:00 +2400",
    "Mon, 4 Mar 2024 10:00:00 +0075",
    "Mon, 4 Foo 2024 10:00:00 +0000",
    "4 Mar 2024",
    "garbage",
    "",
]


def _standard(raw: str) -> float | None:
    """The reading the fast one must agree with: the standard library's, UTC when no zone."""
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _generated(rng: random.Random) -> str:
    day = rng.choice(["", "Mon, ", "Tue,", "mon, "])
    month = rng.choice(["Jan", "feb", "MAR", "Dec", "Sept", "xyz"])
    zone = rng.choice(["+0000", "-0000", "+0530", "-1200", "+9959", "UT", "CEST", "+01"])
    seconds = rng.choice(["", f":{rng.randint(0, 61):02d}"])
    year = rng.choice([str(rng.randint(1000, 2999)), str(rng.randint(0, 99)), "0999"])
    hour, minute = rng.randint(0, 25), rng.randint(0, 61)
    return f"{day}{rng.randint(0, 32)} {month} {year} {hour:02d}:{minute:02d}{seconds} {zone}"


def test_the_date_read_directly_agrees_with_the_standard_parser() -> None:
    rng = random.Random(5256)
    for raw in WRITTEN + [_generated(rng) for _ in range(20_000)]:
        assert sent_timestamp(raw) == _standard(raw), raw
    assert sent_timestamp(None) is None


def test_keys_of_a_stored_structure() -> None:
    envelope = {
        "date": "Mon, 4 Mar 2024 10:00:00 +0100",
        "subject": "Re: [labo] =?utf-8?q?R=C3=A9sultats?= (fwd)",
        "from": [["Zoé", None, "zoe", "b.fr"]],
        "cc": [["équipe", None, None, None]],
        "message_id": "<b@x>",
        "in_reply_to": "<a@x> <z@x>",
    }
    keys = keys_of({"envelope": envelope})
    assert keys.subject == "RÉSULTATS" and keys.reply and keys.first_from == "ZOE"
    assert keys.display_from == "ZOÉ" and keys.display_to == ""  # RFC 5957: the name as shown
    shown = keys_of(
        {"envelope": {"from": [[None, None, "zoe", "b.fr"]], "to": [["=?utf-8?q??=", None, "d", None]]}}
    )
    assert shown.display_from == "ZOE@B.FR" and shown.display_to == "D"  # no name: the address
    assert keys.first_to == "" and keys.first_cc == "" and keys.message_id == "<b@x>"
    assert keys.sent == 1709542800.0 and keys.parents is None  # the envelope alone: links unknown
    linked = keys_of({"envelope": envelope, "headers": [["References", "<r@x> <a@x>"]]})
    assert linked.parents == ("<r@x>", "<a@x>")
    assert keys_of({"envelope": envelope, "headers": []}).parents == ("<a@x>",)  # In-Reply-To's first
    gone = keys_of(None)
    assert gone.sent is None and gone.subject == "" and not gone.reply and gone.parents is None


# Header sections as mail clients and list servers write them, each with a body after it; the
# traps are where a search of the structure's text for the References pair could go wrong.
_HEADS = {
    "a reply": (
        "Subject: Re: bilan\r\nMessage-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\nReferences: <r@x>\r\n\t<a@x>\r\n"
    ),
    "In-Reply-To alone": "Subject: bilan\r\nIn-Reply-To: <a@x> <z@x>\r\n",
    "no header of the thread": "Subject: bilan\r\nDate: Mon, 4 Mar 2024 10:00:00 +0100\r\n",
    "the name in capitals": "REFERENCES: <up@x>\r\nSubject: x\r\n",
    "two fields, the first counts": "references: <one@x>\r\nReferences: <two@x>\r\n",
    "an empty field": "References: \r\nIn-Reply-To: <a@x>\r\n",
    "the pair quoted in values": (
        'Subject: ["References","<fake@x>"]\r\nX-Note: ["References","<fake2@x>"],"part":\r\n'
        'Comments: \\"],["References","<fake3@x>\r\n'
    ),
    "quotes, backslashes, encoded words": (
        'References: <a\\"b@x> =?utf-8?q?=C3=A9?= <c@d>\r\nSubject: =?utf-8?q?R=C3=A9sultats?=\r\n'
    ),
    "a MIME parameter of that name": (
        'Content-Type: text/plain; references="<param@x>"\r\nIn-Reply-To: <a@x>\r\n'
    ),
    "no header at all": "",
}


@pytest.mark.parametrize("head", _HEADS.values(), ids=_HEADS.keys())
def test_keys_read_from_a_sealed_structure_are_those_of_the_whole_structure(head: str) -> None:
    """SORT and THREAD read the envelope and the References field out of the stored structure's
    text without decoding the rest: the keys must be those of the structure decoded whole."""
    stored = json.dumps(analyse(f"{head}\r\nCorps du message.\r\n".encode()), separators=(",", ":"))
    whole = json.loads(stored)
    assert keys_from(stored.encode(), threads=True) == keys_of(whole)
    assert keys_from(stored.encode(), threads=False) == keys_of({"envelope": whole["envelope"]})
    # Laid out otherwise (not as delivery writes it): read whole, the same keys.
    reordered = json.dumps({"part": whole["part"], **whole}).encode()
    assert envelope_and_field(reordered, "References") is None
    assert keys_from(reordered, threads=True) == keys_of(whole)


def test_the_references_field_is_read_from_the_header_index_alone() -> None:
    def stored(head: str, **layout: object) -> bytes:
        return json.dumps(analyse(f"{head}\r\nCorps.\r\n".encode()), **layout).encode()  # type: ignore[arg-type]

    compact = {"separators": (",", ":")}
    assert envelope_and_field(stored("References: <r@x>\r\n", **compact), "References") == (
        json.loads(stored("References: <r@x>\r\n"))["envelope"],
        "<r@x>",
    )
    for trap in ("the pair quoted in values", "a MIME parameter of that name"):
        found = envelope_and_field(stored(_HEADS[trap], **compact), "References")
        assert found is not None and found[1] is None, trap
    # Written with blanks after the separators: not delivery's layout, so not read this way.
    assert envelope_and_field(stored("References: <r@x>\r\n"), "References") is None


@pytest.mark.parametrize("head", [*_HEADS.values(), "Subject: =?utf-8?b?4oCoXx8i?= \\ \x7f\r\n"])
def test_the_keys_sealed_at_delivery_read_back_the_same(head: str) -> None:
    keys = keys_of(analyse(f"{head}\r\nCorps.\r\n".encode()))
    assert keys.parents is not None  # worked out with the header index: links included
    assert from_stored(stored(keys)) == keys
    assert from_stored(stored(keys).replace(b'"k1"', b'"k0"', 1)) is None  # other rules: not trusted


@pytest.mark.parametrize("references", [0, 5, 200])
def test_the_cache_counts_the_memory_its_keys_take(references: int) -> None:
    """The cache's bound is in bytes of memory: what it counts is what tracemalloc measures."""

    def head(n: int) -> bytes:
        ids = " ".join(f"<ref{r}.{n}@hopital.mssante.fr>" for r in range(references))
        return (
            f"From: Dr Jeanne Martin <jeanne.martin{n}@hopital.mssante.fr>\r\n"
            f"To: secretariat{n}@clinique.mssante.fr\r\nSubject: Re: Compte rendu {n}\r\n"
            f"Date: Mon, 7 Dec 2026 05:{n % 60:02d}:00 +0100\r\nMessage-ID: <{n}.cr@hopital.mssante.fr>\r\n"
            + (f"References: {ids}\r\n" if ids else "")
            + "\r\ncorps\r\n"
        ).encode()

    sealed = [stored(keys_of(analyse(head(n)))) for n in range(2000)]
    cache = KeyCache(limit=1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, form in enumerate(sealed, 10_000):
            keys = from_stored(form)
            assert keys is not None
            cache.add(n, keys)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 <= cache.size / taken <= 1.1


def test_the_cache_keeps_the_most_recently_used_contents_within_its_bytes() -> None:
    envelope_only, with_links = keys_of({"envelope": {}}), keys_of({"envelope": {}, "headers": []})
    cache = KeyCache(limit=3 * footprint(envelope_only))
    for blob_id in (1, 2, 3):
        cache.add(blob_id, envelope_only)
    assert cache.lookup([1], threads=False) == {1: envelope_only}  # 1 is now the most recent
    cache.add(4, with_links)
    assert len(cache) == 3 and set(cache.lookup([1, 2, 3, 4], threads=False)) == {1, 3, 4}
    # THREAD REFERENCES needs the links: keys read from the envelope alone do not answer it.
    assert set(cache.lookup([1, 3, 4], threads=True)) == {4}
    # A References field of thousands of ids weighs what it takes: it pushes the others out.
    chain = " ".join(f"<r{i}@elsewhere.example>" for i in range(3000))
    long_chain = keys_of({"envelope": {}, "headers": [["References", chain]]})
    assert footprint(long_chain) > 3 * footprint(envelope_only)
    cache.add(5, long_chain)
    assert len(cache) == 0 and cache.size == 0
    cache.add(1, envelope_only)
    cache.add(1, envelope_only)  # read again: counted once
    assert cache.size == footprint(envelope_only)


def _rfc5256_order(criteria: tuple[str, ...], rows: list[dict[str, Any]]) -> list[int]:
    """RFC 5256 §3 read literally: compare two messages criterion by criterion (REVERSE turning
    the next one around), the first difference decides, the message number last."""
    steps, reverse = [], False
    for criterion in criteria:
        if criterion == "REVERSE":
            reverse = True
        else:
            steps.append((criterion, reverse))
            reverse = False

    def compare(a: int, b: int) -> int:
        for criterion, descending in steps:
            x, y = rows[a][criterion], rows[b][criterion]
            if x != y:
                return (-1 if x < y else 1) * (-1 if descending else 1)
        return -1 if a < b else (1 if a > b else 0)

    return sorted(range(len(rows)), key=functools.cmp_to_key(compare))


def test_sort_orders_as_rfc_5256_compares() -> None:
    """The multi-pass sort over precomputed values gives the order of the RFC's comparison, on
    random folders: ties, missing Date fields (the arrival date stands in), every criterion."""
    rng = random.Random(5256)
    names = sorted(SORT_KEYS)
    for _ in range(400):
        count = rng.randint(0, 40)
        sizes = [rng.choice([100, 200, 300]) for _ in range(count)]
        arrivals = [rng.choice([10, 20, 30]) for _ in range(count)]
        keys = [
            keys_of(None)._replace(
                sent=rng.choice([None, 10.0, 15.0, 30.0]),
                subject=rng.choice(["", "A", "B", "ÉCHO"]),
                first_from=rng.choice(["", "X", "Y"]),
                first_to=rng.choice(["", "X"]),
                first_cc=rng.choice(["", "Z"]),
                display_from=rng.choice(["", "MARIE", "ZOÉ"]),
                display_to=rng.choice(["", "A"]),
            )
            for _ in range(count)
        ]
        criteria: tuple[str, ...] = ()
        for name in rng.sample(names, rng.randint(1, 3)):
            criteria += ("REVERSE", name) if rng.random() < 0.4 else (name,)
        columns = {"size": sizes, "date": arrivals}
        rows = [
            {
                "ARRIVAL": arrivals[i],
                "SIZE": sizes[i],
                "DATE": arrivals[i] if keys[i].sent is None else keys[i].sent,
                "SUBJECT": keys[i].subject,
                "FROM": keys[i].first_from,
                "TO": keys[i].first_to,
                "CC": keys[i].first_cc,
                "DISPLAYFROM": keys[i].display_from,
                "DISPLAYTO": keys[i].display_to,
            }
            for i in range(count)
        ]
        expected = _rfc5256_order(criteria, rows)
        assert sort_order(criteria, count, keys, columns.__getitem__) == expected, criteria
