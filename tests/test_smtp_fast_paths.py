"""The per-message fast paths of the SMTP front door answer exactly as the slow definitions they
shortcut: differential tests (seeded) against the plain regexes of DATA's line checks, aiosmtpd's
RFC 5322 path parser, and the two header parsers ``From:`` must satisfy.
"""

from __future__ import annotations

import email.policy
import random
from collections.abc import Callable
from email.utils import getaddresses

from aiosmtpd.smtp import SMTP

from mssante.smtp import hygiene
from mssante.smtp import session as smtp_session
from mssante.smtp.session import MSSanteSMTP, data_problem

SEED = 2026


def _reference_problem(buffer: bytearray, start: int, end: int) -> str | None:
    """DATA's line checks as defined: each regex over the whole region."""
    if smtp_session._BARE_CR.search(buffer, start, end):
        return "5.6.0 Bare CR"
    if smtp_session._LONE_DOT.search(buffer, start - 2, end):
        return "5.6.0 lone"
    if smtp_session._LONG_LINE.search(buffer, start - 1, end):
        return "5.5.2 Line too long"
    return None


def test_data_line_checks_find_what_the_regexes_find() -> None:
    rng = random.Random(SEED)
    pieces = [b"a", b"\r\n", b"\n", b".", b"x" * 50, b"y" * 400, b"\r\n.", b"\n.\n", b"\r"]
    found = {None: 0, "5.6.0 Bare CR": 0, "5.6.0 lone": 0, "5.5.2 Line too long": 0}
    for _ in range(4000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(60)))
        if rng.random() < 0.5:
            body += b"z" * rng.randrange(990, 1010)  # around the limit, at any offset
        buffer = bytearray(b"\r\n" + body + b"\r\n")
        end = buffer.rfind(b"\n") + 1
        expected = _reference_problem(buffer, 2, end)
        got = data_problem(buffer, 2, end, 1)
        if expected is None:
            assert got is None, (body, got)
        else:
            status, _, words = expected.partition(" ")
            assert got is not None and f" {status} " in got and words.lower() in got.lower(), (body, got)
        found[expected] += 1
    assert all(found.values()), found  # every verdict was exercised


def test_envelope_paths_read_as_aiosmtpd_reads_them() -> None:
    ours, theirs = MSSanteSMTP.__new__(MSSanteSMTP), SMTP.__new__(SMTP)
    cases = [
        "<a@b.fr> SIZE=1", "<a@b.fr>", "<a@b.fr>SIZE=1", "<a.b@c.fr>  BODY=8BITMIME", "< a@b.fr >",
        "<A@B.FR> x", "<a@b.fr> (c) SIZE=1", '<"q"@b.fr>', "<a@[1.2.3.4]>", "<a..b@c>", "<a@b.>",
        "<@x:a@b.fr>", "<a@b.fr>\tSIZE=1 BODY=7BIT", "<a@b-c.fr>(x)", "<>", "<a@b.fr", "a@b.fr",
        "<a+b'x@b.fr> ", "<é@b.fr>", "<a@b.fr>>", "<a@b.fr> <c@d>", "<a.@b.fr>", "<.a@b.fr>",
        "<a@.b.fr>", "<claire.martin@demo.mssante.fr> SIZE=10240",
    ]  # fmt: skip
    rng = random.Random(SEED)
    atoms = ["a", "b.c", "@", "<", ">", " ", "x@y.fr", "-", "(", ")", '"', ".", "é", "\t", "=1"]
    cases += ["<" + "".join(rng.choice(atoms) for _ in range(rng.randrange(8))) for _ in range(3000)]
    for limit in (0, 3):
        ours.local_part_limit = theirs.local_part_limit = limit
        for case in cases:
            assert _outcome(ours._getaddr, case) == _outcome(theirs._getaddr, case), case


def _outcome(parse: Callable[[str], object], value: str) -> object:
    """What ``parse`` gives, or the exception (Python's parser fails on some inputs: so must the
    fast path, by handing them to it)."""
    try:
        return parse(value)
    except Exception as exc:  # the outcome is compared, whatever it is
        return type(exc)


def _both_parsers(value: str) -> tuple[str, ...]:
    """``from_addresses`` as defined: both parsers, no defect, the same addresses."""
    header = email.policy.default.header_factory("From", value)
    if header.defects:
        return ()
    modern = tuple(a.addr_spec for a in header.addresses)
    classic = tuple(addr for _, addr in getaddresses([value]) if addr)
    return modern if [a.lower() for a in modern] == [a.lower() for a in classic] else ()


def test_from_addresses_read_as_both_parsers_read_them() -> None:
    cases = [
        "a@b.fr", " a@b.fr ", "Jean Dupont <jean.dupont@x.fr>", "Jean Dupont<a@b.fr>", "a@b.fr, c@d.fr",
        '"Dupont, Jean" <a@b.fr>', "Jean (x) <a@b.fr>", "a@b.fr (Jean)", "=?utf-8?q?J=C3=A9?= <a@b.fr>",
        "Jean-Pierre O_Neil <a.b+c@d-e.f>", "a@b@c.fr", "a@b.fr <c@d.fr>", "Jean <a@b.fr> x", "a@b.",
        "John Q. Public <a@b.fr>", "x{y}@b.fr", "A@B.FR",
    ]  # fmt: skip
    rng = random.Random(SEED)
    words = ["a", "b.c", "@", "<", ">", " ", "x@y.fr", "Jean", "-", "_", "\t", ",", '"', "(", ")", "=?", "é"]
    cases += ["".join(rng.choice(words) for _ in range(rng.randrange(1, 8))) for _ in range(5000)]
    for case in cases:
        assert _outcome(hygiene.from_addresses, case) == _outcome(_both_parsers, case), case
