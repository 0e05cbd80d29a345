"""The PROXY protocol parser (HAProxy's proxy-protocol.txt, versions 1 and 2) and the
trusted-balancer check; headers written out from the specification's layout."""

from __future__ import annotations

import random

import pytest

from mssante.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    TrustedBalancers,
    parse,
    parse_v1,
    parse_v2,
)

# The specification's examples (section 2.1).
V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
# Section 2.2: signature, 0x21 (version 2, PROXY), 0x11 (TCP over IPv4), length 12, then
# source 203.0.113.7, destination 10.0.0.1, source port 40000, destination port 587.
V2_TCP4 = V2_SIGNATURE + bytes.fromhex("2111000ccb0071070a0000019c40024b")
# 0x21 0x21 (TCP over IPv6), length 36 + a 7-byte TLV (PP2_TYPE_AUTHORITY "a.fr") to be ignored.
V2_TCP6 = (
    V2_SIGNATURE
    + bytes.fromhex("2121002b")
    + bytes.fromhex("20010db8000000000000000000000007")
    + bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("1f90" "01bb")
    + bytes.fromhex("020004") + b"a.fr"
)  # fmt: skip
# 0x20: version 2, LOCAL (a health check of the balancer itself), no address block.
V2_LOCAL = V2_SIGNATURE + bytes.fromhex("20000000")


def test_v1_examples_of_the_specification() -> None:
    assert parse_v1(V1_TCP4) == ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert parse_v1(V1_TCP6) == ProxyHeader(1, ("2001:db8::1", 56324), ("2001:db8::2", 443))
    assert parse_v1(V1_UNKNOWN) == ProxyHeader(1, None, None)


def test_v2_ipv4_ipv6_and_local() -> None:
    assert parse_v2(V2_TCP4) == ProxyHeader(2, ("203.0.113.7", 40000), ("10.0.0.1", 587))
    assert parse_v2(V2_TCP6) == ProxyHeader(2, ("2001:db8::7", 8080), ("2001:db8::1", 443))
    assert parse_v2(V2_LOCAL) == ProxyHeader(2, None, None)


def test_parse_says_how_much_is_header_and_waits_for_the_rest() -> None:
    after = b"EHLO client\r\n"
    for header in (V1_TCP4, V2_TCP4, V2_TCP6, V2_LOCAL):
        found = parse(header + after)
        assert found is not None and found[1] == len(header)
        for cut in (1, 5, 12, 15, len(header) - 1):
            assert parse(header[:cut]) is None, (header, cut)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # LF alone
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",  # IPv6 in TCP4
        b"PROXY TCP6 192.168.0.1 2001:db8::2 56324 443\r\n",  # IPv4 in TCP6
        b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n",  # leading zeros
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",  # port out of range
        b"PROXY TCP4 192.168.0.1 192.168.0.11 0443 443\r\n",  # leading zero in a port
        b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
        b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY  TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",  # two spaces
        b"PROXY TCP4 " + b"1" * 100 + b"\r\n",  # longer than 107 bytes
    ],
)
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        found = parse(line)
        assert found is not None  # an incomplete header is not an answer either


@pytest.mark.parametrize(
    "header",
    [
        V2_SIGNATURE + bytes.fromhex("1111000c") + bytes(12),  # version 1 in the v2 format
        V2_SIGNATURE + bytes.fromhex("2211000c") + bytes(12),  # command 2
        V2_SIGNATURE + bytes.fromhex("21110008") + bytes(8),  # IPv4 block too short
        V2_SIGNATURE + bytes.fromhex("21310000"),  # AF_UNIX: no client address to use
        V2_SIGNATURE + bytes.fromhex("2112000c") + bytes(12),  # UDP
        V2_SIGNATURE + bytes.fromhex("2111ffff"),  # 65535 bytes announced
    ],
)
def test_v2_malformed_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(header)


def test_what_is_not_a_header_is_refused_at_once() -> None:
    for data in (b"EHLO x\r\n", b"a001 LOGIN", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00"):
        with pytest.raises(ProxyHeaderError):
            parse(data)


def test_seeded_mutations_never_crash_the_parser() -> None:
    rng = random.Random(17)
    seeds = [V1_TCP4, V1_TCP6, V2_TCP4, V2_TCP6, V2_LOCAL]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[position] = rng.randrange(256)
            elif action == 1:
                del data[position]
            else:
                data.insert(position, rng.randrange(256))
        try:
            found = parse(bytes(data))
        except ProxyHeaderError:
            continue
        if found is not None:
            header, length = found
            assert 0 < length <= len(data)
            assert header.source is None or 0 <= header.source[1] <= 65535


def test_trusted_balancers_are_addresses_or_networks() -> None:
    trusted = TrustedBalancers(["127.0.0.2", "10.1.0.0/16", "2001:db8::/32"])
    assert "127.0.0.2" in trusted and "10.1.200.3" in trusted and "2001:db8::5" in trusted
    assert "::ffff:127.0.0.2" in trusted  # an IPv4 client on a dual-stack socket
    assert "127.0.0.1" not in trusted and "10.2.0.1" not in trusted and "garbage" not in trusted


def test_proxy_protocol_needs_trusted_balancers() -> None:
    from pydantic import ValidationError

    from mssante.config import IMAPSection

    assert IMAPSection(proxy_protocol=True, proxy_trusted=["10.0.0.0/24"]).proxy_trusted == ["10.0.0.0/24"]
    with pytest.raises(ValidationError, match="proxy_trusted"):
        IMAPSection(proxy_protocol=True)
    with pytest.raises(ValidationError):
        IMAPSection(proxy_trusted=["not an address"])
