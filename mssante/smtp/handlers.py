"""SMTP handlers: submission (authenticated professionals, staff, software, patients) and
relay-in (other operators). They turn envelope and data into questions for the policy, and an
accepted message into one durable store transaction; ``250`` is answered only after it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from mssante import memory, metrics
from mssante.audit import AuditEvent
from mssante.auth.authenticator import AuthSuccess
from mssante.auth.identity import IdentityKind
from mssante.policy import DirectoryBal, Policy, Recipient
from mssante.smtp import dkim, hygiene
from mssante.smtp.hooks import DeliveryContext, HookRunner
from mssante.smtp.queue import QueueBell, QueuedMessage, SubmissionQueue, new_id
from mssante.smtp.session import MSSanteSMTP
from mssante.smtp.spool import Received, Spooled
from mssante.store.store import MessageStore
from mssante.store.types import QuotaExceeded, StoreError

log = logging.getLogger("mssante.smtp")


class _Base:
    protocol = "ESMTP"

    def __init__(
        self, *, store: MessageStore, policy: Policy, hostname: str, max_recipients: int, hooks: HookRunner
    ) -> None:
        self.store = store
        self.policy = policy
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.hooks = hooks

    async def handle_EHLO(
        self, server: MSSanteSMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses[1:-1] if not r.startswith("250-AUTH")]
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        mechanisms = server.mechanisms()
        if mechanisms:
            extra.append("250-AUTH " + " ".join(mechanisms))
        return [responses[0], *kept, *extra, "250 HELP"]

    async def _refuse(
        self,
        server: MSSanteSMTP,
        actor: str,
        stage: str,
        reply: str,
        *,
        bal: str | None = None,
        address: str | None = None,
    ) -> str:
        """Answer a policy refusal, once it is in the audit trail (who tried what, and why not)."""
        code, _, rest = reply.partition(" ")
        status, _, reason = rest.partition(" ")
        metrics.smtp_refused(server.listener, stage, status or code)
        await self.store.record(
            AuditEvent(
                actor=actor,
                action="smtp.refused",
                bal=bal,
                object=address,
                source=server.peer_ip,
                outcome=status or code,
                detail={"stage": stage, "listener": server.listener, "reason": reason[:300]},
            )
        )
        return reply

    @staticmethod
    def _accept_mail(envelope: Envelope, address: str, options: list[str], **facts: object) -> None:
        """Record an accepted MAIL FROM and what was learnt deciding it (sender BAL, peer)."""
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        for key, value in facts.items():
            setattr(envelope, key, value)
        envelope.routes = []  # type: ignore[attr-defined]

    def _too_many(self, envelope: Envelope) -> str | None:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.max_recipients} per message)"
        return None

    @staticmethod
    def _accept_rcpt(envelope: Envelope, address: str, options: list[str], recipient: Recipient) -> None:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.routes.append(recipient)  # type: ignore[attr-defined]

    async def handle_RSET(self, server: MSSanteSMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"

    def _trace(
        self,
        server: MSSanteSMTP,
        session: Session,
        recipient: str | None,
        authenticated: str | None,
        on_behalf_of: str | None,
        message_id: str | None,
    ) -> bytes:
        tls = server.tls
        return hygiene.trace_headers(
            hostname=self.hostname,
            helo=session.host_name or "unknown",
            peer_ip=server.peer_ip,
            protocol=("ESMTPSA" if authenticated else "ESMTPS") if tls.active else "ESMTP",
            recipient=recipient,
            session_id=server.session_id,
            tls=f"{tls.version} {tls.cipher}" if tls.active else None,
            authenticated=authenticated,
            on_behalf_of=on_behalf_of,
            new_message_id=message_id,
        )

    async def _store(
        self,
        server: MSSanteSMTP,
        ctx: DeliveryContext,
        actor: str,
        signature: bytes = b"",
        extra_audit: tuple[AuditEvent, ...] = (),
    ) -> str:
        local, outbound = ctx.routed(signature)
        try:
            ctx.uids = await self.store.deliver(
                ctx.raw,
                ctx.mail_from,
                local,
                actor=actor,
                source=server.peer_ip,
                outbound=outbound,
                extra_audit=extra_audit,
                also=self.hooks.writes(ctx),
            )
        except QuotaExceeded as exc:
            return f"552 5.2.2 Mailbox <{exc.bal}> is over its quota"
        except StoreError as exc:
            log.error("delivery refused by the store: %s", exc, extra={"session": server.session_id})
            return "451 4.3.0 The message could not be stored; nothing was accepted, try again later"
        except Exception:
            log.exception("delivery failed", extra={"session": server.session_id})
            return "451 4.3.0 Temporary failure; nothing was accepted, try again later"
        # The message is durable: the client hears 250 now, and the log line, the hooks'
        # background work (patient notice, relay, DMP deposit) and the memory given back follow
        # on the loop's next turn, while the client is busy with its next message.
        asyncio.get_running_loop().call_soon(
            self._accepted, server.session_id, ctx, len(local), len(ctx.recipients) - len(local)
        )
        return f"250 2.0.0 Message accepted (id {server.session_id})"

    def _accepted(self, session_id: str, ctx: DeliveryContext, local: int, remote: int) -> None:
        log.info(
            "accepted from %s for %d local, %d remote recipient(s)",
            ctx.mail_from,
            local,
            remote,
            extra={"session": session_id},
        )
        self.hooks.committed(ctx)
        memory.give_back(len(ctx.raw))


class SubmissionHandler(_Base):
    """Submission (587/465): AUTH required; MSSanté policy on sender, recipients and headers."""

    def __init__(
        self,
        *,
        signer: dkim.Signer,
        queue: tuple[SubmissionQueue, QueueBell] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.signer = signer
        # smtp.acknowledge = "queued": 250 once sealed in the queue (mssante.smtp.queue).
        self.queue = queue

    @staticmethod
    def _auth(session: Session) -> AuthSuccess:
        result = session.auth_data
        assert isinstance(result, AuthSuccess)
        return result

    async def handle_MAIL(
        self, server: MSSanteSMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        identity = self._auth(session).identity
        # From the annuaire's cache on the loop for a BAL's owner; else from a thread.
        answer = self.policy.sender_from_memory(identity, address, utf8=envelope.smtp_utf8)
        if answer is None:
            answer = await asyncio.to_thread(
                functools.partial(self.policy.sender, identity, address, utf8=envelope.smtp_utf8)
            )
        verdict, bal = answer
        if not verdict.ok:
            return await self._refuse(server, identity.principal, "MAIL", verdict.smtp, address=address)
        self._accept_mail(envelope, address, mail_options, sender_bal=bal)
        return verdict.smtp

    async def handle_RCPT(
        self, server: MSSanteSMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if (too_many := self._too_many(envelope)) is not None:
            return too_many
        identity = self._auth(session).identity
        sender: DirectoryBal = envelope.sender_bal  # type: ignore[attr-defined]
        # From the annuaire's cache on the loop when it holds the answer; else from a thread.
        result = self.policy.recipient_from_memory(identity, sender, address, utf8=envelope.smtp_utf8)
        if result is None:
            result = await asyncio.to_thread(
                functools.partial(self.policy.recipient, identity, sender, address, utf8=envelope.smtp_utf8)
            )
        if result.recipient is None:
            return await self._refuse(
                server, identity.principal, "RCPT", result.verdict.smtp, bal=sender.key, address=address
            )
        self._accept_rcpt(envelope, address, rcpt_options, result.recipient)
        return result.verdict.smtp

    async def handle_DATA(self, server: MSSanteSMTP, session: Session, envelope: Envelope) -> str:
        auth = self._auth(session)
        identity = auth.identity
        sender: DirectoryBal = envelope.sender_bal  # type: ignore[attr-defined]
        routes: list[Recipient] = envelope.routes  # type: ignore[attr-defined]
        content = _received(envelope)
        facts, problem, has_id = hygiene.inspect(
            content.buffer,
            start=content.start,
            count_attachments=identity.kind is IdentityKind.PATIENT,
            smtputf8=envelope.smtp_utf8,
        )
        if problem is not None:
            return await self._refuse(server, identity.principal, "DATA", problem.smtp, bal=sender.key)
        if self.policy.message_in_memory(identity):
            decision = self.policy.message(identity, sender, tuple(routes), facts)
        else:
            decision = await asyncio.to_thread(self.policy.message, identity, sender, tuple(routes), facts)
        if not decision.verdict.ok:
            return await self._refuse(
                server, identity.principal, "DATA", decision.verdict.smtp, bal=sender.key
            )
        local_domain = sender.domain
        message_id = facts.headers.get("message-id") if has_id else hygiene.new_message_id(local_domain)
        if facts.sender_fields and not decision.keep_client_sender:
            content.drop_fields("Sender")
        trace = self._trace(
            server,
            session,
            routes[0].address if len(routes) == 1 else None,
            identity.login or identity.principal,
            None if decision.keep_client_sender else decision.on_behalf_of,
            None if has_id else message_id,
        )
        raw = content.finish(trace)  # the received buffer itself, trace fields on top
        del content
        signature = b""
        if any(r.route == "remote" for r in routes):
            signature = await asyncio.to_thread(self.signer.signature, raw, local_domain)
        extra: tuple[AuditEvent, ...] = ()
        if decision.on_behalf_of:
            extra = (
                AuditEvent(
                    actor=identity.principal,
                    action="message.send_on_behalf",
                    bal=sender.key,
                    source=server.peer_ip,
                    detail={"to": [r.address for r in routes]},
                ),
            )
        if self.queue is not None and isinstance(raw, bytearray):
            # (a message received into a spool file, above smtp.spool_threshold, is streamed
            # into the store as before: its queue entry would hold it in memory whole)
            entry = QueuedMessage(
                id=new_id(),
                mail_from=sender.key,
                actor=identity.principal,
                source=server.peer_ip,
                identity=identity,
                sender_bal=sender.key,
                recipients=tuple(routes),
                facts=facts,
                message_id=message_id,
                signature=signature,
                extra_audit=extra,
                arrival=datetime.now(UTC),
                raw=raw,
            )
            return await self._enqueue(server, entry)
        ctx = DeliveryContext(
            "submission", identity, sender.key, sender, tuple(routes), facts, raw, message_id
        )
        return await self._store(server, ctx, identity.principal, signature, extra)

    async def _enqueue(self, server: MSSanteSMTP, entry: QueuedMessage) -> str:
        """Seal the message in the queue and answer 250 once that is on disk."""
        assert self.queue is not None
        queue, bell = self.queue
        try:
            # A lone session on this listener: its event loop writes the entry itself.
            await queue.put(entry, alone=server.limits.sessions == 1)
        except Exception:
            log.exception("message not queued", extra={"session": server.session_id})
            return "451 4.3.0 The message could not be queued; nothing was accepted, try again later"
        bell.ring()
        asyncio.get_running_loop().call_soon(self._queued, server.session_id, entry)
        return f"250 2.0.0 Message accepted, queued as {entry.id}"

    @staticmethod
    def _queued(session_id: str, entry: QueuedMessage) -> None:
        log.info(
            "queued from %s for %d recipient(s) as %s",
            entry.mail_from,
            len(entry.recipients),
            entry.id,
            extra={"session": session_id},
        )
        memory.give_back(len(entry.raw))


class RelayHandler(_Base):
    """Relay-in (25): another operator, identified by its verified client certificate."""

    def __init__(self, *, dkim_reject_on_fail: bool, dkim_dns: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reject_on_fail = dkim_reject_on_fail
        self.dkim_dns = dkim_dns

    async def handle_MAIL(
        self, server: MSSanteSMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        tls = server.tls
        if not tls.active:
            return "530 5.7.0 Must issue a STARTTLS command first"
        names = peer_names(server)
        if tls.peer is None or not names:
            return "530 5.7.0 A client certificate of a whitelisted operator is required"
        actor = f"operator:{','.join(names)}"
        peer = await asyncio.to_thread(self.policy.relay_peer, names)
        if not peer.ok:
            return await self._refuse(server, actor, "MAIL", peer.smtp, address=address)
        operator = await asyncio.to_thread(self.policy.operator_domains, names)
        verdict = await asyncio.to_thread(
            functools.partial(self.policy.relay_sender, address, operator, utf8=envelope.smtp_utf8)
        )
        if not verdict.ok:
            return await self._refuse(server, actor, "MAIL", verdict.smtp, address=address)
        self._accept_mail(envelope, address, mail_options, peer_names=names, operator=operator)
        return verdict.smtp

    async def handle_RCPT(
        self, server: MSSanteSMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if (too_many := self._too_many(envelope)) is not None:
            return too_many
        result = await asyncio.to_thread(
            functools.partial(self.policy.relay_recipient, address, utf8=envelope.smtp_utf8)
        )
        if result.recipient is None:
            actor = f"operator:{','.join(envelope.peer_names)}"  # type: ignore[attr-defined]
            return await self._refuse(server, actor, "RCPT", result.verdict.smtp, address=address)
        self._accept_rcpt(envelope, address, rcpt_options, result.recipient)
        return result.verdict.smtp

    async def handle_DATA(self, server: MSSanteSMTP, session: Session, envelope: Envelope) -> str:
        content = _received(envelope)
        peer = ",".join(envelope.peer_names)  # type: ignore[attr-defined]
        actor = f"operator:{peer}"
        facts, problem, has_id = hygiene.inspect(
            content.buffer, start=content.start, smtputf8=envelope.smtp_utf8
        )
        if problem is not None:
            return await self._refuse(server, actor, "DATA", problem.smtp)
        operator: tuple[str, ...] = envelope.operator  # type: ignore[attr-defined]
        mail_from = envelope.mail_from or ""
        verdict = await asyncio.to_thread(self.policy.relay_message, operator, mail_from, facts)
        if not verdict.ok:
            return await self._refuse(server, actor, "DATA", verdict.smtp, address=facts.from_addresses[0])
        verification = await asyncio.to_thread(dkim.verify, content.buffer, self.dkim_dns, content.start)
        if verification.result in ("fail", "permerror") and self.reject_on_fail:
            return "550 5.7.20 DKIM signature did not verify"
        routes: list[Recipient] = envelope.routes  # type: ignore[attr-defined]
        message_id = facts.headers.get("message-id") if has_id else hygiene.new_message_id(self.hostname)
        trace = self._trace(
            server,
            session,
            routes[0].address if len(routes) == 1 else None,
            None,
            None,
            None if has_id else message_id,
        )
        raw = content.finish(trace + verification.header(self.hostname))
        del content
        ctx = DeliveryContext(
            "relay", None, envelope.mail_from or "", None, tuple(routes), facts, raw, message_id
        )
        return await self._store(server, ctx, actor)


def _received(envelope: Envelope) -> Received | Spooled:
    """The DATA content the session read, taken from the envelope (the handler owns it now)."""
    content = envelope.original_content
    assert isinstance(content, Received | Spooled)
    envelope.original_content = envelope.content = None
    return content


def peer_names(server: MSSanteSMTP) -> tuple[str, ...]:
    """DNS names of the verified client certificate (SAN dNSName, else CN), lower-cased."""
    if server.transport is None:
        return ()
    ssl_object = server.transport.get_extra_info("ssl_object")
    if ssl_object is None or server.tls.peer is None:
        return ()
    cert = ssl_object.getpeercert() or {}
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names))
