"""The trust-space policy: every decision about who may send what to whom, in one place.

Front doors (SMTP submission, relay-in) parse and answer; they ask this module and relay its
verdict, an RFC 3463 enhanced status code with a human reason. The module decides from the
authenticated identity, the envelope, the headers, the annuaire and the effective rights
(``delegation.rights``); it performs no I/O of its own beyond the annuaire look-ups it is
given, which is what makes it testable rule by rule.

Deny by default: a sender must be a published, active BAL hosted here that the identity may
send as; a local recipient must be a published, active BAL; a remote recipient's domain must
be on the operator whitelist (liste blanche). Nothing else leaves or enters: the server is never
an open relay, authenticated or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from annuaire.addresses import AddressError, parse_international
from annuaire.addresses import parse as parse_address
from annuaire.lookup import NotCached
from delegation.rights import BalFacts, GrantSource, owns, rights_until
from delegation.rights import Right as _Right
from mssante.auth.identity import Identity, IdentityKind

TRUST_SPACE_SUFFIX = ".mssante.fr"
# What a message with the null sender <> may be (RFC 3464 DSN, RFC 8098 MDN, RFC 6533 global).
REPORT_TYPES = frozenset(
    (
        "delivery-status",
        "disposition-notification",
        "global-delivery-status",
        "global-disposition-notification",
    )
)


@dataclass(frozen=True)
class Verdict:
    """Accept, or refuse with an SMTP code, an RFC 3463 enhanced code and a reason."""

    ok: bool
    code: int
    status: str
    reason: str

    @property
    def smtp(self) -> str:
        return f"{self.code} {self.status} {self.reason}"


def accept(status: str, reason: str) -> Verdict:
    return Verdict(True, 250, status, reason)


def refuse(reason: str, *, code: int = 550, status: str = "5.7.1") -> Verdict:
    return Verdict(False, code, status, reason)


@dataclass(frozen=True)
class Recipient:
    """An accepted recipient and where it goes."""

    address: str  # the BAL's comparison key (lower-cased)
    route: Literal["local", "remote"]
    domain: str


@dataclass(frozen=True)
class RcptVerdict:
    verdict: Verdict
    recipient: Recipient | None = None


class DirectoryBal(BalFacts, Protocol):
    @property
    def address(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def is_pharmacy_org(self) -> bool: ...


class Directory(Protocol):
    """The annuaire look-ups the policy needs (``annuaire.lookup.Annuaire`` satisfies it)."""

    def bal(self, address: str) -> DirectoryBal | None: ...
    def is_domain_whitelisted(self, domain: str) -> bool: ...


@runtime_checkable
class MemoryDirectory(Directory, Protocol):
    """A directory that can also answer from memory alone, raising ``NotCached`` when an
    answer would read the database (``annuaire.lookup.Annuaire``)."""

    def peek_bal(self, address: str) -> DirectoryBal | None: ...
    def peek_whitelisted(self, domain: str) -> bool: ...
    def peek_generation(self) -> int: ...


class _FromMemory:
    """A memory directory's in-memory answers, as a ``Directory``."""

    def __init__(self, directory: MemoryDirectory) -> None:
        self._directory = directory

    def bal(self, address: str) -> DirectoryBal | None:
        return self._directory.peek_bal(address)

    def is_domain_whitelisted(self, domain: str) -> bool:
        return self._directory.peek_whitelisted(domain)


@dataclass(frozen=True)
class MessageFacts:
    """What the policy reads from a message's header (parsed by the front door)."""

    from_addresses: tuple[str, ...]
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    attachments: int = 0
    # ``type/subtype`` of each attachment (counted for patient senders only, like ``attachments``).
    attachment_types: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    # The addresses of the client's own ``Sender:`` fields, in order.
    sender_fields: tuple[str, ...] = ()
    # ``report-type`` when the message is a ``multipart/report`` (DSN, MDN), else None.
    report_type: str | None = None


@dataclass(frozen=True)
class MessageVerdict:
    verdict: Verdict
    # The delegate's identity for a ``Sender:`` header, when sending on behalf of the BAL.
    on_behalf_of: str | None = None
    # The client's own single ``Sender:`` names who really sends: keep it (and add none).
    # Otherwise every client ``Sender:`` is dropped, and ``on_behalf_of`` (if any) written.
    keep_client_sender: bool = False


class PatientRules(Protocol):
    """Hook for the rules of patient senders (MSSanté citoyenne)."""

    def recipient(self, patient: Identity, sender: DirectoryBal, rcpt: DirectoryBal) -> Verdict | None: ...
    def message(
        self, patient: Identity, sender: DirectoryBal, recipients: tuple[Recipient, ...], facts: MessageFacts
    ) -> Verdict | None: ...
    def outside(self, patient: Identity, address: str) -> Verdict: ...


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _plain(address: str) -> str:
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def _envelope_address(raw: str, utf8: bool) -> tuple[str, Verdict | None]:
    """The address to decide on, or the refusal of it.

    ASCII addresses go on as given. A UTF-8 one (RFC 6531) only inside an SMTPUTF8
    transaction; it is NFC-normalised with its domain in A-labels, so that it is compared with
    the annuaire as an ASCII one is (which, publishing only ASCII local parts, knows none of the
    UTF-8 ones: they end as unknown mailboxes, like any other).
    """
    address = _plain(raw)
    if address.isascii():
        return address, None
    if not utf8:
        return address, refuse(
            f"<{address}> is not ASCII: send it in an SMTPUTF8 transaction (RFC 6531)",
            code=553,
            status="5.6.7",
        )
    try:
        return parse_international(address).address, None
    except AddressError:
        return address, refuse(f"<{address}> is not a valid address", code=501, status="5.1.3")


class Policy:
    def __init__(
        self,
        directory: Directory,
        local_domains: list[str] | tuple[str, ...],
        *,
        patient_rules: PatientRules | None = None,
        grants: GrantSource | None = None,
    ) -> None:
        self.directory = directory
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.patient_rules = patient_rules
        self.grants = grants  # memberships and delegations (``delegation.grants.GrantBook``)
        self._directory_memory = directory if isinstance(directory, MemoryDirectory) else None
        self._memory = _FromMemory(self._directory_memory) if self._directory_memory is not None else None

    # -- rights -----------------------------------------------------------------------------
    def rights(self, identity: Identity, bal: BalFacts | None) -> frozenset[_Right]:
        """Effective rights: ownership ∪ membership ∪ grants in force (``delegation.rights``)."""
        return rights_until(identity, bal, self.grants)[0]

    def rights_until(
        self, identity: Identity, bal: BalFacts | None, *, grants: GrantSource | None = None
    ) -> tuple[frozenset[_Right], datetime | None]:
        """The rights, and the earliest expiry of a grant they depend on (None: no expiry).
        ``grants``: this server's grants as already checked by the caller (``GrantBook.as_of``)."""
        return rights_until(identity, bal, self.grants if grants is None else grants)

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.local_domains

    def bal_from_memory(self, address: str) -> DirectoryBal | None:
        """The BAL at ``address`` (None: unknown) from the directory's cached answers alone;
        ``NotCached`` when the answer would read the database."""
        if self._memory is None:
            raise NotCached(address)
        return self._memory.bal(address)

    def directory_generation(self) -> int:
        """The annuaire's generation the directory's cached answers are of; ``NotCached`` when
        they are due for a check (or the directory keeps none)."""
        if self._directory_memory is None:
            raise NotCached("generation")
        return self._directory_memory.peek_generation()

    def held_from_memory(self, identity: Identity | None, address: str) -> DirectoryBal | None:
        """The BAL at ``address``, hosted here, when the directory's cached answers hold it
        and ``identity`` is its holder; else None, and the question goes to a worker thread.
        A holder's rights follow from the annuaire alone; a delegate's come from the grants,
        whose generation is read at every question (revocation acts at once)."""
        if identity is None:
            return None
        try:
            bal = self.bal_from_memory(address)
        except NotCached:
            return None
        if bal is None or not self.is_local(bal.domain) or not owns(identity, bal):
            return None
        return bal

    # -- submission -----------------------------------------------------------------------
    def sender(
        self, identity: Identity | None, mail_from: str, *, utf8: bool = False
    ) -> tuple[Verdict, DirectoryBal | None]:
        """MAIL FROM on submission: a published, active BAL hosted here the identity may send as."""
        return self._sender(self.directory, identity, mail_from, utf8)

    def sender_from_memory(
        self, identity: Identity | None, mail_from: str, *, utf8: bool = False
    ) -> tuple[Verdict, DirectoryBal | None] | None:
        """:meth:`sender`'s answer when the directory's cached answers give it and the identity
        owns the BAL, else None (asked from a worker thread): a delegate's rights come from the
        grants, whose generation is read at every question (revocation acts at once)."""
        if self._memory is None:
            return None
        try:
            return self._sender(self._memory, identity, mail_from, utf8, owner_only=True)
        except NotCached:
            return None

    def _sender(
        self,
        directory: Directory,
        identity: Identity | None,
        mail_from: str,
        utf8: bool,
        *,
        owner_only: bool = False,
    ) -> tuple[Verdict, DirectoryBal | None]:
        if identity is None:
            return refuse("Authentication required", code=530, status="5.7.0"), None
        address, problem = _envelope_address(mail_from, utf8)
        if problem is not None:
            return problem, None
        if not address:
            return refuse("The null sender <> cannot be used for submission", code=553, status="5.1.7"), None
        bal = directory.bal(address)
        if bal is None or not bal.active:
            return refuse(f"<{address}> is not a published, active mailbox (BAL) of the annuaire"), None
        if not self.is_local(bal.domain):
            return refuse(f"<{address}> is not hosted by this operator"), None
        if owner_only and not owns(identity, bal):
            raise NotCached(address)  # the grants decide: read from the database
        if _Right.SEND_ON_BEHALF not in self.rights(identity, bal):
            return refuse(f"{identity.principal} may not send as <{bal.address}>"), None
        return accept("2.1.0", f"Sender <{bal.address}> OK"), bal

    def recipient(
        self, identity: Identity, sender: DirectoryBal, rcpt_to: str, *, utf8: bool = False
    ) -> RcptVerdict:
        """RCPT TO on submission: local published BALs, or whitelisted operator domains."""
        return self._recipient(self.directory, identity, sender, rcpt_to, utf8)

    def recipient_from_memory(
        self, identity: Identity, sender: DirectoryBal, rcpt_to: str, *, utf8: bool = False
    ) -> RcptVerdict | None:
        """:meth:`recipient`'s verdict when the directory's cached answers give it, else None
        (the front door then asks :meth:`recipient` from a worker thread). Never for patients,
        whose rules read their conversations. The same verdict either way: the cache is the one
        :meth:`recipient` reads, checked as often; only the thread hop is saved (most of an
        RCPT's cost)."""
        if self._memory is None or identity.kind is IdentityKind.PATIENT:
            return None
        try:
            return self._recipient(self._memory, identity, sender, rcpt_to, utf8)
        except NotCached:
            return None

    def _recipient(
        self, directory: Directory, identity: Identity, sender: DirectoryBal, rcpt_to: str, utf8: bool
    ) -> RcptVerdict:
        address, problem = _envelope_address(rcpt_to, utf8)
        if problem is not None:
            return RcptVerdict(problem)
        try:
            domain = parse_address(address).domain if address.isascii() else _domain_of(address)
        except AddressError:
            return RcptVerdict(refuse(f"<{address}> is not a valid address", code=501, status="5.1.3"))
        if self.is_local(domain):
            bal = directory.bal(address)
            if bal is None or not bal.active:
                return RcptVerdict(
                    refuse(f"<{address}>: no such mailbox (BAL) in the annuaire", status="5.1.1")
                )
            if identity.kind is IdentityKind.PATIENT and self.patient_rules is not None:
                verdict = self.patient_rules.recipient(identity, sender, bal)
                if verdict is not None and not verdict.ok:
                    return RcptVerdict(verdict)
            return RcptVerdict(
                accept("2.1.5", f"Recipient <{bal.address}> OK"), Recipient(bal.key, "local", domain)
            )
        if not address.isascii():
            return RcptVerdict(
                refuse(
                    f"<{address}>: UTF-8 mailbox names are not relayed to other operators "
                    "(the annuaire publishes none)",
                    code=553,
                    status="5.6.7",
                )
            )
        if not directory.is_domain_whitelisted(domain):
            if identity.kind is IdentityKind.PATIENT and self.patient_rules is not None:
                return RcptVerdict(self.patient_rules.outside(identity, address))
            where = (
                "is not a whitelisted operator domain of the MSSanté space"
                if domain.endswith(TRUST_SPACE_SUFFIX)
                else "is outside the MSSanté trust space"
            )
            return RcptVerdict(refuse(f"<{address}>: domain {domain} {where}; relaying refused"))
        if identity.kind is IdentityKind.PATIENT and self.patient_rules is not None:
            remote = directory.bal(address)
            if remote is not None:
                verdict = self.patient_rules.recipient(identity, sender, remote)
                if verdict is not None and not verdict.ok:
                    return RcptVerdict(verdict)
        return RcptVerdict(
            accept("2.1.5", f"Recipient <{address}> OK (relayed to its operator)"),
            Recipient(address.lower(), "remote", domain),
        )

    def message_in_memory(self, identity: Identity) -> bool:
        """Whether :meth:`message` decides for this sender without reading the database (only
        the patient rules read): the front door then asks it on the event loop."""
        return identity.kind is not IdentityKind.PATIENT or self.patient_rules is None

    def message(
        self,
        identity: Identity,
        sender: DirectoryBal,
        recipients: tuple[Recipient, ...],
        facts: MessageFacts,
    ) -> MessageVerdict:
        """After DATA: ``From:`` must be the sending BAL; a delegate is named in ``Sender:``.

        One ``Sender:`` at most (RFC 5322 §3.6.2): the client's own is kept when it names who
        really sends (the delegate, or the BAL itself when its owner sends), dropped otherwise.
        """
        if len(facts.from_addresses) != 1:
            return MessageVerdict(refuse("The message must have exactly one From: address", status="5.6.0"))
        if _plain(facts.from_addresses[0]).lower() != sender.key:
            return MessageVerdict(
                refuse(f"From: <{facts.from_addresses[0]}> must be the sending mailbox <{sender.address}>")
            )
        if identity.kind is IdentityKind.PATIENT and self.patient_rules is not None:
            verdict = self.patient_rules.message(identity, sender, recipients, facts)
            if verdict is not None and not verdict.ok:
                return MessageVerdict(verdict)
        delegate = None if owns(identity, sender) else (identity.login or identity.principal)
        named = [_plain(a).lower() for a in facts.sender_fields]
        keep = named == [delegate.lower() if delegate else sender.key]
        return MessageVerdict(accept("2.6.0", "Message accepted"), delegate, keep_client_sender=keep)

    # -- mailbox access (IMAP) --------------------------------------------------------------
    def mailbox(self, identity: Identity, address: str) -> DirectoryBal | None:
        """The BAL an IMAP session may open as its own: a published, active BAL hosted here that
        the identity may read. None otherwise (the front door then answers as for a missing
        mailbox)."""
        bal = self.directory.bal(_plain(address))
        if bal is None or not self.is_local(bal.domain) or _Right.READ not in self.rights(identity, bal):
            return None
        return bal

    # -- relay-in -------------------------------------------------------------------------
    def operator_domains(self, peer_names: tuple[str, ...]) -> tuple[str, ...]:
        """The whitelisted domains the sending operator's verified certificate names."""
        return tuple(n for n in peer_names if self.directory.is_domain_whitelisted(n))

    def relay_peer(self, peer_domains: tuple[str, ...]) -> Verdict:
        """The sending operator (names of its verified certificate) must be whitelisted."""
        domains = self.operator_domains(peer_domains)
        if domains:
            return accept("2.7.0", f"Operator {domains[0]} recognised")
        shown = ", ".join(peer_domains) or "no name"
        return refuse(
            f"The client certificate ({shown}) names no whitelisted operator domain", status="5.7.1"
        )

    def _claims_local(self, domain: str) -> bool:
        return any(domain == d or domain.endswith("." + d) for d in self.local_domains)

    @staticmethod
    def _entitled(domain: str, operator: tuple[str, ...]) -> bool:
        """A domain an operator may write from: one its certificate names and the whitelist
        lists, or a host name under one (``MAILER-DAEMON@mx.its-domain`` in its DSNs). The
        whitelist maps no operator to other domains, so nothing else is that operator's."""
        return any(domain == d or domain.endswith("." + d) for d in operator)

    def _relay_origin(self, what: str, address: str, operator: tuple[str, ...]) -> Verdict | None:
        """Refusal of an address the sending operator may not use (envelope or ``From:``)."""
        domain = _domain_of(address)
        if self._claims_local(domain):
            return refuse(f"{what}<{address}> claims a domain hosted here; refused from another operator")
        if self._entitled(domain, operator):
            return None
        if self.directory.is_domain_whitelisted(domain):
            return refuse(
                f"{what}<{address}>: domain {domain} is not one of the sending operator's "
                f"({', '.join(operator) or 'none'})"
            )
        return refuse(f"{what}<{address}>: domain {domain} is outside the MSSanté trust space")

    def relay_sender(self, mail_from: str, operator: tuple[str, ...], *, utf8: bool = False) -> Verdict:
        """MAIL FROM on relay-in: the null sender (reports, checked after DATA) or an address of
        the operator whose certificate was presented."""
        address, problem = _envelope_address(mail_from, utf8)
        if problem is not None:
            return problem
        if not address:
            return accept("2.1.0", "Null sender OK")
        return self._relay_origin("", address, operator) or accept("2.1.0", f"Sender <{address}> OK")

    def relay_message(self, operator: tuple[str, ...], mail_from: str, facts: MessageFacts) -> Verdict:
        """After DATA on relay-in: ``From:`` is the sending operator's, never one of our BALs;
        the null sender carries delivery or disposition reports only (``multipart/report``)."""
        if len(facts.from_addresses) != 1:
            return refuse("The message must have exactly one From: address", status="5.6.0")
        refused = self._relay_origin("From: ", _plain(facts.from_addresses[0]), operator)
        if refused is not None:
            return refused
        if not _plain(mail_from) and facts.report_type not in REPORT_TYPES:
            return refuse(
                "The null sender <> is only for delivery and disposition reports (multipart/report)"
            )
        return accept("2.6.0", "Message accepted")

    def relay_recipient(self, rcpt_to: str, *, utf8: bool = False) -> RcptVerdict:
        """Relay-in delivers only to this operator's published, active BALs."""
        address, problem = _envelope_address(rcpt_to, utf8)
        if problem is not None:
            return RcptVerdict(problem)
        domain = _domain_of(address)
        if not self.is_local(domain):
            return RcptVerdict(
                refuse(f"<{address}>: this server does not relay for {domain or 'that domain'}")
            )
        bal = self.directory.bal(address)
        if bal is None or not bal.active:
            return RcptVerdict(refuse(f"<{address}>: no such mailbox (BAL) in the annuaire", status="5.1.1"))
        return RcptVerdict(
            accept("2.1.5", f"Recipient <{bal.address}> OK"), Recipient(bal.key, "local", domain)
        )
