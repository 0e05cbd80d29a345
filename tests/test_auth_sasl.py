"""The SASL mechanisms as sans-I/O state machines: exact client bytes in, events out."""

from __future__ import annotations

import json

import pytest

from mssante.auth.sasl import (
    Accept,
    BearerCredential,
    CertificateCredential,
    Challenge,
    External,
    OAuthBearer,
    PasswordCredential,
    Plain,
    Reject,
    Verify,
    XOAuth2,
)


def test_plain_with_and_without_authzid() -> None:
    event = Plain().receive(b"\0alice\0correct horse")
    assert event == Verify(PasswordCredential("alice", "correct horse", None))
    event = Plain().receive(b"dr.house@demo.mssante.fr\0secretaire\0pw")
    assert isinstance(event, Verify)
    assert event.credential == PasswordCredential("secretaire", "pw", "dr.house@demo.mssante.fr")


def test_plain_without_initial_response_gets_empty_challenge() -> None:
    mech = Plain()
    assert mech.receive(None) == Challenge(b"")
    assert isinstance(mech.receive(b"\0bob\0pw"), Verify)
    assert mech.verdict(True) == Accept()


@pytest.mark.parametrize(
    "message",
    [
        b"alice\0pw",  # one NUL
        b"\0\0alice\0pw",  # three NULs
        b"\0alice\0",  # empty password
        b"\0\0pw",  # empty authcid
        b"\0" + b"a" * 256 + b"\0pw",  # field over 255 octets
        b"\0\xff\xfe\0pw",  # not UTF-8
        b"",
    ],
)
def test_plain_malformed(message: bytes) -> None:
    event = Plain().receive(message)
    assert isinstance(event, Reject) and event.malformed


def test_oauthbearer_parses_rfc7628_example() -> None:
    # RFC 7628 §4.1, with authzid escapes (=2C is a comma).
    message = (
        b"n,a=user@example.com=2Cx,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    event = OAuthBearer().receive(message)
    assert event == Verify(
        BearerCredential("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", "user@example.com,x")
    )


def test_oauthbearer_failure_sends_json_then_fails_after_dummy() -> None:
    mech = OAuthBearer(scope="openid", openid_configuration="https://idp/.well-known/openid-configuration")
    assert isinstance(mech.receive(b"n,,\x01auth=Bearer abc\x01\x01"), Verify)
    challenge = mech.verdict(False)
    assert isinstance(challenge, Challenge)
    assert json.loads(challenge.data)["status"] == "invalid_token"
    assert mech.receive(b"\x01") == Reject("invalid_token")


@pytest.mark.parametrize(
    "message",
    [
        b"\x01",  # only the dummy response
        b"n,,auth=Bearer abc\x01\x01",  # no kvsep after GS2 header
        b"p=tls-unique,,\x01auth=Bearer abc\x01\x01",  # channel binding
        b"n,,\x01auth=Bearer abc\x01",  # single final ^A
        b"n,,\x01auth=Basic abc\x01\x01",
        b"n,,\x01host=x\x01\x01",  # no auth
        b"n,a=bad=escape,\x01auth=Bearer abc\x01\x01",
        b"n,,\x01auth=Bearer abc\x01auth=Bearer def\x01\x01",
    ],
)
def test_oauthbearer_malformed(message: bytes) -> None:
    event = OAuthBearer().receive(message)
    assert isinstance(event, Reject) and event.malformed


def test_xoauth2() -> None:
    mech = XOAuth2()
    event = mech.receive(b"user=810102727017\x01auth=Bearer tok.en-1\x01\x01")
    assert event == Verify(BearerCredential("tok.en-1", "810102727017"))
    challenge = mech.verdict(False)
    assert isinstance(challenge, Challenge) and json.loads(challenge.data)["status"] == "401"
    assert isinstance(mech.receive(b""), Reject)


@pytest.mark.parametrize("message", [b"auth=Bearer x\x01\x01", b"user=a\x01auth=Bearer\x01\x01", b"garbage"])
def test_xoauth2_malformed(message: bytes) -> None:
    event = XOAuth2().receive(message)
    assert isinstance(event, Reject) and event.malformed


def test_external_authzid() -> None:
    assert External().receive(b"") == Verify(CertificateCredential(None))
    assert External().receive(b"app@x.mssante.fr") == Verify(CertificateCredential("app@x.mssante.fr"))
    mech = External()
    assert mech.receive(None) == Challenge(b"")
    assert mech.receive(b"") == Verify(CertificateCredential(None))


def test_messages_after_the_end_are_refused() -> None:
    mech = Plain()
    mech.receive(b"\0a\0b")
    mech.verdict(True)
    event = mech.receive(b"\0a\0b")
    assert isinstance(event, Reject)
    assert repr(PasswordCredential("a", "secret")) == "PasswordCredential(authcid='a', authzid=None)"
