"""Hostile IMAP clients against a real ``mssante serve --demo`` (issue 13): the LIST bomb,
literals and slow drips before login, connection caps, wildcard folder names, and a seeded
grammar fuzzer. Every attack must fail with a clear protocol answer while other clients are
still served at once.

The server is this module's own, with short deadlines so that the slow attacks end in
seconds; the limits themselves are the production code paths, only their values differ.
"""

from __future__ import annotations

import random
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssante.listening import ConnectionCaps
from tests.demo_server import DemoServer, start_demo

USER = "paul.durand@demo.mssante.fr"
PER_IP = 45
LOGIN_TIMEOUT = 6.0
COMMAND_TIMEOUT = 3.0
PREAUTH_LITERAL = 16 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    env = {
        "MSSANTE_IMAP__MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "MSSANTE_IMAP__LOGIN_TIMEOUT_SECONDS": str(LOGIN_TIMEOUT),
        "MSSANTE_IMAP__PREAUTH_COMMAND_TIMEOUT_SECONDS": str(COMMAND_TIMEOUT),
        "MSSANTE_AUTH__BRUTEFORCE__BASE_DELAY_SECONDS": "0.01",
        "MSSANTE_AUTH__BRUTEFORCE__MAX_DELAY_SECONDS": "0.05",
        "MSSANTE_AUTH__BRUTEFORCE__IP_LOCKOUT_FAILURES": "100000",
    }
    demo = start_demo(tmp_path_factory.mktemp("imap-hostile") / "data", env)
    try:
        yield demo
    finally:
        code = demo.stop()
        assert code == 0, f"demo server exited with {code}:\n{demo.log()}"
    log = demo.log()
    assert "Traceback" not in log and "SERVERBUG" not in log, log[-5000:]


class Wire:
    """A bare IMAP connection: bytes out, lines in, nothing interpreted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def plain(cls, demo: DemoServer) -> Wire:
        return cls(socket.create_connection(("127.0.0.1", demo.port("imap")), timeout=5))

    @classmethod
    def tls(cls, demo: DemoServer) -> Wire:
        context = ssl.create_default_context(cafile=demo.ca_cert)
        raw = socket.create_connection(("127.0.0.1", demo.port("imaps")), timeout=5)
        return cls(context.wrap_socket(raw, server_hostname="localhost"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readable(self, wait: float = 0.0) -> bool:
        """Whether the server has said something (read before writing to a closed socket)."""
        return bool(self.buf) or bool(select.select([self.sock], [], [], wait)[0])

    def line(self, timeout: float = 5.0) -> bytes | None:
        """The next line without CRLF; None at end of stream, TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def until(self, tag: bytes, timeout: float = 5.0) -> list[bytes]:
        """Lines up to the tagged response of ``tag`` (included); stops early at end of stream."""
        lines: list[bytes] = []
        while (line := self.line(timeout)) is not None:
            lines.append(line)
            if line.startswith(tag + b" "):
                break
        return lines

    def login(self, demo: DemoServer) -> None:
        assert (self.line() or b"").startswith(b"* OK")
        password = demo.account(USER)["password"]
        self.send(f'l LOGIN "{USER}" "{password}"\r\n'.encode())
        assert self.until(b"l")[-1].startswith(b"l OK"), "login failed"

    def close(self) -> None:
        self.sock.close()


def test_starttls_followed_by_plaintext_ends_the_connection_quietly(server: DemoServer) -> None:
    """After ``OK Begin TLS negotiation now``, bytes that are no TLS handshake end the
    connection (no traceback: the module's teardown reads the log) and others are served."""
    wire = Wire.plain(server)
    assert (wire.line() or b"").startswith(b"* OK")
    wire.send(b"s STARTTLS\r\n")
    assert (wire.line() or b"").startswith(b"s OK")
    wire.send(b"a LOGIN nobody secret\r\n" * 4)  # plaintext where the ClientHello belongs
    assert wire.line() is None  # closed, nothing said in plaintext
    wire.close()
    assert answers_quickly(server) < 5


def answers_quickly(demo: DemoServer) -> float:
    """Seconds a fresh client waits for the greeting and a NOOP answer."""
    started = time.monotonic()
    wire = Wire.plain(demo)
    try:
        assert (wire.line(2) or b"").startswith(b"* OK")
        wire.send(b"p NOOP\r\n")
        assert wire.until(b"p", 2)[-1] == b"p OK NOOP completed"
    finally:
        wire.close()
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --- the connection caps first, on a server no other test has touched ----------------------


def test_connection_caps_per_address(server: DemoServer) -> None:
    held: list[Wire] = []
    try:
        for _ in range(PER_IP):
            wire = Wire.plain(server)
            held.append(wire)
            assert (wire.line() or b"").startswith(b"* OK")
        extra = Wire.plain(server)
        assert extra.line() == b"* BYE [UNAVAILABLE] Too many connections from your address, try again later"
        assert extra.line() is None
        extra.close()
        held.pop().close()
        for _ in range(50):  # the slot is freed once the server has seen the close
            time.sleep(0.05)
            again = Wire.plain(server)
            first = again.line() or b""
            if first.startswith(b"* OK"):
                held.append(again)
                break
            again.close()
        else:
            raise AssertionError("the freed slot was not given back")
    finally:
        for wire in held:
            wire.close()
        time.sleep(0.5)  # the server sees the closes and frees the slots


def test_caps_count_in_total_and_per_address() -> None:
    caps = ConnectionCaps(total=3, per_ip=2)
    assert caps.admit("192.0.2.1") is None
    assert caps.admit("192.0.2.1") is None
    assert caps.admit("192.0.2.1") == "Too many connections from your address, try again later"
    assert caps.admit("192.0.2.2") is None
    assert caps.admit("192.0.2.3") == "Too many connections, try again later"
    caps.release("192.0.2.1")
    assert caps.admit("192.0.2.3") is None


# --- item 1: the LIST bomb ------------------------------------------------------------------


def test_list_bomb_answers_at_once_while_others_are_served(server: DemoServer) -> None:
    attacker = Wire.tls(server)
    attacker.login(server)
    try:
        started = time.monotonic()
        attacker.send(b'b1 LIST "" "' + b"*" * 200 + b'!"\r\n')
        bystander = answers_quickly(server)
        lines = attacker.until(b"b1", 2)
        assert lines == [b"b1 OK LIST completed"]
        assert time.monotonic() - started < 1.0
        assert bystander < 1.0
        # Long alternations of wildcards and letters cost no more.
        attacker.send(b'b2 LIST "" "' + b"*a%" * 300 + b'!"\r\n')
        assert attacker.until(b"b2", 2) == [b"b2 OK LIST completed"]
        # Beyond the bound: a clear refusal, not work.
        attacker.send(b'b3 LIST "" "' + b"*" * 60000 + b'"\r\n')
        assert attacker.until(b"b3", 2) == [
            b"b3 NO [LIMIT] Mailbox pattern too long (at most 1024 characters)"
        ]
        attacker.send(b'b4 LIST (SUBSCRIBED) "" (' + b" ".join([b"%"] * 17) + b")\r\n")
        assert attacker.until(b"b4", 2) == [b"b4 NO [LIMIT] Too many mailbox patterns (at most 16)"]
        attacker.send(b'b5 LIST "" "*"\r\n')
        assert any(b'"INBOX"' in line or line.endswith(b" INBOX") for line in attacker.until(b"b5", 2))
    finally:
        attacker.close()


# --- item 10: wildcards in folder names -----------------------------------------------------


def test_create_and_rename_refuse_list_wildcards(server: DemoServer) -> None:
    wire = Wire.tls(server)
    wire.login(server)
    try:
        reason = b'NO [CANNOT] Mailbox names may not contain the LIST wildcards "*" or "%"'
        for tag, name in ((b"c1", b'"a*b"'), (b"c2", b'"Patients/%"'), (b"c3", b"{2+}\r\n*%")):
            wire.send(tag + b" CREATE " + name + b"\r\n")
            assert wire.until(tag) == [tag + b" " + reason]
        wire.send(b"c4 CREATE Hostile\r\n")
        assert wire.until(b"c4") == [b"c4 OK CREATE completed"]
        wire.send(b'c5 RENAME Hostile "Host*ile"\r\n')
        assert wire.until(b"c5") == [b"c5 " + reason]
        # Control characters: refused by the mUTF-7 grammar already (by the session under UTF8=ACCEPT).
        wire.send(b"c6 CREATE {3+}\r\na\tb\r\n")
        assert wire.until(b"c6")[0].startswith((b"c6 BAD ", b"c6 NO "))
        wire.send(b'c7 LIST "" "*"\r\n')
        names = [line.rpartition(b'"/" ')[2] for line in wire.until(b"c7")[:-1]]
        assert b"Hostile" in names
        assert not [name for name in names if b"*" in name or b"%" in name]
        wire.send(b"c8 DELETE Hostile\r\n")
        assert wire.until(b"c8") == [b"c8 OK DELETE completed"]
    finally:
        wire.close()


# --- item 5: literals, deadlines and memory before login ------------------------------------


def test_big_literal_before_login_is_refused_without_reading_it(server: DemoServer) -> None:
    wire = Wire.plain(server)
    try:
        assert (wire.line() or b"").startswith(b"* OK")
        wire.send(b"a1 APPEND INBOX {26214400}\r\n")
        assert wire.line() == b"a1 BAD No literal is accepted for this command before login"
        wire.send(b"a2 LOGIN {26214400}\r\n")
        assert wire.line() == b"a2 BAD Literal too large before login (at most 16384 bytes)"
        wire.send(b"a3 NOOP\r\n")
        assert wire.line() == b"a3 OK NOOP completed"
        # A client sending a large literal anyway (LITERAL+) is disconnected at once.
        wire.send(b"a4 APPEND INBOX {26214400+}\r\n" + b"x" * 65536)
        assert wire.line() == b"a4 BAD No literal is accepted for this command before login"
        assert wire.line() == b"* BYE Literal too large before login"
        assert wire.line() is None
    finally:
        wire.close()
    # A client sending the message anyway after a refusal is cut after a few invalid lines
    # (the refusal counts as the first of the 10 allowed).
    wire = Wire.plain(server)
    try:
        assert (wire.line() or b"").startswith(b"* OK")
        wire.send(b"a1 APPEND INBOX {26214400}\r\n")
        assert wire.line() == b"a1 BAD No literal is accepted for this command before login"
        wire.send(b"Subject: hello\r\n" * 9)
        lines = []
        while (line := wire.line()) is not None:
            lines.append(line)
        assert len(lines) == 10 and all(b" BAD " in line for line in lines[:9]), lines
        assert lines[-1] == b"* BYE Too many invalid commands"
    finally:
        wire.close()
    assert answers_quickly(server) < 1.0


def test_slow_drip_before_login_is_cut_by_the_deadlines(server: DemoServer) -> None:
    # One byte at a time: the command deadline is not pushed back by each byte.
    drip = Wire.plain(server)
    started = time.monotonic()
    try:
        assert (drip.line() or b"").startswith(b"* OK")
        for byte in b"a1 NOOP and so on, slowly":
            if drip.readable(0.25):
                break
            drip.send(bytes([byte]))
        assert drip.line() == b"* BYE Command not completed in time"
        assert drip.line() is None
        assert COMMAND_TIMEOUT - 0.5 < time.monotonic() - started < COMMAND_TIMEOUT + 2
    finally:
        drip.close()
    # Whole commands, but never a login: the session deadline ends it.
    idler = Wire.plain(server)
    started = time.monotonic()
    try:
        assert (idler.line() or b"").startswith(b"* OK")
        for n in range(40):
            if idler.readable(0.5):
                break
            idler.send(b"n%d NOOP\r\n" % n)
            assert idler.line() == b"n%d OK NOOP completed" % n
        assert idler.line() == b"* BYE Login timeout: not logged in within 6 s"
        assert idler.line() is None
        assert LOGIN_TIMEOUT - 0.5 < time.monotonic() - started < LOGIN_TIMEOUT + 2
    finally:
        idler.close()


def test_connections_that_never_log_in_do_not_grow_memory(server: DemoServer) -> None:
    pid = server.process.pid
    before = rss_kib(pid)
    held: list[Wire] = []
    try:
        for _ in range(40):
            wire = Wire.plain(server)
            held.append(wire)
            assert (wire.line() or b"").startswith(b"* OK")
            # The largest the server lets it send: a pre-login literal, nearly complete.
            wire.send(b"a APPEND INBOX {26214400}\r\nb LOGIN {%d}\r\n" % PREAUTH_LITERAL)
            assert wire.line() == b"a BAD No literal is accepted for this command before login"
            assert wire.line() == b"+ Ready for literal data"
            wire.send(b"x" * (PREAUTH_LITERAL - 10))
        assert answers_quickly(server) < 1.0
        time.sleep(0.3)
        grown = rss_kib(pid) - before
    finally:
        for wire in held:
            wire.close()
    assert grown < 24 * 1024, f"RSS grew by {grown} KiB"  # was 1 GiB before issue 13


# --- the grammar fuzzer ---------------------------------------------------------------------

COMMANDS = [
    "CAPABILITY", "NOOP", "ID", "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME",
    "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "CHECK",
    "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID", "GETACL", "SETACL",
    "DELETEACL", "LISTRIGHTS", "MYRIGHTS", "UNSELECT", "AUTHENTICATE", "LOGIN", "STARTTLS",
    "XYZZY", "",
]  # fmt: skip
ATOMS = [
    "INBOX", "Sent", "FLAGS", "UID", "BODY[]", "BODY.PEEK[HEADER.FIELDS (Subject From)]",
    "BODY[1.2.MIME]<0.10>", "BODY[TEXT]<4294967296.1>", "ENVELOPE", "BODYSTRUCTURE", "RFC822",
    "ALL", "FAST", "FULL", "\\Seen", "\\Deleted", "+FLAGS", "-FLAGS.SILENT", "$Label", "NIL",
    "SINCE", "1-Feb-1994", "32-Foo-99999", "OR", "NOT", "HEADER", "LARGER", "CHARSET", "UTF-8",
    "MESSAGES", "UIDNEXT", "UNSEEN", "RETURN", "CHANGEDSINCE", "&AOk-", "&-", "&Jjo!", "*", "%",
]  # fmt: skip


def _sequence(rnd: random.Random) -> str:
    def number() -> str:
        return rnd.choice(["*", "0", "1", "2", str(rnd.randint(1, 10**6)), "4294967295", "4294967296"])

    parts = [number() if rnd.random() < 0.5 else f"{number()}:{number()}" for _ in range(rnd.randint(1, 4))]
    return ",".join(parts)


def _item(rnd: random.Random, depth: int = 0) -> list[bytes]:
    """One argument, as chunks: a chunk ending in a synchronising literal waits for '+'."""
    kind = rnd.random()
    if kind < 0.3:
        return [rnd.choice(ATOMS).encode()]
    if kind < 0.45:
        return [_sequence(rnd).encode()]
    if kind < 0.6:
        text = rnd.choice(ATOMS) + rnd.choice(["", "\\", '\\"', "\x01", "é", " x"])
        return [b'"' + text.encode() + rnd.choice([b'"', b""])]
    if kind < 0.72:
        size = rnd.choice([0, 1, 5, 100, 5000])
        body = bytes(rnd.randrange(256) for _ in range(size))
        if rnd.random() < 0.5:
            return [b"{%d+}\r\n" % size + body]
        return [b"{%d}\r\n" % size, body]
    if kind < 0.85 and depth < 6:
        inner: list[bytes] = [b"("]
        for _ in range(rnd.randint(0, 4)):
            inner = _join(inner, _item(rnd, depth + 1))
        return _join(inner, [b")" if rnd.random() < 0.9 else b""])
    if kind < 0.9:
        return [bytes(rnd.choice([0, 1, 8, 13, 27, 127, 255]) for _ in range(rnd.randint(1, 5)))]
    if kind < 0.93:
        return [b"x" * rnd.choice([1000, 70000])]
    return [rnd.choice([b"((((((((((((((((((((((", b")))", b"[", b"<1.2>", b"{", b"{99999999999}"])]


def _join(left: list[bytes], right: list[bytes]) -> list[bytes]:
    """Arguments separated by a space, the last chunk of ``left`` continued by ``right``."""
    return [*left[:-1], left[-1] + b" " + right[0], *right[1:]]


def _case(rnd: random.Random, n: int) -> list[bytes]:
    name = rnd.choice(COMMANDS)
    chunks = [b"f%d %s" % (n, name.encode()) if rnd.random() < 0.95 else b"*"]
    for _ in range(rnd.randint(0, 5)):
        chunks = _join(chunks, _item(rnd))
    chunks[-1] += rnd.choice([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r\r\n"])
    return chunks


class Fuzzed:
    """A connection in one state, reopened whenever the server ends it."""

    def __init__(self, demo: DemoServer, selected: bool) -> None:
        self.demo, self.selected = demo, selected
        self.wire: Wire | None = None
        self.reopened = 0

    def open(self) -> Wire:
        if self.wire is None:
            self.reopened += 1
            if self.selected:
                self.wire = Wire.tls(self.demo)
                self.wire.login(self.demo)
                self.wire.send(b"s SELECT INBOX\r\n")
                assert self.wire.until(b"s")[-1].startswith(b"s OK")
            else:
                self.wire = Wire.plain(self.demo)
                assert (self.wire.line() or b"").startswith(b"* OK")
        return self.wire

    def drop(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None

    def run(self, chunks: list[bytes], n: int) -> list[bytes]:
        wire = self.open()
        lines: list[bytes] = []
        try:
            for chunk in chunks:
                wire.send(chunk)
                if re.search(rb"\{[0-9]+\}\r\n\Z", chunk):
                    line = wire.line(2)  # "+" or the refusal; sent on regardless
                    if line is None:
                        break
                    lines.append(line)
            wire.send(b"z%d NOOP\r\n" % n)
            lines += wire.until(b"z%d" % n, 2)
        except OSError:
            pass
        last = lines[-1] if lines else b""
        if not last.startswith(b"z%d " % n) or self.wire is None:
            self.drop()  # ended by the server, or still waiting for bytes we never send
        return lines


def test_grammar_fuzzer_leaves_the_server_serving(server: DemoServer) -> None:
    rnd = random.Random(20261205)
    states = [Fuzzed(server, selected=False), Fuzzed(server, selected=True)]
    started = time.monotonic()
    answered = 0
    for n in range(300):
        fuzzed = states[n % 2]
        lines = fuzzed.run(_case(rnd, n), n)
        assert not any(b"SERVERBUG" in line for line in lines), lines
        answered += any(line.startswith(b"z%d OK" % n) for line in lines)
        if time.monotonic() - started > 40:
            break
    for fuzzed in states:
        fuzzed.drop()
    assert answered > 100  # most cases end with the server in sync, ready for the next
    assert answers_quickly(server) < 1.0
    assert server.process.poll() is None


def test_other_clients_are_served_during_the_attacks(server: DemoServer) -> None:
    """The slow attacks above hold connections; a logged-in client meanwhile works normally."""
    stop = threading.Event()

    def drip() -> None:
        wire = Wire.plain(server)
        try:
            while not stop.is_set():
                wire.send(b"x")
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            wire.close()

    thread = threading.Thread(target=drip)
    thread.start()
    try:
        wire = Wire.tls(server)
        wire.login(server)
        wire.send(b"s SELECT INBOX\r\n")
        assert wire.until(b"s", 1)[-1].startswith(b"s OK")
        wire.close()
    finally:
        stop.set()
        thread.join()
