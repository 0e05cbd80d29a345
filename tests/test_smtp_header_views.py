"""The policy reads a header as every mail reader will: a differential test against Python's
``email`` package (default policy), the parser of many clients and scripts.

Header blocks are mutated at random (seeded): control characters, bare CR or LF, Unicode line
separators, continuation lines, malformed field names, hidden ``From:`` fields. Whatever the
front door accepts must show exactly the same fields to ``email``, hence the same single
``From:``; what it refuses gets a 5.6.x reason.
"""

from __future__ import annotations

import email.parser
import email.policy
import random

from mssante.smtp import hygiene
from mssante.smtp.spool import Received
from mssante.store.mime import parse_headers

OWN = "claire.martin@demo.mssante.fr"
OTHER = "paul.durand@demo.mssante.fr"
PIECES = [
    "\x00", "\x09", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f", "\r", "\n", "\r\n",
    "\x85", "\u2028", "\u2029", " ", ":", "From:", f"From: <{OWN}>", "\r\n ", "\r\n\t", "é",
]  # fmt: skip
SEED = 2026
CASES = 3000


def block(rng: random.Random) -> bytes:
    lines = [
        f"From: {OTHER}",
        "To: someone@demo.mssante.fr",
        "Subject: compte rendu",
        "Date: Thu, 26 Nov 2026 10:00:00 +0100",
        "X-Hide: x",
    ]
    rng.shuffle(lines)
    text = "\r\n".join(lines)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(PIECES) + text[at:]
    return (text + "\r\n\r\nbody\r\n").encode("utf-8")


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def python_view(data: bytes) -> list[tuple[str, str]]:
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    return [(name, str(value)) for name, value in parsed.items()]


def test_accepted_headers_read_the_same_to_python_email() -> None:
    rng = random.Random(SEED)
    accepted = refused = 0
    for number in range(CASES):
        data = block(rng)
        smtputf8 = rng.random() < 0.5
        facts, problem, _ = hygiene.inspect(data, smtputf8=smtputf8)
        if problem is not None:
            assert problem.status.startswith("5.6."), problem
            refused += 1
            continue
        accepted += 1
        ours = parse_headers(hygiene.header_block(data))
        theirs = python_view(data)
        assert [n.lower() for n, _ in ours] == [n.lower() for n, _ in theirs], (number, data)
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        [python_from] = parsed.get_all("From")
        # (``email`` keeps 8-bit bytes as surrogates, we decode UTF-8: compare the bytes.)
        theirs_from = [raw(a.addr_spec) for a in python_from.addresses]
        assert theirs_from == [raw(a) for a in facts.from_addresses], (number, data)
    assert accepted > 100 and refused > 100, (accepted, refused)


def test_the_hidden_from_of_issue_13() -> None:
    date = "Date: Thu, 26 Nov 2026 10:00:00 +0100\r\n"
    data = f"X-Hide: x\x1cFrom: <{OWN}>\x0c\r\nFrom: {OTHER}\r\n{date}\r\nx\r\n".encode()
    # What Python's email shows: only the other doctor.
    assert [v for n, v in python_view(data) if n == "From"] == [OTHER]
    # What the policy is told: a refusal, not "From: <own>".
    _, problem, _ = hygiene.inspect(data)
    assert problem is not None and problem.smtp.startswith(
        "550 5.6.0 control character 0x1C in header line 1"
    )


def test_sender_fields_are_dropped_with_their_continuations() -> None:
    data = (
        b"From: a@x.fr\r\nSender: b@x.fr,\r\n c@x.fr\r\nSubject: s\r\nsender: d@x.fr\r\n\r\nSender: body\r\n"
    )
    received = Received()
    received.extend(data)
    received.drop_fields("Sender")
    stored = received.finish(b"Received: x\r\n")
    assert stored == b"Received: x\r\nFrom: a@x.fr\r\nSubject: s\r\n\r\nSender: body\r\n"
