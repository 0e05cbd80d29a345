"""IMAP response syntax rendered from the store's parsed structure, against known-good output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mssante.imap.commands.values import Section
from mssante.imap.parser import parse_command
from mssante.imap.render import (
    apply_partial,
    astring,
    body_structure,
    envelope,
    flag_list,
    header_fields,
    internaldate,
    nstring,
    section_range,
    string,
)
from mssante.store.mime import analyse

RFC3501_HEADER = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
)

MIXED = (
    b'From: "Dr. A" <a@x.mssante.fr>\r\n'
    b"To: b@y.mssante.fr\r\n"
    b"Subject: Test\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"hello\r\nworld\r\n"
    b"--XX\r\n"
    b'Content-Type: application/pdf; name="a.pdf"\r\n'
    b'Content-Disposition: attachment; filename="a.pdf"\r\n'
    b"Content-Language: fr, en\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAAA\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: c@z\r\n"
    b"Subject: inner\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--XX--\r\n"
)


def test_strings_quoted_literal_nil() -> None:
    assert string("abc") == b'"abc"'
    assert string('a"b\\c') == b'"a\\"b\\\\c"'
    assert string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert string("été") == b"{5}\r\n" + "été".encode()
    assert string("été", utf8=True) == '"été"'.encode()
    assert string("x" * 2000).startswith(b"{2000}\r\n")
    assert nstring(None) == b"NIL"
    assert nstring("") == b'""'
    assert astring("INBOX") == b"INBOX"
    assert astring("Mes dossiers") == b'"Mes dossiers"'
    assert astring("") == b'""'
    assert flag_list(["\\Seen", "$Label"]) == b"(\\Seen $Label)"
    assert flag_list([]) == b"()"


def test_internaldate_format() -> None:
    when = datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=-7)))
    assert internaldate(when) == b'"17-Jul-1996 02:44:25 -0700"'
    assert internaldate(datetime(2024, 3, 5, 9, 0, 0, tzinfo=UTC)) == b'" 5-Mar-2024 09:00:00 +0000"'
    # What we render, our parser reads back.
    cmd = parse_command(b"a APPEND INBOX " + internaldate(when) + b" {1+}\r\nx")
    assert cmd.args.internaldate == when  # type: ignore[union-attr]


def test_envelope_matches_rfc3501_example() -> None:
    meta = analyse(RFC3501_HEADER + b"body\r\n")
    assert envelope(meta["envelope"]) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_with_8bit_subject_uses_a_literal() -> None:
    meta = analyse("Subject: Résultats\r\nFrom: a@b\r\n\r\nx".encode())
    assert b"{10}\r\nR\xc3\xa9sultats" in envelope(meta["envelope"])


def test_bodystructure_of_a_single_text_part() -> None:
    meta = analyse(RFC3501_HEADER + b"line one\r\nline two\r\n")
    assert body_structure(meta["part"]) == (
        b'("text" "plain" ("charset" "US-ASCII") NIL NIL "7bit" 20 2 NIL NIL NIL NIL)'
    )
    assert body_structure(meta["part"], extended=False) == (
        b'("text" "plain" ("charset" "US-ASCII") NIL NIL "7bit" 20 2)'
    )


def test_bodystructure_multipart_with_attachment_and_message_in_dovecot_shape() -> None:
    meta = analyse(MIXED)
    inner_env = (
        b'(NIL "inner" ((NIL NIL "c" "z")) ((NIL NIL "c" "z")) ((NIL NIL "c" "z")) NIL NIL NIL NIL NIL)'
    )
    assert body_structure(meta["part"]) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 2 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "a.pdf") NIL NIL "base64" 4 NIL '
        b'("attachment" ("filename" "a.pdf")) ("fr" "en") NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 39 ' + inner_env + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "XX") NIL NIL NIL)'
    )
    assert body_structure(meta["part"], extended=False) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 2)'
        b'("application" "pdf" ("name" "a.pdf") NIL NIL "base64" 4)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 39 ' + inner_env + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1) 4) "mixed")'
    )


def test_multipart_without_parts_gets_a_placeholder_body() -> None:
    meta = analyse(b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n")
    assert body_structure(meta["part"], extended=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
    )


def _section(raw: bytes, spec: str) -> bytes | None:
    (item,) = parse_command(f"a FETCH 1 BODY.PEEK[{spec}]".encode()).args.items  # type: ignore[union-attr]
    assert item.section is not None
    found = section_range(analyse(raw)["part"], item.section)
    if found is None:
        return None
    data = raw[found.start : found.end]
    if found.filtered:
        assert found.fields is not None
        return header_fields(data, found.fields, exclude=found.exclude)
    return data


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", MIXED),
        ("HEADER", MIXED[: MIXED.index(b"\r\n\r\n") + 4]),
        ("TEXT", MIXED[MIXED.index(b"\r\n\r\n") + 4 :]),
        ("1", b"hello\r\nworld"),
        ("1.MIME", b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        ("2", b"AAAA"),
        ("3", b"From: c@z\r\nSubject: inner\r\n\r\ninner body"),
        ("3.HEADER", b"From: c@z\r\nSubject: inner\r\n\r\n"),
        ("3.TEXT", b"inner body"),
        ("3.1", b"inner body"),
        ("3.HEADER.FIELDS (subject)", b"Subject: inner\r\n\r\n"),
        ("HEADER.FIELDS (To FROM x-absent)", b'From: "Dr. A" <a@x.mssante.fr>\r\nTo: b@y.mssante.fr\r\n\r\n'),
        (
            "HEADER.FIELDS.NOT (Content-Type From)",
            b"To: b@y.mssante.fr\r\nSubject: Test\r\n\r\n",
        ),
    ],
)
def test_sections(spec: str, expected: bytes) -> None:
    assert _section(MIXED, spec) == expected


@pytest.mark.parametrize("spec", ["4", "1.1", "2.HEADER", "3.2", "1.TEXT"])
def test_missing_sections(spec: str) -> None:
    assert _section(MIXED, spec) is None


def test_single_part_message_numbering() -> None:
    raw = b"Subject: s\r\n\r\nbody\r\n"
    assert _section(raw, "1") == b"body\r\n"
    assert _section(raw, "TEXT") == b"body\r\n"
    assert _section(raw, "2") is None


def test_folded_header_fields_are_kept_whole() -> None:
    block = b"Subject: a\r\n very long\r\nTo: x\r\n\tand y\r\nFrom: z\r\n\r\n"
    assert header_fields(block, ["subject", "TO"], exclude=False) == (
        b"Subject: a\r\n very long\r\nTo: x\r\n\tand y\r\n\r\n"
    )
    assert header_fields(block, ["subject"], exclude=True) == b"To: x\r\n\tand y\r\nFrom: z\r\n\r\n"


def test_partials() -> None:
    assert apply_partial(100, 200, None) == (100, 200)
    assert apply_partial(100, 200, (10, 20)) == (110, 130)
    assert apply_partial(100, 200, (90, 50)) == (190, 200)
    assert apply_partial(100, 200, (500, 5)) == (200, 200)
    assert Section((1,), "MIME").__str__() == "1.MIME"


def test_parsed_header_values_handed_out_are_the_callers_own() -> None:
    """Short From:/Content-Type values are parsed once for all: what a caller changes in its
    copy never shows in the next message's analysis."""
    from mssante.store import addresses

    first = addresses.parse('"Dr A" <a@demo.mssante.fr>')
    assert first == [["Dr A", None, "a", "demo.mssante.fr"]]
    first[0][0] = "changed"
    assert addresses.parse('"Dr A" <a@demo.mssante.fr>') == [["Dr A", None, "a", "demo.mssante.fr"]]
    message = b"From: a@demo.mssante.fr\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nx\r\n"
    analyse(message)["part"]["params"].append(["name", "x"])
    assert analyse(message)["part"]["params"] == [["charset", "utf-8"]]
