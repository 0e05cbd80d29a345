"""The IMAP session: states (RFC 3501 §3) and command dispatch, on top of the message store.

One :class:`Session` per connection. It receives parsed commands, checks that the command is
valid in the current state (not authenticated → authenticated → selected → logout), runs the
command's handler (one module per family in :mod:`mssante.imap.commands`) and writes the
tagged response through its :class:`Channel`. Who may open which BAL is not
decided here: the :class:`~mssante.imap.gate.Gate` says which BAL the session acts for, and
:class:`~mssante.imap.access.Access` (delegation) gives the rights held on each BAL — the own
one and those of the shared namespace ``Partagé/<bal>/…`` — asked afresh before every operation.

Pending changes made by other sessions are reported after every command, expunges only
after commands that allow them (see :mod:`mssante.imap.mailbox`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from delegation.rights import Right
from mssante import metrics
from mssante.audit import AuditEvent
from mssante.imap import mutf7, sparse
from mssante.imap.access import NONE, SHARED_PREFIX, Access, OwnerOnly, Rights
from mssante.imap.commands.acl import cmd_getacl, cmd_listrights, cmd_myrights, cmd_setacl
from mssante.imap.commands.append import cmd_append
from mssante.imap.commands.auth import cmd_authenticate, cmd_login, cmd_starttls
from mssante.imap.commands.base import Bad, No, Silent
from mssante.imap.commands.copymove import cmd_copy
from mssante.imap.commands.expunge import cmd_expunge
from mssante.imap.commands.fetch import cmd_fetch
from mssante.imap.commands.general import (
    cmd_capability,
    cmd_enable,
    cmd_id,
    cmd_logout,
    cmd_namespace,
    cmd_noop,
)
from mssante.imap.commands.idle import cmd_idle
from mssante.imap.commands.listing import (
    cmd_create,
    cmd_delete,
    cmd_list,
    cmd_rename,
    cmd_status,
    cmd_subscribe,
)
from mssante.imap.commands.quota import cmd_getquota, cmd_getquotaroot, cmd_setquota
from mssante.imap.commands.search import cmd_search
from mssante.imap.commands.select import cmd_close, cmd_select
from mssante.imap.commands.sort import cmd_sort, cmd_thread
from mssante.imap.commands.store import cmd_store
from mssante.imap.commands.values import Command, SequenceSet
from mssante.imap.fetch import Piece
from mssante.imap.gate import Gate, Principal
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.render import astring, compress, string
from mssante.imap.states import AUTHENTICATED, LOGOUT, NOT_AUTHENTICATED, SELECTED
from mssante.store.feed import REMOTE, FolderChange, Subscription
from mssante.store.store import MessageStore
from mssante.store.types import StoreError
from mssante.tls import TLSInfo

log = logging.getLogger(__name__)

BASE_CAPABILITIES = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "SPECIAL-USE",
    "CHILDREN",
    "ACL",
    "RIGHTS=texk",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "CREATE-SPECIAL-USE",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "WITHIN",
    "MULTIAPPEND",
    "BINARY",
    "SORT",
    "SORT=DISPLAY",
    "ESORT",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "SEARCHRES",
    "STATUS=SIZE",
    "UTF8=ACCEPT",
)
# What ENABLE (RFC 5161) can turn on, and what each implies.
ENABLEABLE = {
    "CONDSTORE": ("CONDSTORE",),
    "QRESYNC": ("QRESYNC", "CONDSTORE"),
    "UTF8=ACCEPT": ("UTF8=ACCEPT",),
    "IMAP4REV2": ("IMAP4rev2",),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
READ_TRACE_DELAY = 1.0  # seconds a read trace may wait to be aggregated
READ_TRACE_MAX = 10_000


def _canonical_folder(name: str) -> str:
    head, sep, rest = name.partition("/")
    return "INBOX" + sep + rest if head.upper() == "INBOX" else name


class Channel(Protocol):
    """What a session needs from its connection."""

    tls: bool
    peer: str

    @property
    def tls_info(self) -> TLSInfo: ...

    async def write(self, data: bytes) -> None: ...

    async def write_pieces(self, pieces: list[Piece]) -> None: ...

    async def read_line(self) -> bytes | None: ...

    async def start_tls(self) -> None: ...


Handler = Callable[["Session", Command], Awaitable[str]]
# Command → (states it is valid in, handler): one table for every session.
_HANDLERS: dict[str, tuple[tuple[str, ...], Handler]] = {
    "CAPABILITY": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), cmd_capability),
    "NOOP": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), cmd_noop),
    "LOGOUT": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), cmd_logout),
    "ID": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), cmd_id),
    "STARTTLS": ((NOT_AUTHENTICATED,), cmd_starttls),
    "LOGIN": ((NOT_AUTHENTICATED,), cmd_login),
    "AUTHENTICATE": ((NOT_AUTHENTICATED,), cmd_authenticate),
    "ENABLE": ((AUTHENTICATED,), cmd_enable),
    "SELECT": ((AUTHENTICATED, SELECTED), cmd_select),
    "EXAMINE": ((AUTHENTICATED, SELECTED), cmd_select),
    "CREATE": ((AUTHENTICATED, SELECTED), cmd_create),
    "DELETE": ((AUTHENTICATED, SELECTED), cmd_delete),
    "RENAME": ((AUTHENTICATED, SELECTED), cmd_rename),
    "SUBSCRIBE": ((AUTHENTICATED, SELECTED), cmd_subscribe),
    "UNSUBSCRIBE": ((AUTHENTICATED, SELECTED), cmd_subscribe),
    "LIST": ((AUTHENTICATED, SELECTED), cmd_list),
    "LSUB": ((AUTHENTICATED, SELECTED), cmd_list),
    "NAMESPACE": ((AUTHENTICATED, SELECTED), cmd_namespace),
    "STATUS": ((AUTHENTICATED, SELECTED), cmd_status),
    "APPEND": ((AUTHENTICATED, SELECTED), cmd_append),
    "IDLE": ((AUTHENTICATED, SELECTED), cmd_idle),
    "CHECK": ((SELECTED,), cmd_noop),
    "CLOSE": ((SELECTED,), cmd_close),
    "UNSELECT": ((SELECTED,), cmd_close),
    "EXPUNGE": ((SELECTED,), cmd_expunge),
    "SEARCH": ((SELECTED,), cmd_search),
    "SORT": ((SELECTED,), cmd_sort),
    "THREAD": ((SELECTED,), cmd_thread),
    "FETCH": ((SELECTED,), cmd_fetch),
    "STORE": ((SELECTED,), cmd_store),
    "COPY": ((SELECTED,), cmd_copy),
    "MOVE": ((SELECTED,), cmd_copy),
    "GETACL": ((AUTHENTICATED, SELECTED), cmd_getacl),
    "SETACL": ((AUTHENTICATED, SELECTED), cmd_setacl),
    "DELETEACL": ((AUTHENTICATED, SELECTED), cmd_setacl),
    "LISTRIGHTS": ((AUTHENTICATED, SELECTED), cmd_listrights),
    "MYRIGHTS": ((AUTHENTICATED, SELECTED), cmd_myrights),
    "GETQUOTA": ((AUTHENTICATED, SELECTED), cmd_getquota),
    "GETQUOTAROOT": ((AUTHENTICATED, SELECTED), cmd_getquotaroot),
    "SETQUOTA": ((AUTHENTICATED, SELECTED), cmd_setquota),
}


class Session:
    def __init__(
        self,
        channel: Channel,
        store: MessageStore,
        gate: Gate,
        *,
        starttls_available: bool,
        hostname: str = "localhost",
        access: Access | None = None,
    ) -> None:
        self.channel = channel
        self.store = store
        self.gate = gate
        self.access: Access = access or OwnerOnly()
        self.starttls_available = starttls_available
        self.hostname = hostname
        self.state = NOT_AUTHENTICATED
        self.bad_answers = 0  # commands answered BAD (the connection bounds them before login)
        self.principal: Principal | None = None
        self.box: SelectedMailbox | None = None
        self.box_bal = ""  # the BAL of the selected mailbox (own or shared)
        self.box_rights: Rights = NONE
        self.opened: set[str] = set()  # BALs whose storage exists
        # RFC 6855: once the client ENABLEd UTF8=ACCEPT, mailbox names travel as UTF-8 (quoted
        # strings), not modified UTF-7, and message headers are sent as they are.
        self.utf8 = False
        self.subscription: Subscription | None = None
        self.enabled: frozenset[str] = frozenset()  # capabilities turned on by ENABLE (RFC 5161)
        self.announce_modseq = False
        # (empty until used, as most sessions leave them: see mssante.imap.sparse)
        self._traces: AbstractSet[asyncio.Future[None]] = sparse.EMPTY
        self._reads: AbstractSet[int] = sparse.EMPTY
        self._reads_folder: tuple[str, str] | None = None  # (BAL, folder)
        self._read_commands = 0
        self._reads_timer: asyncio.TimerHandle | None = None

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return f"imap:{self.channel.peer}"

    @property
    def actor(self) -> str:
        assert self.principal is not None
        return self.principal.actor

    def enable(self, capability: str) -> list[str]:
        """Turn an extension on for the rest of the session; the names newly enabled."""
        new = [c for c in ENABLEABLE.get(capability, ()) if c not in self.enabled]
        self.enabled |= frozenset(new)
        if "UTF8=ACCEPT" in new or "IMAP4rev2" in new:
            self.utf8 = True  # RFC 9051 §5.1: an IMAP4rev2 session names mailboxes in UTF-8
        if self.box is not None and "CONDSTORE" in new:
            self.announce_modseq = True  # RFC 7162 §3.1.2.1: said once the command is done
        if self.box is not None:
            self.box.condstore = "CONDSTORE" in self.enabled
            self.box.qresync = "QRESYNC" in self.enabled
        return new

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    @property
    def recent_flag(self) -> bool:
        """IMAP4rev1 reports ``\\Recent``; a session that enabled IMAP4rev2 does not (RFC 9051)."""
        return not self.rev2

    @property
    def rev2(self) -> bool:
        """The client sent ENABLE IMAP4rev2: RFC 9051 rules from then on."""
        return "IMAP4rev2" in self.enabled

    @property
    def own_bal(self) -> str | None:
        assert self.principal is not None
        return self.principal.bal.lower() if self.principal.bal else None

    # -- rights (asked of the Access, decided by delegation) -----------------------------------
    def _split(self, name: str) -> tuple[str | None, str]:
        """(BAL key, folder) a mailbox name designates: ``Partagé/<bal>/<folder>`` in the shared
        namespace, any other name in the session's own BAL."""
        head, sep, rest = name.partition("/")
        if head == SHARED_PREFIX:
            bal, _, folder = rest.partition("/")
            return (bal.lower() or None) if sep else None, _canonical_folder(folder)
        return self.own_bal, name

    def shown(self, bal: str, folder: str) -> str:
        """The name a folder of ``bal`` has for this session."""
        return folder if bal == self.own_bal else f"{SHARED_PREFIX}/{bal}/{folder}"

    async def rights(self, bal: str) -> Rights:
        assert self.principal is not None
        return await self.access.rights(self.principal, bal)

    async def open(self, name: str, *needed: Right) -> tuple[str, str, Rights]:
        """The BAL and folder of ``name`` with the rights held there; a BAL the identity may
        not see is answered exactly as a missing mailbox (nothing leaks its existence)."""
        bal, folder = self._split(name)
        rights = await self.rights(bal) if bal and folder else NONE
        if bal is None or not rights.visible:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT")
        missing = "".join(r.value for r in needed if r not in rights)
        if missing:
            raise No(f"Permission denied on {name} (right {missing} needed)", "NOPERM")
        if bal not in self.opened:
            await self.store.ensure_account(bal)
            self.opened.add(bal)
        return bal, folder, rights

    async def _recheck(self) -> None:
        """Before each command on a selected mailbox: rights are read afresh (revocation and
        expiry count at once); without ``r`` any more the mailbox is closed."""
        rights = await self.rights(self.box_bal)
        if Right.READ not in rights:
            bal = self.box_bal
            self.deselect()
            await self.untagged("OK [CLOSED] Access to this mailbox was revoked")
            raise No(f"Access to {bal} was revoked: mailbox closed", "NOPERM")
        self.box_rights = rights

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if self.starttls_available and not self.channel.tls:
                caps.append("STARTTLS")
            if not self.channel.tls:
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={m}" for m in self.gate.mechanisms(tls=self.channel.tls_info)]
        return caps

    async def untagged(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        await self.channel.write(b"* " + data + b"\r\n")

    async def greet(self) -> None:
        caps = " ".join(self.capabilities())
        await self.untagged(f"OK [CAPABILITY {caps}] {self.hostname} mssante IMAP4rev1 ready")

    async def handle(self, command: Command) -> None:
        """Run one command and write its tagged response (and any pending updates)."""
        allowed, handler = _HANDLERS[command.name]
        if self.state not in allowed:
            self.bad_answers += 1
            await self._tagged(command, "BAD", f"{command.name} is not valid in the {self.state} state")
            return
        try:
            if self.state == SELECTED and command.name not in ("LOGOUT", "CAPABILITY"):
                await self._recheck()
            text = await handler(self, command)
        except Silent:
            return
        except Bad as exc:
            self.bad_answers += 1
            await self._tagged(command, "BAD", str(exc))
            return
        except (No, StoreError) as exc:
            await self._report(command)
            await self._tagged(command, "NO", str(exc) or "Failed", exc.code)
            return
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("IMAP %s failed for %s", command.name, self.channel.peer)
            await self._tagged(command, "NO", "Internal error, the incident is logged", "SERVERBUG")
            return
        if self.state != LOGOUT:
            await self._report(command)
        await self._tagged(command, "OK", text)

    async def _tagged(self, command: Command, status: str, text: str, code: str | None = None) -> None:
        metrics.imap_answered(command.name, status)
        # Texts may quote client input (a mailbox name sent as a literal can hold CR LF):
        # control characters never reach the wire, so a response cannot be forged.
        text = _CONTROL.sub("?", text)
        if not self.utf8:
            # Mailbox names quoted in a text go as they go everywhere else: modified UTF-7.
            text = mutf7.encode(text)
        code_text = f"[{code}] " if code else ""
        await self.channel.write(f"{command.tag} {status} {code_text}{text}\r\n".encode())

    async def _report(self, command: Command) -> None:
        """Send what others changed, as far as this command allows."""
        if self.box is None or self.state != SELECTED:
            return
        allow_expunge = command.uid or command.name not in ("FETCH", "STORE", "SEARCH")
        await self.sync(allow_expunge=allow_expunge, with_uid=command.uid)
        if self.announce_modseq:
            self.announce_modseq = False
            await self.untagged(
                f"OK [HIGHESTMODSEQ {max(self.box.modseq, self.box.folder.highestmodseq)}] Highest"
            )

    async def sync(
        self,
        *,
        allow_expunge: bool,
        durable: bool = False,
        with_uid: bool = False,
        heard: list[FolderChange] | None = None,
    ) -> None:
        box = self.box
        if box is None:
            return
        changes = list(heard or [])
        if self.subscription is not None:
            changes += self.subscription.drain()
        # Another node committed (cluster feed): what it did is in the durable feed.
        durable = durable or any(c.kind == REMOTE for c in changes)
        if durable:
            changes += await self.store.changes_since(box.folder.id, box.modseq, recent=True)
            changes.sort(key=lambda c: c.modseq)
        wanted = box.absorb(changes)
        if wanted:
            want = set(wanted)
            # Only the rows of the new messages: a busy 10,000-message mailbox is not reread.
            rows = await self.store.messages(box.folder.id, since_uid=min(want) - 1)
            box.add_rows((r for r in rows if r.uid in want), recent_from=await self._claim_recent(rows, want))
        for line in box.updates(allow_expunge=allow_expunge, with_uid=with_uid):
            await self.channel.write(line + b"\r\n")

    async def _claim_recent(self, rows: list[Any], want: set[int]) -> int | None:
        """The first of the new messages that is \\Recent to this session: a read-write
        session takes them from the store (the first session told of a message gets it);
        a read-only one shows them as recent without taking them."""
        box = self.box
        if box is None or not self.recent_flag or not want:
            return None
        if box.readonly:
            return min(want)
        upto = max(r.uid for r in rows if r.uid in want) + 1 if any(r.uid in want for r in rows) else None
        if upto is None:
            return None
        return await self.store.claim_recent(box.folder.id, upto)

    def trace(self, event: AuditEvent) -> None:
        """Record a read in the audit trail without holding the answer for the commit.

        The read has happened whether or not the client waits; the record joins the writer's
        next group commit, and :meth:`finish` waits for every pending record.
        """
        task = asyncio.ensure_future(self.store.record(event))
        self._traces = sparse.added(self._traces, task)
        task.add_done_callback(self._traced)

    def _traced(self, task: asyncio.Future[None]) -> None:
        self._traces = sparse.removed(self._traces, task)
        if not task.cancelled() and task.exception() is not None:
            log.error("IMAP audit record failed: %s", task.exception())

    def note_read(self, folder: tuple[str, str], uids: list[int]) -> None:
        """Remember that message content was read; traced by :meth:`_flush_reads`.

        Reads are aggregated per folder over at most READ_TRACE_DELAY seconds (or
        READ_TRACE_MAX messages) into one audit record listing the UIDs: a client fetching
        bodies one by one costs one record a second, not one per command.
        """
        if self._reads_folder != folder:
            self._flush_reads()
            self._reads_folder = folder
        if not isinstance(self._reads, set):
            self._reads = set()
        self._reads.update(uids)
        self._read_commands += 1
        if len(self._reads) >= READ_TRACE_MAX:
            self._flush_reads()
        elif self._reads_timer is None:
            self._reads_timer = asyncio.get_running_loop().call_later(READ_TRACE_DELAY, self._flush_reads)

    def _flush_reads(self) -> None:
        if self._reads_timer is not None:
            self._reads_timer.cancel()
            self._reads_timer = None
        if self._reads and self._reads_folder is not None:
            uids = sorted(self._reads)
            bal, folder = self._reads_folder
            detail: dict[str, Any] = {
                "count": len(uids),
                "uids": compress(uids)[:1000],
                "commands": self._read_commands,
            }
            if bal != self.own_bal or not self.box_rights.owner:
                detail["delegated"] = True
            self.trace(
                AuditEvent(
                    actor=self.actor,
                    action="message.read",
                    bal=bal,
                    object=folder,
                    source=self.source,
                    detail=detail,
                )
            )
        self._reads = sparse.EMPTY
        self._read_commands = 0

    async def finish(self) -> None:
        """End of connection: trace pending reads, stop listening, wait for audit records."""
        if self.principal is not None:
            self._flush_reads()
        self.close()
        if self._traces:
            # Shielded: a connection torn down mid-way must not cancel a record in the writer.
            await asyncio.shield(asyncio.gather(*self._traces, return_exceptions=True))

    def wire_name(self, name: str) -> bytes:
        """A mailbox name in a response: modified UTF-7, or UTF-8 once UTF8=ACCEPT is enabled."""
        return string(name, utf8=True) if self.utf8 else astring(mutf7.encode(name))

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    def deselect(self) -> None:
        self._flush_reads()
        self.close()
        self.box = None
        self.box_rights = NONE
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    # -- selected -------------------------------------------------------------------------------
    def selected(self) -> SelectedMailbox:
        assert self.box is not None
        return self.box

    def resolve(self, command: Command, sequence: SequenceSet) -> list[tuple[int, int]]:
        try:
            return self.selected().resolve(sequence, uid=command.uid)
        except ValueError as exc:
            raise Bad(str(exc)) from None

    def spans(self, command: Command, sequence: SequenceSet) -> list[tuple[int, int]]:
        """As :meth:`resolve`, as ranges of positions (see ``SelectedMailbox.spans``)."""
        try:
            return self.selected().spans(sequence, uid=command.uid)
        except ValueError as exc:
            raise Bad(str(exc)) from None
