"""The trust-space policy rule by rule, as tables: each row an identity, an envelope or header
fact, and the exact verdict (SMTP code, RFC 3463 status, reason). The policy is pure; the
annuaire is a fake that satisfies the ``Directory`` protocol, rights come from ``delegation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from delegation.rights import Right, effective_rights
from mssante.auth.identity import Identity
from mssante.policy import (
    Directory,
    DirectoryBal,
    MessageFacts,
    Policy,
    Recipient,
    Verdict,
)

LOCAL = "demo.mssante.fr"
PATIENT_DOMAIN = "patient.mssante.fr"
REMOTE = "autre-operateur.mssante.fr"  # whitelisted operator
UNLISTED = "inconnu.mssante.fr"  # in the MSSanté namespace, not on the liste blanche
THIRD = "tiers-operateur.mssante.fr"  # another whitelisted operator

MARTIN_ID = "810100000011"
DURAND_ID = "810100000029"
INS = "280017512345610"
OTHER_INS = "175056912378904"
FINGERPRINT = "ab" * 32


@dataclass(frozen=True)
class FakeBal:
    address: str
    type: str
    active: bool = True
    professional_idnat: str | None = None
    responsible_idnat: str | None = None
    ins: str | None = None
    is_pharmacy_org: bool = False

    @property
    def key(self) -> str:
        return self.address.lower()

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


class FakeDirectory:
    """The annuaire as the policy sees it: BALs by address (any case) and the liste blanche."""

    def __init__(self, bals: list[FakeBal], whitelist: set[str]) -> None:
        self.bals = {b.key: b for b in bals}
        self.whitelist = whitelist

    def bal(self, address: str) -> DirectoryBal | None:
        return self.bals.get(address.strip().lower())

    def is_domain_whitelisted(self, domain: str) -> bool:
        return domain.strip().rstrip(".").lower() in self.whitelist


MARTIN = FakeBal(f"claire.martin@{LOCAL}", "PER", professional_idnat=MARTIN_ID)
DURAND = FakeBal(f"paul.durand@{LOCAL}", "PER", professional_idnat=DURAND_ID)
RETIRED = FakeBal(f"ancien@{LOCAL}", "PER", active=False, professional_idnat=MARTIN_ID)
CARDIO = FakeBal(f"cardiologie@{LOCAL}", "ORG", responsible_idnat=DURAND_ID)
DPI = FakeBal(f"dpi@{LOCAL}", "APP", responsible_idnat=DURAND_ID)
PATIENT = FakeBal(f"{INS}@{PATIENT_DOMAIN}", "PAT", ins=INS)
# Published in the annuaire (national directory) but hosted by another operator.
ELSEWHERE = FakeBal(f"dr.x@{REMOTE}", "PER", professional_idnat=MARTIN_ID)

DIRECTORY = FakeDirectory(
    [MARTIN, DURAND, RETIRED, CARDIO, DPI, PATIENT, ELSEWHERE], {LOCAL, PATIENT_DOMAIN, REMOTE, THIRD}
)
POLICY = Policy(DIRECTORY, [LOCAL, PATIENT_DOMAIN])

PRO_MARTIN = Identity.professional(MARTIN_ID, login=MARTIN.address)
PRO_DURAND = Identity.professional(DURAND_ID, login=DURAND.address)
APP_DPI = Identity.application("CN=dpi@demo.mssante.fr", FINGERPRINT, login=DPI.address)
APP_OTHER = Identity.application("CN=autre-logiciel", "cd" * 32, login=f"autre-logiciel@{LOCAL}")
PATIENT_ID = Identity.patient(INS, login=PATIENT.address)
OTHER_PATIENT = Identity.patient(OTHER_INS)
SECRETARY = Identity.staff("secretariat.cardio", login=f"secretariat.cardio@{LOCAL}")

IDENTITIES = {
    "martin": PRO_MARTIN,
    "durand": PRO_DURAND,
    "dpi": APP_DPI,
    "other-app": APP_OTHER,
    "patient": PATIENT_ID,
    "other-patient": OTHER_PATIENT,
    "secretary": SECRETARY,
    "nobody": None,
}


def check(verdict: Verdict, ok: bool, code: int, status: str, reason: str) -> None:
    assert (verdict.ok, verdict.code, verdict.status, verdict.reason) == (ok, code, status, reason)
    assert verdict.smtp == f"{code} {status} {reason}"


def test_fake_directory_satisfies_the_protocol() -> None:
    directory: Directory = DIRECTORY  # checked by mypy when the tests are type-checked
    assert directory.bal("CLAIRE.MARTIN@demo.mssante.fr") is MARTIN


# -- MAIL FROM on submission ---------------------------------------------------------------------

SENDER_TABLE = [
    # who, MAIL FROM, ok, code, status, reason
    ("nobody", MARTIN.address, False, 530, "5.7.0", "Authentication required"),
    ("martin", "", False, 553, "5.1.7", "The null sender <> cannot be used for submission"),
    ("martin", "<>", False, 553, "5.1.7", "The null sender <> cannot be used for submission"),
    (
        "martin",
        f"inconnu@{LOCAL}",
        False,
        550,
        "5.7.1",
        f"<inconnu@{LOCAL}> is not a published, active mailbox (BAL) of the annuaire",
    ),
    (
        "martin",
        RETIRED.address,
        False,
        550,
        "5.7.1",
        f"<{RETIRED.address}> is not a published, active mailbox (BAL) of the annuaire",
    ),
    (
        "martin",
        ELSEWHERE.address,
        False,
        550,
        "5.7.1",
        f"<{ELSEWHERE.address}> is not hosted by this operator",
    ),
    (
        "martin",
        DURAND.address,
        False,
        550,
        "5.7.1",
        f"professional:{MARTIN_ID} may not send as <{DURAND.address}>",
    ),
    (
        "martin",
        CARDIO.address,
        False,
        550,
        "5.7.1",
        f"professional:{MARTIN_ID} may not send as <{CARDIO.address}>",
    ),
    (
        "other-app",
        DPI.address,
        False,
        550,
        "5.7.1",
        f"application:{'cd' * 32} may not send as <{DPI.address}>",
    ),
    (
        "dpi",
        MARTIN.address,
        False,
        550,
        "5.7.1",
        f"application:{FINGERPRINT} may not send as <{MARTIN.address}>",
    ),
    (
        "other-patient",
        PATIENT.address,
        False,
        550,
        "5.7.1",
        f"patient:{OTHER_INS} may not send as <{PATIENT.address}>",
    ),
    # No grants exist yet: a secretary's own identity carries no right on any BAL.
    (
        "secretary",
        CARDIO.address,
        False,
        550,
        "5.7.1",
        f"staff:secretariat.cardio may not send as <{CARDIO.address}>",
    ),
    ("martin", MARTIN.address, True, 250, "2.1.0", f"Sender <{MARTIN.address}> OK"),
    ("martin", "<Claire.Martin@DEMO.mssante.fr>", True, 250, "2.1.0", f"Sender <{MARTIN.address}> OK"),
    ("durand", CARDIO.address, True, 250, "2.1.0", f"Sender <{CARDIO.address}> OK"),  # responsible of the ORG
    ("durand", DPI.address, True, 250, "2.1.0", f"Sender <{DPI.address}> OK"),  # responsible of the APP
    ("dpi", DPI.address, True, 250, "2.1.0", f"Sender <{DPI.address}> OK"),  # the application itself
    ("patient", PATIENT.address, True, 250, "2.1.0", f"Sender <{PATIENT.address}> OK"),
]


@pytest.mark.parametrize(("who", "mail_from", "ok", "code", "status", "reason"), SENDER_TABLE)
def test_sender(who: str, mail_from: str, ok: bool, code: int, status: str, reason: str) -> None:
    identity = IDENTITIES[who]
    verdict, bal = POLICY.sender(identity, mail_from)
    check(verdict, ok, code, status, reason)
    if ok:
        assert bal is not None and bal.key == mail_from.strip("<>").lower()
        # The policy's yes is exactly "the identity has SEND_ON_BEHALF on that BAL".
        assert identity is not None and Right.SEND_ON_BEHALF in effective_rights(identity, bal)
    else:
        assert bal is None


# -- RCPT TO on submission -----------------------------------------------------------------------

RECIPIENT_TABLE = [
    # RCPT TO, ok, code, status, reason, accepted recipient
    (
        DURAND.address,
        True,
        250,
        "2.1.5",
        f"Recipient <{DURAND.address}> OK",
        Recipient(DURAND.key, "local", LOCAL),
    ),
    (
        "<Paul.Durand@Demo.MSSante.fr>",
        True,
        250,
        "2.1.5",
        f"Recipient <{DURAND.address}> OK",
        Recipient(DURAND.key, "local", LOCAL),
    ),
    (
        PATIENT.address,
        True,
        250,
        "2.1.5",
        f"Recipient <{PATIENT.address}> OK",
        Recipient(PATIENT.key, "local", PATIENT_DOMAIN),
    ),
    (
        f"personne@{LOCAL}",
        False,
        550,
        "5.1.1",
        f"<personne@{LOCAL}>: no such mailbox (BAL) in the annuaire",
        None,
    ),
    (
        RETIRED.address,
        False,
        550,
        "5.1.1",
        f"<{RETIRED.address}>: no such mailbox (BAL) in the annuaire",
        None,
    ),
    (
        f"Dr.Y@{REMOTE.upper()}",
        True,
        250,
        "2.1.5",
        f"Recipient <Dr.Y@{REMOTE.upper()}> OK (relayed to its operator)",
        Recipient(f"dr.y@{REMOTE}", "remote", REMOTE),
    ),
    (
        f"dr.z@{UNLISTED}",
        False,
        550,
        "5.7.1",
        f"<dr.z@{UNLISTED}>: domain {UNLISTED} is not a whitelisted operator domain of the MSSanté space;"
        " relaying refused",
        None,
    ),
    (
        "someone@gmail.com",
        False,
        550,
        "5.7.1",
        "<someone@gmail.com>: domain gmail.com is outside the MSSanté trust space; relaying refused",
        None,
    ),
    # A look-alike of the trust space is outside it.
    (
        "x@mssante.fr.evil.example",
        False,
        550,
        "5.7.1",
        "<x@mssante.fr.evil.example>: domain mssante.fr.evil.example is outside the MSSanté trust space;"
        " relaying refused",
        None,
    ),
    ("pas-une-adresse", False, 501, "5.1.3", "<pas-une-adresse> is not a valid address", None),
    ("personne@", False, 501, "5.1.3", "<personne@> is not a valid address", None),
    ("<>", False, 501, "5.1.3", "<> is not a valid address", None),
]


@pytest.mark.parametrize("who", ["martin", "dpi", "patient"])
@pytest.mark.parametrize(("rcpt_to", "ok", "code", "status", "reason", "recipient"), RECIPIENT_TABLE)
def test_recipient(
    who: str, rcpt_to: str, ok: bool, code: int, status: str, reason: str, recipient: Recipient | None
) -> None:
    identity = IDENTITIES[who]
    assert identity is not None
    sender = {"martin": MARTIN, "dpi": DPI, "patient": PATIENT}[who]
    result = POLICY.recipient(identity, sender, rcpt_to)
    check(result.verdict, ok, code, status, reason)
    assert result.recipient == recipient


class RefusingPatientRules:
    """Patient rules that refuse everything, to see the policy consult them for patients only."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def recipient(self, patient: Identity, sender: DirectoryBal, rcpt: DirectoryBal) -> Verdict | None:
        self.asked.append(rcpt.key)
        return Verdict(False, 550, "5.7.1", f"a patient may not write first to <{rcpt.address}>")

    def message(
        self, patient: Identity, sender: DirectoryBal, recipients: tuple[Recipient, ...], facts: MessageFacts
    ) -> Verdict | None:
        return Verdict(False, 550, "5.7.1", "too many attachments")

    def outside(self, patient: Identity, address: str) -> Verdict:
        return Verdict(False, 550, "5.7.1", f"<{address}>: a patient writes only within the MSSanté space")


def test_patient_rules_are_asked_for_patients_only() -> None:
    rules = RefusingPatientRules()
    policy = Policy(DIRECTORY, [LOCAL, PATIENT_DOMAIN], patient_rules=rules)
    refused = policy.recipient(PATIENT_ID, PATIENT, DURAND.address)
    check(refused.verdict, False, 550, "5.7.1", f"a patient may not write first to <{DURAND.address}>")
    assert refused.recipient is None
    # A remote BAL known to the annuaire goes through the same rules.
    refused = policy.recipient(PATIENT_ID, PATIENT, ELSEWHERE.address)
    assert not refused.verdict.ok and refused.recipient is None
    assert rules.asked == [DURAND.key, ELSEWHERE.key]
    facts = MessageFacts(from_addresses=(PATIENT.address,))
    routes = (Recipient(DURAND.key, "local", LOCAL),)
    check(
        policy.message(PATIENT_ID, PATIENT, routes, facts).verdict,
        False,
        550,
        "5.7.1",
        "too many attachments",
    )
    # Outside the trust space, a patient is answered in the patient rules' words.
    for outside in ("someone@gmail.com", f"dr.z@{UNLISTED}"):
        refused = policy.recipient(PATIENT_ID, PATIENT, outside)
        check(
            refused.verdict,
            False,
            550,
            "5.7.1",
            f"<{outside}>: a patient writes only within the MSSanté space",
        )
    # Professionals never meet the patient rules.
    assert policy.recipient(PRO_MARTIN, MARTIN, DURAND.address).verdict.ok
    check(
        policy.recipient(PRO_MARTIN, MARTIN, "someone@gmail.com").verdict,
        False,
        550,
        "5.7.1",
        "<someone@gmail.com>: domain gmail.com is outside the MSSanté trust space; relaying refused",
    )
    assert policy.message(PRO_MARTIN, MARTIN, routes, MessageFacts((MARTIN.address,))).verdict.ok
    assert rules.asked == [DURAND.key, ELSEWHERE.key]


# -- headers after DATA --------------------------------------------------------------------------

ROUTES = (Recipient(DURAND.key, "local", LOCAL),)

MESSAGE_TABLE = [
    # who, sending BAL, From: addresses, ok, code, status, reason, on_behalf_of
    ("martin", MARTIN, (MARTIN.address,), True, 250, "2.6.0", "Message accepted", None),
    ("martin", MARTIN, ("Claire.Martin@Demo.MSSante.fr",), True, 250, "2.6.0", "Message accepted", None),
    ("martin", MARTIN, (f"<{MARTIN.address}>",), True, 250, "2.6.0", "Message accepted", None),
    ("durand", CARDIO, (CARDIO.address,), True, 250, "2.6.0", "Message accepted", None),
    ("dpi", DPI, (DPI.address,), True, 250, "2.6.0", "Message accepted", None),
    ("patient", PATIENT, (PATIENT.address,), True, 250, "2.6.0", "Message accepted", None),
    (
        "martin",
        MARTIN,
        (DURAND.address,),
        False,
        550,
        "5.7.1",
        f"From: <{DURAND.address}> must be the sending mailbox <{MARTIN.address}>",
        None,
    ),
    (
        "durand",
        CARDIO,
        (DURAND.address,),
        False,
        550,
        "5.7.1",
        f"From: <{DURAND.address}> must be the sending mailbox <{CARDIO.address}>",
        None,
    ),
    (
        "martin",
        MARTIN,
        (MARTIN.address, DURAND.address),
        False,
        550,
        "5.6.0",
        "The message must have exactly one From: address",
        None,
    ),
    (
        "martin",
        MARTIN,
        (MARTIN.address, MARTIN.address),
        False,
        550,
        "5.6.0",
        "The message must have exactly one From: address",
        None,
    ),
    ("martin", MARTIN, (), False, 550, "5.6.0", "The message must have exactly one From: address", None),
    # A delegate (no grants exist yet, but the rule is ready): accepted, named for a Sender: header.
    ("secretary", CARDIO, (CARDIO.address,), True, 250, "2.6.0", "Message accepted", SECRETARY.login),
]


@pytest.mark.parametrize(
    ("who", "sender", "from_addresses", "ok", "code", "status", "reason", "on_behalf_of"), MESSAGE_TABLE
)
def test_message(
    who: str,
    sender: FakeBal,
    from_addresses: tuple[str, ...],
    ok: bool,
    code: int,
    status: str,
    reason: str,
    on_behalf_of: str | None,
) -> None:
    identity = IDENTITIES[who]
    assert identity is not None
    decision = POLICY.message(identity, sender, ROUTES, MessageFacts(from_addresses=from_addresses))
    check(decision.verdict, ok, code, status, reason)
    assert decision.on_behalf_of == on_behalf_of


SENDER_FIELD_TABLE = [
    # who, sending BAL, the client's Sender: addresses, keep it?, on_behalf_of
    ("secretary", CARDIO, (SECRETARY.login,), True, SECRETARY.login),
    ("secretary", CARDIO, (str(SECRETARY.login).upper(),), True, SECRETARY.login),
    ("secretary", CARDIO, (DURAND.address,), False, SECRETARY.login),  # names someone else
    ("secretary", CARDIO, (SECRETARY.login, SECRETARY.login), False, SECRETARY.login),  # two
    ("secretary", CARDIO, (), False, SECRETARY.login),
    ("martin", MARTIN, (MARTIN.address,), True, None),  # the owner naming her own BAL
    ("martin", MARTIN, (DURAND.address,), False, None),  # the owner naming another doctor
]


@pytest.mark.parametrize(("who", "sender", "fields", "keep", "on_behalf_of"), SENDER_FIELD_TABLE)
def test_one_sender_field(
    who: str, sender: FakeBal, fields: tuple[str, ...], keep: bool, on_behalf_of: str | None
) -> None:
    identity = IDENTITIES[who]
    assert identity is not None
    facts = MessageFacts(from_addresses=(sender.address,), sender_fields=fields)
    decision = POLICY.message(identity, sender, ROUTES, facts)
    assert decision.verdict.ok
    assert (decision.keep_client_sender, decision.on_behalf_of) == (keep, on_behalf_of)


SMTPUTF8_TABLE = [
    # rcpt, in an SMTPUTF8 transaction?, code, status
    ("amélie.martin@demo.mssante.fr", False, 553, "5.6.7"),  # UTF-8 needs SMTPUTF8
    ("amélie.martin@demo.mssante.fr", True, 550, "5.1.1"),  # unknown, like an ASCII one
    ("ame\u0301lie@demo.mssante.fr", True, 550, "5.1.1"),  # decomposed form: the same answer
    ("Paul.Durand@DÉMO.mssante.fr", True, 550, "5.7.1"),  # an IDN that is not ours, not listed
    ("amélie@autre-operateur.mssante.fr", True, 553, "5.6.7"),  # not relayed
    ("a\u2028b@demo.mssante.fr", True, 501, "5.1.3"),
    ("\udcff@demo.mssante.fr", True, 501, "5.1.3"),  # undecodable bytes
]


@pytest.mark.parametrize(("rcpt_to", "utf8", "code", "status"), SMTPUTF8_TABLE)
def test_smtputf8_recipients(rcpt_to: str, utf8: bool, code: int, status: str) -> None:
    result = POLICY.recipient(PRO_MARTIN, MARTIN, rcpt_to, utf8=utf8)
    assert (result.verdict.code, result.verdict.status) == (code, status), result.verdict
    relayed = POLICY.relay_recipient(rcpt_to, utf8=utf8)
    if code != 550 or status == "5.1.1":
        assert relayed.recipient is None


def test_smtputf8_lookup_is_case_and_nfc_insensitive_where_the_annuaire_allows() -> None:
    # The A-label form of an ASCII-equivalent address reaches the BAL whatever its case.
    ok = POLICY.recipient(PRO_MARTIN, MARTIN, "PAUL.DURAND@Demo.MSSante.fr", utf8=True)
    assert ok.recipient is not None and ok.recipient.address == DURAND.key
    verdict, bal = POLICY.sender(PRO_MARTIN, "Claire.Martin@DEMO.mssante.fr", utf8=True)
    assert verdict.ok and bal is MARTIN


# -- relay-in (another operator) -----------------------------------------------------------------

PEER_TABLE = [
    ((REMOTE,), True, 250, "2.7.0", f"Operator {REMOTE} recognised"),
    (("mx.autre.example", REMOTE), True, 250, "2.7.0", f"Operator {REMOTE} recognised"),
    (
        (UNLISTED,),
        False,
        550,
        "5.7.1",
        f"The client certificate ({UNLISTED}) names no whitelisted operator domain",
    ),
    (
        ("a.example", "b.example"),
        False,
        550,
        "5.7.1",
        "The client certificate (a.example, b.example) names no whitelisted operator domain",
    ),
    ((), False, 550, "5.7.1", "The client certificate (no name) names no whitelisted operator domain"),
]


@pytest.mark.parametrize(("names", "ok", "code", "status", "reason"), PEER_TABLE)
def test_relay_peer(names: tuple[str, ...], ok: bool, code: int, status: str, reason: str) -> None:
    check(POLICY.relay_peer(names), ok, code, status, reason)


RELAY_SENDER_TABLE = [
    ("", True, 250, "2.1.0", "Null sender OK"),  # DSNs
    ("<>", True, 250, "2.1.0", "Null sender OK"),
    (f"dr.y@{REMOTE}", True, 250, "2.1.0", f"Sender <dr.y@{REMOTE}> OK"),
    (f"MAILER-DAEMON@mx.{REMOTE}", True, 250, "2.1.0", f"Sender <MAILER-DAEMON@mx.{REMOTE}> OK"),
    # Whitelisted, but another operator's: the certificate presented was REMOTE's.
    (
        f"dr.t@{THIRD}",
        False,
        550,
        "5.7.1",
        f"<dr.t@{THIRD}>: domain {THIRD} is not one of the sending operator's ({REMOTE})",
    ),
    (
        f"x@mx.{LOCAL}",
        False,
        550,
        "5.7.1",
        f"<x@mx.{LOCAL}> claims a domain hosted here; refused from another operator",
    ),
    (
        f"amélie@{REMOTE}",
        False,
        553,
        "5.6.7",
        f"<amélie@{REMOTE}> is not ASCII: send it in an SMTPUTF8 transaction (RFC 6531)",
    ),
    (
        MARTIN.address,
        False,
        550,
        "5.7.1",
        f"<{MARTIN.address}> claims a domain hosted here; refused from another operator",
    ),
    (
        f"x@{PATIENT_DOMAIN.upper()}",
        False,
        550,
        "5.7.1",
        f"<x@{PATIENT_DOMAIN.upper()}> claims a domain hosted here; refused from another operator",
    ),
    (
        f"dr.z@{UNLISTED}",
        False,
        550,
        "5.7.1",
        f"<dr.z@{UNLISTED}>: domain {UNLISTED} is outside the MSSanté trust space",
    ),
    (
        "someone@gmail.com",
        False,
        550,
        "5.7.1",
        "<someone@gmail.com>: domain gmail.com is outside the MSSanté trust space",
    ),
]


@pytest.mark.parametrize(("mail_from", "ok", "code", "status", "reason"), RELAY_SENDER_TABLE)
def test_relay_sender(mail_from: str, ok: bool, code: int, status: str, reason: str) -> None:
    check(POLICY.relay_sender(mail_from, (REMOTE,)), ok, code, status, reason)


def _report(report_type: str | None) -> MessageFacts:
    return MessageFacts((f"MAILER-DAEMON@mx.{REMOTE}",), report_type=report_type)


RELAY_MESSAGE_TABLE = [
    ("peer's doctor", f"dr.y@{REMOTE}", MessageFacts((f"dr.y@{REMOTE}",)), True, "2.6.0", "Message accepted"),
    (
        "one of our doctors",
        f"dr.y@{REMOTE}",
        MessageFacts((MARTIN.address,)),
        False,
        "5.7.1",
        f"From: <{MARTIN.address}> claims a domain hosted here; refused from another operator",
    ),
    (
        "a third operator's doctor",
        f"dr.y@{REMOTE}",
        MessageFacts((f"dr.t@{THIRD}",)),
        False,
        "5.7.1",
        f"From: <dr.t@{THIRD}>: domain {THIRD} is not one of the sending operator's ({REMOTE})",
    ),
    ("DSN", "", _report("delivery-status"), True, "2.6.0", "Message accepted"),
    ("MDN", "<>", _report("disposition-notification"), True, "2.6.0", "Message accepted"),
    (
        "null sender, ordinary mail",
        "",
        _report(None),
        False,
        "5.7.1",
        "The null sender <> is only for delivery and disposition reports (multipart/report)",
    ),
    (
        "null sender, other report",
        "",
        _report("tlsrpt"),
        False,
        "5.7.1",
        "The null sender <> is only for delivery and disposition reports (multipart/report)",
    ),
    (
        "two authors",
        f"dr.y@{REMOTE}",
        MessageFacts((f"dr.y@{REMOTE}", f"dr.z@{REMOTE}")),
        False,
        "5.6.0",
        "The message must have exactly one From: address",
    ),
]


@pytest.mark.parametrize(
    ("case", "mail_from", "facts", "ok", "status", "reason"),
    RELAY_MESSAGE_TABLE,
    ids=[row[0] for row in RELAY_MESSAGE_TABLE],
)
def test_relay_message(
    case: str, mail_from: str, facts: MessageFacts, ok: bool, status: str, reason: str
) -> None:
    check(POLICY.relay_message((REMOTE,), mail_from, facts), ok, 250 if ok else 550, status, reason)


RELAY_RECIPIENT_TABLE = [
    (
        DURAND.address,
        True,
        250,
        "2.1.5",
        f"Recipient <{DURAND.address}> OK",
        Recipient(DURAND.key, "local", LOCAL),
    ),
    (
        "<PAUL.DURAND@demo.mssante.fr>",
        True,
        250,
        "2.1.5",
        f"Recipient <{DURAND.address}> OK",
        Recipient(DURAND.key, "local", LOCAL),
    ),
    (
        f"personne@{LOCAL}",
        False,
        550,
        "5.1.1",
        f"<personne@{LOCAL}>: no such mailbox (BAL) in the annuaire",
        None,
    ),
    (
        RETIRED.address,
        False,
        550,
        "5.1.1",
        f"<{RETIRED.address}>: no such mailbox (BAL) in the annuaire",
        None,
    ),
    # Relay-in never relays onwards, not even to another whitelisted operator.
    (
        ELSEWHERE.address,
        False,
        550,
        "5.7.1",
        f"<{ELSEWHERE.address}>: this server does not relay for {REMOTE}",
        None,
    ),
    (
        "someone@gmail.com",
        False,
        550,
        "5.7.1",
        "<someone@gmail.com>: this server does not relay for gmail.com",
        None,
    ),
    ("personne@", False, 550, "5.7.1", "<personne@>: this server does not relay for that domain", None),
]


@pytest.mark.parametrize(("rcpt_to", "ok", "code", "status", "reason", "recipient"), RELAY_RECIPIENT_TABLE)
def test_relay_recipient(
    rcpt_to: str, ok: bool, code: int, status: str, reason: str, recipient: Recipient | None
) -> None:
    result = POLICY.relay_recipient(rcpt_to)
    check(result.verdict, ok, code, status, reason)
    assert result.recipient == recipient


def test_local_domains_compare_without_case() -> None:
    policy = Policy(DIRECTORY, ["Demo.MSSante.FR"])
    assert policy.is_local("demo.mssante.fr") and policy.is_local("DEMO.mssante.fr")
    assert not policy.is_local(PATIENT_DOMAIN)
    # With the patient domain not hosted, the patient BAL is out of reach of submission senders.
    verdict, _ = policy.sender(PATIENT_ID, PATIENT.address)
    check(verdict, False, 550, "5.7.1", f"<{PATIENT.address}> is not hosted by this operator")


@pytest.mark.parametrize("rcpt_to", [f"<.@{REMOTE}>", f'<"dr.y@{LOCAL}"@{REMOTE}>', f"<a..b@{REMOTE}>"])
def test_recipient_local_part_must_be_a_dot_atom(rcpt_to: str) -> None:
    result = POLICY.recipient(PRO_MARTIN, MARTIN, rcpt_to)
    assert (result.verdict.code, result.verdict.status) == (501, "5.1.3") and result.recipient is None


# -- mailbox access (IMAP) -----------------------------------------------------------------------

MAILBOX_TABLE = [
    # who, address asked for, the BAL opened (None: refused, answered as a missing mailbox)
    ("martin", MARTIN.address, MARTIN),
    ("martin", "<Claire.Martin@DEMO.mssante.fr>", MARTIN),
    ("durand", CARDIO.address, CARDIO),  # responsible of the ORG BAL
    ("durand", DPI.address, DPI),  # responsible of the APP BAL
    ("dpi", DPI.address, DPI),  # the application itself
    ("patient", PATIENT.address, PATIENT),
    ("martin", DURAND.address, None),  # a colleague's BAL
    ("martin", CARDIO.address, None),
    ("dpi", MARTIN.address, None),
    ("other-app", DPI.address, None),
    ("other-patient", PATIENT.address, None),
    ("secretary", CARDIO.address, None),  # no grants yet
    ("martin", RETIRED.address, None),  # her own, but deactivated
    ("martin", f"inconnu@{LOCAL}", None),
    ("martin", "pas-une-adresse", None),
]


@pytest.mark.parametrize(("who", "address", "opened"), MAILBOX_TABLE)
def test_mailbox(who: str, address: str, opened: FakeBal | None) -> None:
    identity = IDENTITIES[who]
    assert identity is not None
    assert POLICY.mailbox(identity, address) == opened


def test_mailbox_of_another_operator_is_not_opened_here() -> None:
    assert POLICY.mailbox(PRO_MARTIN, ELSEWHERE.address) is None
