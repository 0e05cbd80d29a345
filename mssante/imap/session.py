"""The IMAP session: states (RFC 3501 §3) and the commands, on top of the message store.

One :class:`Session` per connection. It receives parsed commands, checks that the command is
valid in the current state (not authenticated → authenticated → selected → logout), calls
the store, and writes responses through its :class:`Channel`. Who may open which BAL is not
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
from datetime import UTC, datetime
from typing import Any, Protocol

from delegation.rights import Right
from mssante import __version__ as _version
from mssante.audit import AuditEvent
from mssante.imap import listing, mutf7, search
from mssante.imap.access import NONE, SHARED_PREFIX, Access, AclRefused, OwnerOnly, Rights
from mssante.imap.commands import (
    AclArgs,
    Append,
    Authenticate,
    Command,
    CopyMove,
    Create,
    Enable,
    Expunge,
    Fetch,
    FetchItem,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    Rename,
    Search,
    SequenceSet,
    Status,
    Store,
)
from mssante.imap.fetch import (
    Piece,
    has_content,
    message_response,
    meta_part,
    metadata_response,
    missing_structures,
    needs_meta,
)
from mssante.imap.gate import Gate, Principal, Refusal, plain_initial
from mssante.imap.mailbox import SelectedMailbox
from mssante.imap.render import astring, flag_list, string
from mssante.store.feed import FolderChange, Subscription
from mssante.store.store import FolderInfo, FolderNotFound, MessageStore, StoreError
from mssante.tls import TLSInfo

log = logging.getLogger(__name__)

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = (
    "not authenticated",
    "authenticated",
    "selected",
    "logout",
)

BASE_CAPABILITIES = (
    "IMAP4rev1",
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
)
SPECIAL_USES = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
META_BATCH = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
READ_TRACE_DELAY = 1.0  # seconds a read trace may wait to be aggregated
READ_TRACE_MAX = 10_000
# RFC 4314: which right a flag change needs.
_FLAG_RIGHT = {"\\Seen": Right.KEEP_SEEN, "\\Deleted": Right.DELETE_MESSAGES}
_WRITE_RIGHTS = frozenset(
    {Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES, Right.EXPUNGE, Right.INSERT}
)
_LEGACY_RIGHTS = {"c": "k", "d": "xte"}  # RFC 4314 §2.1.1: obsolete RFC 2086 letters


def _flag_right(flag: str) -> Right:
    return _FLAG_RIGHT.get(flag, Right.WRITE_FLAGS)


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


class Bad(Exception):
    """A command that cannot run as asked: answered ``BAD``."""


class No(Exception):
    """A command that ran and failed: answered ``NO [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.code = code


def _store_no(exc: StoreError, *, trycreate: bool = False) -> No:
    code = exc.code
    if trycreate and isinstance(exc, FolderNotFound):
        code = "TRYCREATE"
    return No(str(exc) or "Operation failed", code)


def compress(numbers: list[int]) -> str:
    """``[1, 2, 3, 5]`` → ``1:3,5`` (the UID sets of COPYUID)."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}:{prev}")
            start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


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
        self.principal: Principal | None = None
        self.box: SelectedMailbox | None = None
        self.box_bal = ""  # the BAL of the selected mailbox (own or shared)
        self.box_rights: Rights = NONE
        self._opened: set[str] = set()  # BALs whose storage exists
        self.subscription: Subscription | None = None
        self._traces: set[asyncio.Future[None]] = set()
        self._reads: set[int] = set()
        self._reads_folder: tuple[str, str] | None = None  # (BAL, folder)
        self._read_commands = 0
        self._reads_timer: asyncio.TimerHandle | None = None
        self._handlers: dict[str, tuple[tuple[str, ...], Callable[[Command], Awaitable[str]]]] = {
            "CAPABILITY": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), self._capability),
            "NOOP": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), self._noop),
            "LOGOUT": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), self._logout),
            "ID": ((NOT_AUTHENTICATED, AUTHENTICATED, SELECTED), self._id),
            "STARTTLS": ((NOT_AUTHENTICATED,), self._starttls),
            "LOGIN": ((NOT_AUTHENTICATED,), self._login),
            "AUTHENTICATE": ((NOT_AUTHENTICATED,), self._authenticate),
            "ENABLE": ((AUTHENTICATED,), self._enable),
            "SELECT": ((AUTHENTICATED, SELECTED), self._select),
            "EXAMINE": ((AUTHENTICATED, SELECTED), self._select),
            "CREATE": ((AUTHENTICATED, SELECTED), self._create),
            "DELETE": ((AUTHENTICATED, SELECTED), self._delete),
            "RENAME": ((AUTHENTICATED, SELECTED), self._rename),
            "SUBSCRIBE": ((AUTHENTICATED, SELECTED), self._subscribe),
            "UNSUBSCRIBE": ((AUTHENTICATED, SELECTED), self._subscribe),
            "LIST": ((AUTHENTICATED, SELECTED), self._list),
            "LSUB": ((AUTHENTICATED, SELECTED), self._list),
            "NAMESPACE": ((AUTHENTICATED, SELECTED), self._namespace),
            "STATUS": ((AUTHENTICATED, SELECTED), self._status),
            "APPEND": ((AUTHENTICATED, SELECTED), self._append),
            "IDLE": ((AUTHENTICATED, SELECTED), self._idle),
            "CHECK": ((SELECTED,), self._noop),
            "CLOSE": ((SELECTED,), self._close),
            "UNSELECT": ((SELECTED,), self._close),
            "EXPUNGE": ((SELECTED,), self._expunge),
            "SEARCH": ((SELECTED,), self._search),
            "FETCH": ((SELECTED,), self._fetch),
            "STORE": ((SELECTED,), self._store),
            "COPY": ((SELECTED,), self._copy),
            "MOVE": ((SELECTED,), self._copy),
            "GETACL": ((AUTHENTICATED, SELECTED), self._getacl),
            "SETACL": ((AUTHENTICATED, SELECTED), self._setacl),
            "DELETEACL": ((AUTHENTICATED, SELECTED), self._setacl),
            "LISTRIGHTS": ((AUTHENTICATED, SELECTED), self._listrights),
            "MYRIGHTS": ((AUTHENTICATED, SELECTED), self._myrights),
        }

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return f"imap:{self.channel.peer}"

    @property
    def actor(self) -> str:
        assert self.principal is not None
        return self.principal.actor

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

    def _shown(self, bal: str, folder: str) -> str:
        """The name a folder of ``bal`` has for this session."""
        return folder if bal == self.own_bal else f"{SHARED_PREFIX}/{bal}/{folder}"

    async def _rights(self, bal: str) -> Rights:
        assert self.principal is not None
        return await self.access.rights(self.principal, bal)

    async def _open(self, name: str, *needed: Right) -> tuple[str, str, Rights]:
        """The BAL and folder of ``name`` with the rights held there; a BAL the identity may
        not see is answered exactly as a missing mailbox (nothing leaks its existence)."""
        bal, folder = self._split(name)
        rights = await self._rights(bal) if bal and folder else NONE
        if bal is None or not rights.visible:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT")
        missing = "".join(r.value for r in needed if r not in rights)
        if missing:
            raise No(f"Permission denied on {name} (right {missing} needed)", "NOPERM")
        if bal not in self._opened:
            await self.store.ensure_account(bal)
            self._opened.add(bal)
        return bal, folder, rights

    async def _recheck(self) -> None:
        """Before each command on a selected mailbox: rights are read afresh (revocation and
        expiry count at once); without ``r`` any more the mailbox is closed."""
        rights = await self._rights(self.box_bal)
        if Right.READ not in rights:
            bal = self.box_bal
            self._deselect()
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
        allowed, handler = self._handlers[command.name]
        if self.state not in allowed:
            await self._tagged(command, "BAD", f"{command.name} is not valid in the {self.state} state")
            return
        try:
            if self.state == SELECTED and command.name not in ("LOGOUT", "CAPABILITY"):
                await self._recheck()
            text = await handler(command)
        except _Silent:
            return
        except Bad as exc:
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
        # Texts may quote client input (a mailbox name sent as a literal can hold CR LF):
        # control characters never reach the wire, so a response cannot be forged.
        text = _CONTROL.sub("?", text)
        code_text = f"[{code}] " if code else ""
        await self.channel.write(f"{command.tag} {status} {code_text}{text}\r\n".encode())

    async def _report(self, command: Command) -> None:
        """Send what others changed, as far as this command allows."""
        if self.box is None or self.state != SELECTED:
            return
        allow_expunge = command.uid or command.name not in ("FETCH", "STORE", "SEARCH")
        await self._sync(allow_expunge=allow_expunge, with_uid=command.uid)

    async def _sync(
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
        if durable:
            changes += await self.store.changes_since(box.folder.id, box.modseq)
            changes.sort(key=lambda c: c.modseq)
        wanted = box.absorb(changes)
        if wanted:
            want = set(wanted)
            # Only the rows of the new messages: a busy 10,000-message mailbox is not reread.
            rows = await self.store.messages(box.folder.id, since_uid=min(want) - 1)
            box.add_rows(r for r in rows if r.uid in want)
        for line in box.updates(allow_expunge=allow_expunge, with_uid=with_uid):
            await self.channel.write(line + b"\r\n")

    def _trace(self, event: AuditEvent) -> None:
        """Record a read in the audit trail without holding the answer for the commit.

        The read has happened whether or not the client waits; the record joins the writer's
        next group commit, and :meth:`finish` waits for every pending record.
        """
        task = asyncio.ensure_future(self.store.record(event))
        self._traces.add(task)
        task.add_done_callback(self._traced)

    def _traced(self, task: asyncio.Future[None]) -> None:
        self._traces.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("IMAP audit record failed: %s", task.exception())

    def _note_read(self, folder: tuple[str, str], uids: list[int]) -> None:
        """Remember that message content was read; traced by :meth:`_flush_reads`.

        Reads are aggregated per folder over at most READ_TRACE_DELAY seconds (or
        READ_TRACE_MAX messages) into one audit record listing the UIDs: a client fetching
        bodies one by one costs one record a second, not one per command.
        """
        if self._reads_folder != folder:
            self._flush_reads()
            self._reads_folder = folder
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
            self._trace(
                AuditEvent(
                    actor=self.actor,
                    action="message.read",
                    bal=bal,
                    object=folder,
                    source=self.source,
                    detail=detail,
                )
            )
        self._reads.clear()
        self._read_commands = 0

    async def finish(self) -> None:
        """End of connection: trace pending reads, stop listening, wait for audit records."""
        if self.principal is not None:
            self._flush_reads()
        self.close()
        if self._traces:
            # Shielded: a connection torn down mid-way must not cancel a record in the writer.
            await asyncio.shield(asyncio.gather(*self._traces, return_exceptions=True))

    def _wire_name(self, name: str) -> bytes:
        return astring(mutf7.encode(name))

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None

    # -- any state ----------------------------------------------------------------------------
    async def _capability(self, command: Command) -> str:
        await self.untagged("CAPABILITY " + " ".join(self.capabilities()))
        return "CAPABILITY completed"

    async def _noop(self, command: Command) -> str:
        if self.box is not None:
            await self._sync(allow_expunge=True, durable=True)
        return f"{command.name} completed"

    async def _logout(self, command: Command) -> str:
        await self.untagged("BYE Logging out")
        self.close()
        self.state = LOGOUT
        return "LOGOUT completed"

    async def _id(self, command: Command) -> str:
        assert isinstance(command.args, Id)
        await self.untagged(b'ID ("name" "mssante" "version" ' + string(_version) + b")")
        return "ID completed"

    # -- not authenticated ----------------------------------------------------------------------
    async def _starttls(self, command: Command) -> str:
        if self.channel.tls or not self.starttls_available:
            raise Bad("TLS is not available here" if not self.channel.tls else "TLS is already active")
        await self.channel.write(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
        await self.channel.start_tls()
        raise _Silent()

    async def _login(self, command: Command) -> str:
        assert isinstance(command.args, Login)
        if not self.channel.tls:
            raise No("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
        initial = plain_initial(command.args.user, command.args.password)
        return await self._run_sasl("PLAIN", initial, interactive=False)

    async def _authenticate(self, command: Command) -> str:
        assert isinstance(command.args, Authenticate)
        if not self.channel.tls:
            raise No("Authentication is disabled before STARTTLS", "PRIVACYREQUIRED")
        mechanism = command.args.mechanism
        if mechanism not in self.gate.mechanisms(tls=self.channel.tls_info):
            raise No(f"Mechanism {mechanism} is not supported", "CANNOT")
        initial = command.args.initial.decode("ascii") if command.args.initial is not None else None
        return await self._run_sasl(mechanism, initial, interactive=True)

    async def _run_sasl(self, mechanism: str, initial: str | None, *, interactive: bool) -> str:
        async def respond(challenge: str) -> str:
            if not interactive:
                raise _Cancelled()
            await self.channel.write(b"+ " + challenge.encode("ascii") + b"\r\n")
            line = await self.channel.read_line()
            if line is None:
                raise _Cancelled()
            text = line.decode("ascii", "replace").strip()
            if text == "*":
                raise _Cancelled()
            return text

        try:
            result = await self.gate.authenticate(
                mechanism, initial, respond, tls=self.channel.tls_info, peer=self.channel.peer
            )
        except _Cancelled:
            raise Bad("Authentication cancelled") from None
        if isinstance(result, Refusal):
            if result.delay:
                await asyncio.sleep(result.delay)
            if result.status == "BAD":
                raise Bad(result.text)
            raise No(result.text, result.code)
        self.principal = result
        self.state = AUTHENTICATED
        if result.bal is not None:
            await self.store.ensure_account(result.bal)
            self._opened.add(result.bal.lower())
        return f"[CAPABILITY {' '.join(self.capabilities())}] Logged in"

    # -- authenticated --------------------------------------------------------------------------
    async def _enable(self, command: Command) -> str:
        assert isinstance(command.args, Enable)
        # No ENABLE-able extension is offered yet (UTF8=ACCEPT, CONDSTORE come later).
        await self.untagged("ENABLED")
        return "ENABLE completed"

    async def _namespace(self, command: Command) -> str:
        # Personal namespace (the session's own BAL), no other users', the shared BALs.
        shared = b'(("' + mutf7.encode(SHARED_PREFIX + "/").encode() + b'" "/"))'
        await self.untagged(b'NAMESPACE (("" "/")) NIL ' + shared)
        return "NAMESPACE completed"

    async def _select(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        if command.args.params:
            raise Bad("SELECT parameters are not supported")
        self._deselect()
        bal, name, rights = await self._open(command.args.mailbox, Right.READ)
        # RFC 4314 §4: without any right to change the mailbox it opens read-only.
        readonly = command.name == "EXAMINE" or not (rights.rights & _WRITE_RIGHTS)
        try:
            folder = await self.store.folder(bal, name)
        except FolderNotFound:
            raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
        subscription = self.store.hub.subscribe(folder.id)
        rows = await self.store.messages(folder.id)
        box = SelectedMailbox.from_rows(folder, rows, readonly=readonly)
        self.box, self.subscription, self.state = box, subscription, SELECTED
        self.box_bal, self.box_rights = bal, rights
        flags = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *box.keywords()]
        await self.untagged(b"FLAGS " + flag_list(flags))
        settable = [f for f in flags[:5] if _flag_right(f) in rights]
        if Right.WRITE_FLAGS in rights:
            settable.append("\\*")
        permanent = "()" if readonly else "(" + " ".join(settable) + ")"
        await self.untagged(f"OK [PERMANENTFLAGS {permanent}] Flags permitted")
        await self.untagged(f"{box.exists} EXISTS")
        await self.untagged("0 RECENT")
        unseen = box.first_unseen()
        if unseen is not None:
            await self.untagged(f"OK [UNSEEN {unseen}] First unseen")
        await self.untagged(f"OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
        await self.untagged(f"OK [UIDNEXT {folder.uidnext}] Predicted next UID")
        self._trace(
            AuditEvent(
                actor=self.actor,
                action="folder.examine" if readonly else "folder.select",
                bal=bal,
                object=folder.name,
                source=self.source,
                detail={"messages": box.exists, **({} if rights.owner else {"delegated": True})},
            )
        )
        return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {command.name} completed"

    def _deselect(self) -> None:
        self._flush_reads()
        self.close()
        self.box = None
        self.box_rights = NONE
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    async def _create(self, command: Command) -> str:
        assert isinstance(command.args, Create)
        uses = command.args.special_use
        if len(uses) > 1 or any(u not in SPECIAL_USES for u in uses):
            raise No("Unsupported special-use attribute", "USEATTR")
        bal, name, _rights = await self._open(command.args.mailbox.rstrip("/"), Right.CREATE)
        if not name or "//" in name or name.partition("/")[0] == SHARED_PREFIX:
            raise No("Invalid mailbox name", "CANNOT")
        await self.store.create_folder(bal, name, uses[0] if uses else None)
        # The store audits DELETE and RENAME itself; CREATE is traced here.
        self._trace(
            AuditEvent(
                actor=self.actor,
                action="folder.create",
                bal=bal,
                object=name,
                source=self.source,
                detail={"special_use": uses[0]} if uses else None,
            )
        )
        return "CREATE completed"

    async def _delete(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        bal, name, _rights = await self._open(command.args.mailbox, Right.DELETE_FOLDER)
        if self.box is not None and self.box_bal == bal and self.box.folder.name == name:
            self._deselect()
        try:
            await self.store.delete_folder(bal, name, actor=self.actor, source=self.source)
        except FolderNotFound:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT") from None
        return "DELETE completed"

    async def _rename(self, command: Command) -> str:
        assert isinstance(command.args, Rename)
        bal, old, _rights = await self._open(command.args.old, Right.DELETE_FOLDER)
        new_bal, new, _rights = await self._open(command.args.new, Right.CREATE)
        if new_bal != bal:
            raise No("A mailbox cannot be renamed into another BAL", "CANNOT")
        try:
            await self.store.rename_folder(bal, old, new, actor=self.actor, source=self.source)
        except FolderNotFound:
            raise No(f"Mailbox {command.args.old} does not exist", "NONEXISTENT") from None
        return "RENAME completed"

    async def _subscribe(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        bal, name, _rights = await self._open(command.args.mailbox)
        # Shared folders count as subscribed: their flag is their holder's, not ours.
        if bal == self.own_bal:
            await self.store.set_subscribed(bal, name, command.name == "SUBSCRIBE")
        return f"{command.name} completed"

    async def _list(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, ListArgs)
        if args.patterns == ("",) and not args.selection:
            await self.untagged(f'{command.name} (\\Noselect) "/" ""')
            return f"{command.name} completed"
        # (name, folder or None for a \Noselect level of the shared namespace, subscribed)
        visible: list[tuple[str, FolderInfo | None, bool]] = []
        own = self.own_bal
        if own is not None and (await self._rights(own)).visible:
            visible += [(f.name, f, f.subscribed) for f in await self.store.folders(own)]
        assert self.principal is not None
        shared = [b for b in await self.access.shared(self.principal) if b != own]
        if shared:
            visible.append((SHARED_PREFIX, None, True))
        for bal in shared:
            if bal not in self._opened:
                await self.store.ensure_account(bal)
                self._opened.add(bal)
            visible.append((f"{SHARED_PREFIX}/{bal}", None, True))
            visible += [(self._shown(bal, f.name), f, True) for f in await self.store.folders(bal)]
        names = [name for name, _, _ in visible]
        subscribed_only = command.name == "LSUB" or "SUBSCRIBED" in args.selection
        special_only = "SPECIAL-USE" in args.selection
        show_subscribed = "SUBSCRIBED" in args.selection or "SUBSCRIBED" in args.returns
        for name, folder, subscribed in sorted(visible, key=lambda v: (v[0] != "INBOX", v[0])):
            if not any(listing.matches(name, args.reference, p) for p in args.patterns):
                continue
            if subscribed_only and not subscribed:
                continue
            # Special uses are the session's own: a client must not file its Sent into a shared BAL.
            in_shared = name.startswith(SHARED_PREFIX + "/")
            use = folder.special_use if folder is not None and not in_shared else None
            if special_only and not use:
                continue
            attributes = ["\\HasChildren" if listing.has_children(name, names) else "\\HasNoChildren"]
            if folder is None:
                attributes.insert(0, "\\Noselect")
            if show_subscribed and subscribed:
                attributes.append("\\Subscribed")
            if use and command.name == "LIST":
                attributes.append(use)
            await self.untagged(
                f'{command.name} ({" ".join(attributes)}) "/" '.encode() + self._wire_name(name)
            )
        return f"{command.name} completed"

    async def _status(self, command: Command) -> str:
        assert isinstance(command.args, Status)
        bal, name, _rights = await self._open(command.args.mailbox, Right.READ)
        try:
            status = await self.store.status(bal, name)
        except FolderNotFound:
            raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
        values = {
            "MESSAGES": status.messages,
            "RECENT": 0,
            "UIDNEXT": status.folder.uidnext,
            "UIDVALIDITY": status.folder.uidvalidity,
            "UNSEEN": status.unseen,
            "SIZE": status.size,
            "HIGHESTMODSEQ": status.folder.highestmodseq,
        }
        items = " ".join(f"{item} {values[item]}" for item in command.args.items)
        shown = self._shown(bal, status.folder.name)
        await self.untagged(b"STATUS " + self._wire_name(shown) + f" ({items})".encode())
        return "STATUS completed"

    async def _append(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Append)
        bal, name, rights = await self._open(args.mailbox, Right.INSERT)
        try:
            result = await self.store.append(
                bal,
                name,
                args.message,
                # RFC 4314 §4: flags the identity may not set are dropped.
                flags=[f for f in args.flags if _flag_right(f) in rights],
                # In UTC: SQLite keeps no zone, so an offset would be silently dropped.
                internaldate=args.internaldate.astimezone(UTC) if args.internaldate else None,
                actor=self.actor,
                source=self.source,
            )
        except StoreError as exc:
            raise _store_no(exc, trycreate=True) from None
        if self.box is not None and self.box_bal == bal and self.box.folder.name == name:
            await self._sync(allow_expunge=False, durable=True)
        return f"[APPENDUID {result.uidvalidity} {result.uid}] APPEND completed"

    async def _idle(self, command: Command) -> str:
        await self.channel.write(b"+ idling\r\n")
        if self.box is not None:
            await self._sync(allow_expunge=True, durable=True)
        reader = asyncio.ensure_future(self.channel.read_line())
        grants = self._watch_grants()
        try:
            while True:
                waiters: set[asyncio.Future[object]] = {reader, grants}  # type: ignore[arg-type]
                change_task = None
                if self.subscription is not None:
                    change_task = asyncio.ensure_future(self.subscription.get())
                    waiters.add(change_task)  # type: ignore[arg-type]
                timeout = None
                if self.box is not None and self.box_rights.until is not None:
                    timeout = max(0.0, (self.box_rights.until - datetime.now(UTC)).total_seconds())
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if self.box is not None and (grants in done or not done):
                    # Grants changed somewhere, or ours expired: still allowed to read?
                    rights = await self._rights(self.box_bal)
                    if Right.READ not in rights:
                        if change_task is not None:
                            change_task.cancel()
                        await self._revoked_bye()
                    self.box_rights = rights
                    if grants in done:
                        grants = self._watch_grants()  # from the generation just read
                elif grants in done:
                    grants = self._watch_grants()
                if change_task is not None:
                    if change_task in done:
                        await asyncio.sleep(0)  # let a burst of changes arrive together
                        await self._sync(allow_expunge=True, heard=[change_task.result()])
                    else:
                        change_task.cancel()
                if reader in done:
                    line = reader.result()
                    if line is None:
                        raise ConnectionError("client went away during IDLE")
                    if line.strip().upper() != b"DONE":
                        raise Bad("Expected DONE")
                    return "IDLE terminated"
        finally:
            if not reader.done():
                reader.cancel()
            grants.cancel()

    def _watch_grants(self) -> asyncio.Future[None]:
        """Resolves when grants may have changed — watched only for a BAL held by grant (a
        holder's rights do not depend on grants)."""
        if self.box is None or self.box_rights.owner:
            return asyncio.get_running_loop().create_future()  # never resolves
        return asyncio.ensure_future(self.access.changed(self.box_rights.generation))

    async def _revoked_bye(self) -> None:
        """Rights on the selected BAL are gone while idling: no further data, end the session."""
        bal = self.box_bal
        self._deselect()
        await self.untagged(f"BYE Access to {bal} was revoked")
        self.close()
        self.state = LOGOUT
        raise _Silent()

    # -- selected -------------------------------------------------------------------------------
    def _selected(self) -> SelectedMailbox:
        assert self.box is not None
        return self.box

    async def _close(self, command: Command) -> str:
        box = self._selected()
        if command.name == "CLOSE" and not box.readonly and Right.EXPUNGE in self.box_rights:
            await self.store.expunge(box.folder.id, actor=self.actor, bal=self.box_bal, source=self.source)
        self._deselect()
        return f"{command.name} completed"

    async def _expunge(self, command: Command) -> str:
        box = self._selected()
        assert isinstance(command.args, Expunge)
        if box.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        if Right.EXPUNGE not in self.box_rights:
            raise No("Permission denied: expunge (e) is not granted", "NOPERM")
        uids = None
        if command.args.uids is not None:
            uids = [uid for _, uid in box.resolve(command.args.uids, uid=True)]
        removed = await self.store.expunge(
            box.folder.id, uids, actor=self.actor, bal=self.box_bal, source=self.source
        )
        for n in box.remove(removed):
            await self.untagged(b"%d EXPUNGE" % n)
        return "EXPUNGE completed"

    def _resolve(self, command: Command, sequence: SequenceSet) -> list[tuple[int, int]]:
        try:
            return self._selected().resolve(sequence, uid=command.uid)
        except ValueError as exc:
            raise Bad(str(exc)) from None

    async def _fetch(self, command: Command) -> str:
        box = self._selected()
        args = command.args
        assert isinstance(args, Fetch)
        if args.modifiers:
            raise Bad("FETCH modifiers are not supported")
        targets = self._resolve(command, args.sequence)
        items = args.items
        if command.uid and not any(i.name == "UID" for i in items):
            items = (FetchItem("UID"), *items)
        sets_seen = (
            not box.readonly and Right.KEEP_SEEN in self.box_rights and any(i.sets_seen for i in items)
        )
        if sets_seen and not any(i.name == "FLAGS" for i in items):
            items = (*items, FetchItem("FLAGS"))
        live = [(n, uid) for n, uid in targets if not box.entries[uid].expunged]
        if sets_seen:
            unseen = [uid for _, uid in live if "\\Seen" not in box.entries[uid].flags]
            if unseen:
                changed = await self.store.store_flags(
                    box.folder.id,
                    unseen,
                    "add",
                    ["\\Seen"],
                    actor=self.actor,
                    bal=self.box_bal,
                    source=self.source,
                )
                for uid, flags, modseq in changed:
                    box.set_flags(uid, flags, modseq)
        with_meta = needs_meta(items)
        content = has_content(items)
        for i in range(0, len(live), META_BATCH):
            batch = live[i : i + META_BATCH]
            metas: dict[int, Any] = {}
            if with_meta:
                entries = [box.entries[uid] for _, uid in batch]
                wanted = [e.blob_id for e in entries] if content else missing_structures(entries, items)
                metas = await self.store.meta(wanted, meta_part(items)) if wanted else {}
            if not content:
                await self.channel.write(
                    b"".join(
                        metadata_response(n, box.entries[uid], items, metas.get(box.entries[uid].blob_id))
                        for n, uid in batch
                    )
                )
                continue
            for n, uid in batch:
                entry = box.entries[uid]
                pieces = await message_response(self.store, n, entry, items, metas.get(entry.blob_id))
                await self.channel.write_pieces(pieces)
        if content and live:
            self._note_read((self.box_bal, box.folder.name), [uid for _, uid in live])
        if len(live) < len(targets):
            raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
        return f"{'UID ' if command.uid else ''}FETCH completed"

    async def _store(self, command: Command) -> str:
        box = self._selected()
        args = command.args
        assert isinstance(args, Store)
        if box.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        needed = {_flag_right(f) for f in args.flags}
        if args.mode == "":  # replacing may remove any flag
            needed |= {Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES}
        missing = "".join(r.value for r in sorted(needed) if r not in self.box_rights)
        if missing:
            raise No(f"Permission denied: these flags need the right(s) {missing}", "NOPERM")
        targets = [
            (n, uid) for n, uid in self._resolve(command, args.sequence) if not box.entries[uid].expunged
        ]
        mode = {"+": "add", "-": "remove", "": "replace"}[args.mode]
        # What the client expects; .SILENT still reports flags that others changed meanwhile.
        given = set(args.flags)
        expected = {
            uid: (
                set(box.entries[uid].flags) | given
                if mode == "add"
                else set(box.entries[uid].flags) - given
                if mode == "remove"
                else given
            )
            for _, uid in targets
        }
        if targets:
            changed = await self.store.store_flags(
                box.folder.id,
                [uid for _, uid in targets],
                mode,  # type: ignore[arg-type]
                args.flags,
                actor=self.actor,
                bal=self.box_bal,
                source=self.source,
            )
            for uid, flags, modseq in changed:
                box.set_flags(uid, flags, modseq)
        for n, uid in targets:
            if not args.silent or set(box.entries[uid].flags) != expected[uid]:
                uid_part = b"UID %d " % uid if command.uid else b""
                await self.untagged(
                    b"%d FETCH (%sFLAGS %s)" % (n, uid_part, flag_list(box.entries[uid].flags))
                )
        return f"{'UID ' if command.uid else ''}STORE completed"

    async def _search(self, command: Command) -> str:
        box = self._selected()
        args = command.args
        assert isinstance(args, Search)
        if args.returns is not None:
            raise Bad("SEARCH RETURN (ESEARCH) is not supported")
        largest_uid = box.uids[-1] if box.uids else 0
        found: list[int] = []
        candidates = [(i + 1, box.entries[uid]) for i, uid in enumerate(box.uids)]
        for start in range(0, len(candidates), META_BATCH):
            batch = [(n, e) for n, e in candidates[start : start + META_BATCH] if not e.expunged]
            for n, entry in await search.select(self.store, args.key, batch, box.exists, largest_uid):
                found.append(entry.uid if command.uid else n)
        await self.untagged("SEARCH" + "".join(f" {n}" for n in found))
        return f"{'UID ' if command.uid else ''}SEARCH completed"

    async def _copy(self, command: Command) -> str:
        box = self._selected()
        args = command.args
        assert isinstance(args, CopyMove)
        move = command.name == "MOVE"
        if move and box.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        if move and not {Right.DELETE_MESSAGES, Right.EXPUNGE} <= self.box_rights.rights:
            raise No("Permission denied: moving out needs the rights t and e", "NOPERM")
        dst_bal, dst_name, _rights = await self._open(args.mailbox, Right.INSERT)
        targets = [
            (n, uid) for n, uid in self._resolve(command, args.sequence) if not box.entries[uid].expunged
        ]
        if not targets:
            return f"{command.name} completed (no messages)"
        try:
            result = await self.store.copy(
                box.folder.id,
                [uid for _, uid in targets],
                dst_bal,
                dst_name,
                actor=self.actor,
                move=move,
                source=self.source,
            )
        except StoreError as exc:
            raise _store_no(exc, trycreate=True) from None
        code = (
            f"COPYUID {result.uidvalidity} {compress([s for s, _ in result.pairs])} "
            f"{compress([d for _, d in result.pairs])}"
        )
        if not move:
            if dst_bal == self.box_bal and dst_name == box.folder.name:
                await self._sync(allow_expunge=False, durable=True)
            return f"[{code}] COPY completed"
        await self.untagged(f"OK [{code}] Moved")
        for n in box.remove([s for s, _ in result.pairs]):
            await self.untagged(b"%d EXPUNGE" % n)
        return "MOVE completed"

    # -- ACL (RFC 4314) ---------------------------------------------------------------------------
    # Rights are held per BAL: an ACL read or set on any folder of a BAL is the BAL's.
    async def _acl_target(self, name: str, *needed: Right) -> tuple[str, Rights]:
        bal, folder, rights = await self._open(name, *needed)
        try:
            await self.store.folder(bal, folder)
        except FolderNotFound:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT") from None
        return bal, rights

    async def _getacl(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, AclArgs) and self.principal is not None
        bal, _rights = await self._acl_target(args.mailbox, Right.ADMINISTER)
        entries = await self.access.acl(self.principal, bal)
        await self.untagged(
            b"ACL "
            + self._wire_name(args.mailbox)
            + b"".join(b" " + astring(who) + b" " + astring(letters) for who, letters in entries)
        )
        return "GETACL completed"

    async def _setacl(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, AclArgs) and args.identifier is not None and self.principal is not None
        bal, _rights = await self._acl_target(args.mailbox)
        try:
            if command.name == "SETACL":
                assert args.rights is not None
                letters = args.rights
                for old, new in _LEGACY_RIGHTS.items():
                    letters = letters.replace(old, new)
                await self.access.set_acl(self.principal, bal, args.identifier, letters, self.source)
            else:
                await self.access.delete_acl(self.principal, bal, args.identifier, self.source)
        except AclRefused as exc:
            raise No(str(exc), "NOPERM") from None
        return f"{command.name} completed"

    async def _listrights(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, AclArgs) and args.identifier is not None
        await self._acl_target(args.mailbox, Right.ADMINISTER)
        await self.untagged(
            b"LISTRIGHTS "
            + self._wire_name(args.mailbox)
            + b" "
            + astring(args.identifier)
            + b' "" l r s w i k x t e a'
        )
        return "LISTRIGHTS completed"

    async def _myrights(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, AclArgs)
        _bal, rights = await self._acl_target(args.mailbox)
        letters = "".join(c for c in "lrswikxtea" if Right(c) in rights)
        await self.untagged(b"MYRIGHTS " + self._wire_name(args.mailbox) + b" " + astring(letters))
        return "MYRIGHTS completed"


class _Cancelled(Exception):
    """The client cancelled a SASL exchange with ``*``."""


class _Silent(Exception):
    """The handler already wrote its tagged response (STARTTLS)."""
