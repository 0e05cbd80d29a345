"""The IMAP framer and grammar: every command shape, literals, and hostile input."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mssante.imap import mutf7
from mssante.imap.commands.values import (
    Append,
    CopyMove,
    Create,
    Enable,
    Expunge,
    FetchItem,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    Rename,
    Search,
    SearchKey,
    Section,
    SequenceSet,
    Status,
    Store,
)
from mssante.imap.framing import CommandReady, Framer, LineTooLong, NeedContinuation, Rejected
from mssante.imap.parser import parse_command
from mssante.imap.reader import ParseError

# --- modified UTF-7 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", "INBOX"),
        ("Envoyés", "Envoy&AOk-s"),
        ("A&B", "A&-B"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("☺!", "&Jjo-!"),
        ("𝄞", "&2DTdHg-"),  # a surrogate pair
    ],
)
def test_mutf7_round_trip(text: str, wire: str) -> None:
    assert mutf7.encode(text) == wire
    assert mutf7.decode(wire) == text


@pytest.mark.parametrize(
    "bad",
    ["&AOk", "&AGE-", "&Jjo-&Jjo-", "é", "&A-", "&AOk=-", "&AOl-"],
)
def test_mutf7_rejects_non_canonical(bad: str) -> None:
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(bad)


# --- framing ---------------------------------------------------------------------------------


def drain(framer: Framer) -> list[object]:
    events = []
    while (event := framer.next_event()) is not None:
        events.append(event)
    return events


def test_framer_splits_lines_and_keeps_partial_input() -> None:
    f = Framer()
    f.feed(b"a1 NOOP\r\na2 CAPA")
    assert drain(f) == [CommandReady(b"a1 NOOP")]
    f.feed(b"BILITY\r\n")
    assert drain(f) == [CommandReady(b"a2 CAPABILITY")]


def test_synchronising_literal_asks_for_continuation() -> None:
    f = Framer()
    f.feed(b"a LOGIN {4}\r\n")
    assert drain(f) == [NeedContinuation()]
    f.feed(b"fred {6}\r\n")
    assert drain(f) == [NeedContinuation()]
    f.feed(b"s3cr\r\n\r\n")
    assert drain(f) == [CommandReady(b"a LOGIN {4}\r\nfred {6}\r\ns3cr\r\n")]


def test_non_synchronising_literal_needs_no_continuation() -> None:
    f = Framer()
    f.feed(b"a LOGIN {4+}\r\nfred {3+}\r\nabc\r\n")
    assert drain(f) == [CommandReady(b"a LOGIN {4+}\r\nfred {3+}\r\nabc")]


def test_literal_may_contain_line_breaks_and_bare_lf_lines_are_accepted() -> None:
    f = Framer()
    f.feed(b"t APPEND INBOX {6+}\r\nx\r\ny\nz\n")
    assert drain(f) == [CommandReady(b"t APPEND INBOX {6+}\r\nx\r\ny\nz")]


def test_oversized_synchronising_literal_is_refused_before_it_is_read() -> None:
    f = Framer(max_literal=100)
    f.feed(b"a1 LOGIN {101}\r\n")
    assert drain(f) == [Rejected("a1", "BAD Literal too large")]
    f.feed(b"a2 NOOP\r\n")
    assert drain(f) == [CommandReady(b"a2 NOOP")]


def test_oversized_append_gets_toobig_and_is_not_buffered() -> None:
    f = Framer(max_append=1000)
    f.feed(b"a1 APPEND INBOX {999999999}\r\n")
    assert drain(f) == [Rejected("a1", "NO [TOOBIG] Message too large")]


def test_oversized_non_synchronising_literal_is_discarded_with_bounded_memory() -> None:
    f = Framer(max_literal=100)
    f.feed(b"a1 LOGIN {5000+}\r\n")
    assert drain(f) == []
    for _ in range(5):
        f.feed(b"x" * 1000)
        assert drain(f) == []
        assert f.buffered < 200
    f.feed(b" pass\r\na2 NOOP\r\n")
    assert drain(f) == [Rejected("a1", "BAD Literal too large"), CommandReady(b"a2 NOOP")]


def test_huge_literal_count_is_refused() -> None:
    f = Framer()
    f.feed(b"a1 LOGIN {99999999999999999999999}\r\n")
    assert drain(f) == [Rejected("a1", "BAD Literal too large")]


def test_endless_line_is_dropped_and_answered_bad() -> None:
    f = Framer(max_line=1000)
    f.feed(b"a1 SEARCH ")
    for _ in range(100):
        f.feed(b"SUBJECT x " * 100)
        assert drain(f) == []
        assert f.buffered < 3000
    f.feed(b"ALL\r\na2 NOOP\r\n")
    assert drain(f) == [Rejected("a1", "BAD Command line too long"), CommandReady(b"a2 NOOP")]


def test_long_line_ending_in_synchronising_literal_is_answered_without_continuation() -> None:
    f = Framer(max_line=100)
    f.feed(b"a1 LOGIN " + b"x" * 500 + b" {5}\r\n")
    assert drain(f) == [Rejected("a1", "BAD Command line too long")]


def test_command_size_is_bounded_across_literals() -> None:
    f = Framer(max_literal=100, max_command=250)
    f.feed(b"a SEARCH TEXT {90+}\r\n" + b"a" * 90 + b" TEXT {90+}\r\n" + b"b" * 90)
    f.feed(b" TEXT {90+}\r\n" + b"c" * 90 + b"\r\n")
    assert drain(f) == [Rejected("a", "BAD Literal too large")]


def test_before_login_literals_are_small_and_only_for_login_and_id() -> None:
    f = Framer(preauth_literal=1024)
    f.feed(b"a1 APPEND INBOX {26214400}\r\n")
    assert drain(f) == [Rejected("a1", "BAD No literal is accepted for this command before login")]
    f.feed(b"a2 LOGIN {1025}\r\n")
    assert drain(f) == [Rejected("a2", "BAD Literal too large before login (at most 1024 bytes)")]
    f.feed(b"a3 LOGIN {5}\r\n")
    assert drain(f) == [NeedContinuation()]
    f.feed(b"alice {3+}\r\npwd\r\n")
    assert drain(f) == [CommandReady(b"a3 LOGIN {5}\r\nalice {3+}\r\npwd")]
    f.logged_in()
    f.feed(b"a4 APPEND INBOX {2048}\r\n")
    assert drain(f) == [NeedContinuation()]


def test_before_login_a_literal_sent_anyway_ends_the_connection() -> None:
    f = Framer(preauth_literal=1024)
    f.feed(b"a1 APPEND INBOX {26214400+}\r\n" + b"x" * 4096)
    assert drain(f) == [
        Rejected("a1", "BAD No literal is accepted for this command before login", close=True)
    ]
    f = Framer(max_line=100, preauth_literal=1024)
    f.feed(b"a1 LOGIN " + b"x" * 500 + b" {5000+}\r\n")
    assert drain(f) == [Rejected("a1", "BAD Command line too long", close=True)]


def test_next_line_for_idle_and_sasl() -> None:
    f = Framer(max_line=10)
    f.feed(b"DONE\r\na1 NOOP\r\n")
    assert f.next_line() == b"DONE"
    assert drain(f) == [CommandReady(b"a1 NOOP")]
    f.feed(b"x" * 50)
    with pytest.raises(LineTooLong):
        f.next_line()


# --- grammar -----------------------------------------------------------------------------------


def p(text: str | bytes, **kw: bool):  # type: ignore[no-untyped-def]
    return parse_command(text.encode() if isinstance(text, str) else text, **kw)


def bad(text: str | bytes) -> ParseError:
    with pytest.raises(ParseError) as info:
        p(text)
    return info.value


@pytest.mark.parametrize(
    "name", ["CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE", "NAMESPACE"]
)
def test_commands_without_arguments(name: str) -> None:
    cmd = p(f"a1 {name.lower()}")
    assert (cmd.tag, cmd.name, cmd.args) == ("a1", name, None)
    assert bad(f"a1 {name} extra").tag == "a1"


def test_login_with_atoms_quoted_and_literals() -> None:
    assert p("a LOGIN fred secret").args == Login("fred", "secret")
    assert p('a LOGIN "fred smith" "pa\\"ss\\\\"').args == Login("fred smith", 'pa"ss\\')
    assert p(b"a LOGIN {4}\r\nfred {7+}\r\npa ss\r\n").args == Login("fred", "pa ss\r\n")
    assert p("a LOGIN user]x pw").args == Login("user]x", "pw")  # ASTRING-CHAR includes "]"


@pytest.mark.parametrize(
    "line",
    [
        'a LOGIN "unterminated',
        'a LOGIN "bad\\escape" x',
        "a LOGIN fred",
        "a LOGIN  fred x",
        "a LOGIN fred x ",
        "a LOGIN f(red x",
        b"a LOGIN {10}\r\nshort",
        "+tag NOOP",
        "",
        "a",
        "a FROBNICATE",
        "a UID NOOP",
    ],
)
def test_syntax_errors_are_bad(line: str | bytes) -> None:
    err = bad(line)
    assert err.status == "BAD"


def test_error_carries_the_tag() -> None:
    assert bad("x17 LOGIN").tag == "x17"
    assert bad("x17 LOGIN").response().startswith("x17 BAD ")


def test_authenticate_with_initial_response() -> None:
    cmd = p("a AUTHENTICATE plain AGZyZWQAc2VjcmV0")
    assert cmd.args.mechanism == "PLAIN"  # type: ignore[union-attr]
    assert cmd.args.initial == b"AGZyZWQAc2VjcmV0"  # type: ignore[union-attr]
    assert p("a AUTHENTICATE PLAIN =").args.initial == b"="  # type: ignore[union-attr]
    assert p("a AUTHENTICATE XOAUTH2").args.initial is None  # type: ignore[union-attr]
    bad("a AUTHENTICATE PLAIN ab!c")


def test_mailbox_names() -> None:
    assert p("a SELECT inbox").args == MailboxArg("INBOX")
    assert p('a SELECT "Envoy&AOk-s"').args == MailboxArg("Envoyés")
    assert p("a EXAMINE InBox/Sub").args == MailboxArg("INBOX/Sub")
    assert p("a SELECT INBOX (CONDSTORE)").args == MailboxArg("INBOX", ("CONDSTORE",))
    assert p("a DELETE Archives").args == MailboxArg("Archives")
    assert p("a SUBSCRIBE {3}\r\nabc").args == MailboxArg("abc")
    bad("a SELECT &AOk")
    # Under UTF8=ACCEPT names are raw UTF-8.
    assert p('a SELECT "Envoyés"'.encode(), utf8=True).args == MailboxArg("Envoyés")
    bad('a SELECT "Envoyés"'.encode())


def test_create_rename_and_special_use() -> None:
    assert p("a CREATE Projets").args == Create("Projets")
    assert p("a CREATE Brouillons (USE (\\Drafts))").args == Create("Brouillons", ("\\Drafts",))
    assert p("a RENAME a b").args == Rename("a", "b")
    bad("a CREATE x (FOO (\\Drafts))")


def test_list_and_lsub() -> None:
    assert p('a LIST "" *').args == ListArgs("", ("*",))
    assert p('a LIST "" %/]x').args == ListArgs("", ("%/]x",))
    assert p("a LSUB INBOX/ %").args == ListArgs("INBOX/", ("%",))
    assert p('a LIST (SPECIAL-USE) "" ("*" INBOX) RETURN (CHILDREN)').args == ListArgs(
        "", ("*", "INBOX"), ("SPECIAL-USE",), ("CHILDREN",)
    )
    assert p('a LIST "" "Envoy&AOk-s"').args == ListArgs("", ("Envoyés",))
    bad('a LSUB (SUBSCRIBED) "" *')


def test_status() -> None:
    assert p("a STATUS INBOX (MESSAGES UIDNEXT unseen)").args == Status(
        "INBOX", ("MESSAGES", "UIDNEXT", "UNSEEN")
    )
    bad("a STATUS INBOX (FOO)")
    bad("a STATUS INBOX ()")


def test_append_with_flags_and_date() -> None:
    cmd = p(b'a APPEND Sent (\\Seen $Label) " 5-Mar-2024 14:03:09 +0100" {5+}\r\nhello')
    assert cmd.args == Append(
        "Sent",
        ("\\Seen", "$Label"),
        datetime(2024, 3, 5, 14, 3, 9, tzinfo=timezone(timedelta(hours=1))),
        b"hello",
    )
    assert p(b"a APPEND INBOX {2}\r\nhi").args == Append("INBOX", (), None, b"hi")
    bad(b"a APPEND INBOX hello")
    bad(b'a APPEND INBOX "31-Feb-2024 00:00:00 +0000" {1}\r\nx')
    bad(b"a APPEND INBOX (\\Recent) {1}\r\nx")


def test_multiappend_as_imapclient_writes_it() -> None:
    """imapclient (4.x) sends a space after each message literal and another before the next
    ``{n+}``: accepted, as Dovecot accepts it; the messages and their options are unchanged."""
    cmd = p(b"a APPEND Sent {2+}\r\nhi  {3+}\r\nbye  (\\Seen) {2+}\r\nok")
    assert cmd.args == Append("Sent", (), None, b"hi", (((), None, b"bye"), (("\\Seen",), None, b"ok")))
    bad(b"a APPEND Sent {2+}\r\nhi  ")


def test_sequence_sets() -> None:
    cmd = p("a FETCH 1:3,7,9:*,* FLAGS")
    seq = cmd.args.sequence  # type: ignore[union-attr]
    assert seq == SequenceSet(((1, 3), (7, 7), (9, None), (None, None)))
    assert str(seq) == "1:3,7,9:*,*"
    assert seq.numbers(10) == [1, 2, 3, 7, 9, 10]
    assert SequenceSet(((5, 2),)).numbers(10) == [2, 3, 4, 5]
    assert SequenceSet(((10, None),)).contains(5, 5)  # "10:*" with largest 5 matches 5
    for wrong in ("0", "1:0", "01", "1,", ":3", "1::2", "4294967296"):
        bad(f"a FETCH {wrong} FLAGS")


def test_fetch_attributes_and_macros() -> None:
    assert p("a FETCH 1 ALL").args.items == tuple(  # type: ignore[union-attr]
        FetchItem(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")
    )
    assert len(p("a FETCH 1 fast").args.items) == 3  # type: ignore[union-attr]
    assert p("a FETCH 1 FULL").args.items[-1] == FetchItem("BODY")  # type: ignore[union-attr]
    cmd = p("a UID FETCH 1:* (UID FLAGS RFC822.SIZE BODYSTRUCTURE RFC822 RFC822.HEADER RFC822.TEXT)")
    assert cmd.uid and cmd.name == "FETCH"
    assert [i.name for i in cmd.args.items] == [  # type: ignore[union-attr]
        "UID", "FLAGS", "RFC822.SIZE", "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
    ]  # fmt: skip
    bad("a FETCH 1 (ALL)")
    bad("a FETCH 1 (FLAGS")
    bad("a FETCH 1 BODY.PEEK")
    bad("a FETCH 1 FROB")


@pytest.mark.parametrize(
    ("text", "section", "partial", "peek", "rendered"),
    [
        ("BODY[]", Section(), None, False, "BODY[]"),
        ("BODY.PEEK[]<0.2048>", Section(), (0, 2048), True, "BODY[]<0>"),
        ("body[header]", Section((), "HEADER"), None, False, "BODY[HEADER]"),
        ("BODY[TEXT]<10.5>", Section((), "TEXT"), (10, 5), False, "BODY[TEXT]<10>"),
        ("BODY[1]", Section((1,)), None, False, "BODY[1]"),
        ("BODY[1.2.MIME]", Section((1, 2), "MIME"), None, False, "BODY[1.2.MIME]"),
        ("BODY[4.2.HEADER]", Section((4, 2), "HEADER"), None, False, "BODY[4.2.HEADER]"),
        ("BODY[3.TEXT]", Section((3,), "TEXT"), None, False, "BODY[3.TEXT]"),
        (
            "BODY.PEEK[HEADER.FIELDS (DATE From x-mss-ins)]",
            Section((), "HEADER.FIELDS", ("DATE", "From", "x-mss-ins")),
            None,
            True,
            "BODY[HEADER.FIELDS (DATE From x-mss-ins)]",
        ),
        (
            'BODY[1.HEADER.FIELDS.NOT ("Subject")]',
            Section((1,), "HEADER.FIELDS.NOT", ("Subject",)),
            None,
            False,
            "BODY[1.HEADER.FIELDS.NOT (Subject)]",
        ),
    ],
)
def test_fetch_sections(
    text: str, section: Section, partial: tuple[int, int] | None, peek: bool, rendered: str
) -> None:
    (item,) = p(f"a FETCH 1 {text}").args.items  # type: ignore[union-attr]
    assert item == FetchItem("BODY", section, partial, peek)
    assert item.response_name() == rendered
    assert item.sets_seen is not peek


@pytest.mark.parametrize(
    "text",
    [
        "BODY[MIME]",
        "BODY[0]",
        "BODY[1.0]",
        "BODY[HEADER.FIELDS]",
        "BODY[HEADER.FIELDS ()]",
        "BODY[TEXT.HEADER]",
        "BODY[]<1>",
        "BODY[]<1.0>",
        "BODY[1.",
        "BODY[HEADER.FIELDS (a:b)]",
    ],
)
def test_invalid_sections(text: str) -> None:
    bad(f"a FETCH 1 {text}")


def test_store_arguments() -> None:
    assert p("a STORE 1:2 +FLAGS (\\Seen \\deleted)").args == Store(
        SequenceSet(((1, 2),)), "+", False, ("\\Seen", "\\Deleted")
    )
    assert p("a UID STORE 5 -FLAGS.SILENT \\Flagged $Important").args == Store(
        SequenceSet(((5, 5),)), "-", True, ("\\Flagged", "$Important")
    )
    assert p("a STORE 1 FLAGS ()").args == Store(SequenceSet(((1, 1),)), "", False, ())
    bad("a STORE 1 +FLAGS (\\Recent)")
    bad("a STORE 1 +FLAGS (\\*)")
    bad("a STORE 1 LABELS (x)")
    bad("a STORE 1 +FLAGS")


def test_copy_move_expunge() -> None:
    assert p("a COPY 1:* Archives").args == CopyMove(SequenceSet(((1, None),)), "Archives")
    cmd = p("a UID MOVE 4,6 Trash")
    assert cmd.uid and cmd.args == CopyMove(SequenceSet(((4, 4), (6, 6))), "Trash")
    assert p("a EXPUNGE").args == Expunge()
    assert p("a UID EXPUNGE 3:5").args == Expunge(SequenceSet(((3, 5),)))
    bad("a UID EXPUNGE")


def test_search_every_key() -> None:
    program = (
        "ALL ANSWERED BCC a BEFORE 1-Feb-1994 BODY b CC c DELETED DRAFT FLAGGED FROM d "
        'HEADER X-MSS-INS "O" KEYWORD $x LARGER 10 NEW NOT SEEN OLD ON "01-Jan-2024" '
        "OR FROM e TO f RECENT SEEN SENTBEFORE 1-Jan-2024 SENTON 1-Jan-2024 SENTSINCE 1-Jan-2024 "
        "SINCE 1-Jan-2024 SMALLER 99 SUBJECT g TEXT h TO i UID 1:* UNANSWERED UNDELETED UNDRAFT "
        "UNFLAGGED UNKEYWORD $y UNSEEN 1,3:4 (SEEN FLAGGED)"
    )
    search = p(f"a SEARCH {program}").args
    assert isinstance(search, Search)
    keys = search.key.args
    assert len(keys) == 37
    assert keys[3] == SearchKey("BEFORE", (date(1994, 2, 1),))
    assert keys[10] == SearchKey("HEADER", ("X-MSS-INS", "O"))
    assert keys[14] == SearchKey("NOT", (SearchKey("SEEN"),))
    assert keys[17] == SearchKey("OR", (SearchKey("FROM", ("e",)), SearchKey("TO", ("f",))))
    assert keys[28] == SearchKey("UID", (SequenceSet(((1, None),)),))
    assert keys[-2] == SearchKey("SEQSET", (SequenceSet(((1, 1), (3, 4))),))
    assert keys[-1] == SearchKey("AND", (SearchKey("SEEN"), SearchKey("FLAGGED")))


def test_search_charset_and_literals() -> None:
    cmd = p(b"a UID SEARCH CHARSET UTF-8 SUBJECT {5}\r\n" + "été".encode())
    assert cmd.uid
    assert cmd.args == Search("UTF-8", SearchKey("SUBJECT", ("été",)))
    err = bad("a SEARCH CHARSET KOI8-R SUBJECT x")
    assert err.response() == "a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset KOI8-R"
    bad("a SEARCH CHARSET US-ASCII SUBJECT {2}\r\n\xc3\xa9".encode("latin-1"))
    assert p("a SEARCH RETURN (MIN COUNT) UNSEEN").args == Search(None, SearchKey("UNSEEN"), ("MIN", "COUNT"))


@pytest.mark.parametrize(
    "text", ["FOO", "BEFORE 1-Foo-2024", "LARGER x", "OR SEEN", "NOT", "(SEEN", "SEEN)", "ALLX"]
)
def test_search_errors(text: str) -> None:
    bad(f"a SEARCH {text}")


def test_nesting_is_bounded() -> None:
    deep = "(" * 200 + "SEEN" + ")" * 200
    assert "nested too deeply" in str(bad(f"a SEARCH {deep}"))
    nots = "NOT " * 200 + "SEEN"
    assert "nested too deeply" in str(bad(f"a SEARCH {nots}"))
    assert "nested too deeply" in str(bad("a SELECT INBOX " + "(" * 50 + ")" * 50))
    assert "too long" in str(bad("a SEARCH " + " ".join(["SEEN"] * 5000)))


def test_enable_and_id() -> None:
    assert p("a ENABLE utf8=accept CONDSTORE").args == Enable(("UTF8=ACCEPT", "CONDSTORE"))
    bad("a ENABLE")
    assert p("a ID NIL").args == Id(None)
    assert p('a ID ("name" "Thunderbird" "version" NIL)').args == Id(
        (("name", "Thunderbird"), ("version", None))
    )
    assert p("a ID ()").args == Id(())
    bad("a ID (name Thunderbird)")


def test_acl_commands() -> None:
    """RFC 4314: GETACL/MYRIGHTS take a mailbox, DELETEACL/LISTRIGHTS an identifier, SETACL rights."""
    from mssante.imap.commands.values import AclArgs

    assert p("a GETACL INBOX").args == AclArgs("INBOX")
    assert p('a MYRIGHTS "Partag&AOk-/x@demo.mssante.fr/INBOX"').args == AclArgs(
        "Partagé/x@demo.mssante.fr/INBOX"
    )
    assert p("a SETACL inbox secretaire.martin@demo.mssante.fr +lrs").args == AclArgs(
        "INBOX", "secretaire.martin@demo.mssante.fr", "+lrs"
    )
    assert p('a DELETEACL Archive "staff:x"').args == AclArgs("Archive", "staff:x")
    assert p("a LISTRIGHTS INBOX someone").args == AclArgs("INBOX", "someone")
    for line in ("a SETACL INBOX someone", "a GETACL", "a DELETEACL INBOX", "a MYRIGHTS INBOX extra"):
        assert bad(line).tag == "a"
