"""The IMAP session: states (RFC 3501 §3) and the commands, on top of the message store.

One :class:`Session` per connection. It receives parsed commands, checks that the command is
valid in the current state (not authenticated → authenticated → selected → logout), calls
the store, and writes responses through its :class:`Channel`. Who may open which BAL is not
decided here: the :class:`~mssante.imap.gate.Gate` says which BAL the session acts for.

Pending changes made by other sessions are reported after every command, expunges only
after commands that allow them (see :mod:`mssante.imap.mailbox`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, Protocol

from mssante import __version__ as _version
from mssante.audit import AuditEvent
from mssante.imap import listing, mutf7
from mssante.imap.commands import (
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
    metadata_response,
    missing_structures,
    needs_meta,
)
from mssante.imap.gate import Gate, Principal, Refusal, plain_initial
from mssante.imap.mailbox import Entry, SelectedMailbox
from mssante.imap.render import astring, flag_list, string
from mssante.imap.search import Candidate, matches, needs
from mssante.store.feed import FolderChange, Subscription
from mssante.store.store import FolderNotFound, MessageStore, StoreError
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
)
SPECIAL_USES = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
META_BATCH = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BODY_READ_AHEAD = 16
READ_TRACE_DELAY = 1.0  # seconds a read trace may wait to be aggregated
READ_TRACE_MAX = 10_000
BODY_READ_AHEAD_BYTES = 8 * 1024 * 1024


def _read_ahead_groups(batch: list[tuple[int, Entry]]) -> list[list[tuple[int, Entry]]]:
    """Split messages into groups read together: at most BODY_READ_AHEAD messages and
    BODY_READ_AHEAD_BYTES bytes (a single larger message makes a group of its own)."""
    groups: list[list[tuple[int, Entry]]] = []
    current: list[tuple[int, Entry]] = []
    size = 0
    for item in batch:
        if current and (len(current) >= BODY_READ_AHEAD or size + item[1].size > BODY_READ_AHEAD_BYTES):
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item[1].size
    if current:
        groups.append(current)
    return groups


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
    ) -> None:
        self.channel = channel
        self.store = store
        self.gate = gate
        self.starttls_available = starttls_available
        self.hostname = hostname
        self.state = NOT_AUTHENTICATED
        self.principal: Principal | None = None
        self.box: SelectedMailbox | None = None
        self.subscription: Subscription | None = None
        self._traces: set[asyncio.Future[None]] = set()
        self._reads: set[int] = set()
        self._reads_folder: str | None = None
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
    def bal(self) -> str:
        assert self.principal is not None
        return self.principal.bal

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
            rows = await self.store.messages(box.folder.id)
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

    def _note_read(self, folder: str, uids: list[int]) -> None:
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
            self._trace(
                AuditEvent(
                    actor=self.actor,
                    action="message.read",
                    bal=self.bal,
                    object=self._reads_folder,
                    source=self.source,
                    detail={
                        "count": len(uids),
                        "uids": compress(uids)[:1000],
                        "commands": self._read_commands,
                    },
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
        await self.store.ensure_account(result.bal)
        return f"[CAPABILITY {' '.join(self.capabilities())}] Logged in"

    # -- authenticated --------------------------------------------------------------------------
    async def _enable(self, command: Command) -> str:
        assert isinstance(command.args, Enable)
        # No ENABLE-able extension is offered yet (UTF8=ACCEPT, CONDSTORE come later).
        await self.untagged("ENABLED")
        return "ENABLE completed"

    async def _namespace(self, command: Command) -> str:
        await self.untagged('NAMESPACE (("" "/")) NIL NIL')
        return "NAMESPACE completed"

    async def _select(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        if command.args.params:
            raise Bad("SELECT parameters are not supported")
        readonly = command.name == "EXAMINE"
        self._deselect()
        try:
            folder = await self.store.folder(self.bal, command.args.mailbox)
        except FolderNotFound:
            raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
        subscription = self.store.hub.subscribe(folder.id)
        rows = await self.store.messages(folder.id)
        box = SelectedMailbox.from_rows(folder, rows, readonly=readonly)
        self.box, self.subscription, self.state = box, subscription, SELECTED
        flags = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", *box.keywords()]
        await self.untagged(b"FLAGS " + flag_list(flags))
        permanent = "()" if readonly else "(" + " ".join([*flags[:5], "\\*"]) + ")"
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
                bal=self.bal,
                object=folder.name,
                source=self.source,
                detail={"messages": box.exists},
            )
        )
        return f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {command.name} completed"

    def _deselect(self) -> None:
        self._flush_reads()
        self.close()
        self.box = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    async def _create(self, command: Command) -> str:
        assert isinstance(command.args, Create)
        name = command.args.mailbox.rstrip("/")
        uses = command.args.special_use
        if len(uses) > 1 or any(u not in SPECIAL_USES for u in uses):
            raise No("Unsupported special-use attribute", "USEATTR")
        if not name or "//" in name:
            raise No("Invalid mailbox name", "CANNOT")
        await self.store.create_folder(self.bal, name, uses[0] if uses else None)
        # The store audits DELETE and RENAME itself; CREATE is traced here.
        self._trace(
            AuditEvent(
                actor=self.actor,
                action="folder.create",
                bal=self.bal,
                object=name,
                source=self.source,
                detail={"special_use": uses[0]} if uses else None,
            )
        )
        return "CREATE completed"

    async def _delete(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        name = command.args.mailbox
        if self.box is not None and self.box.folder.name == name:
            self._deselect()
        try:
            await self.store.delete_folder(self.bal, name, actor=self.actor, source=self.source)
        except FolderNotFound:
            raise No(f"Mailbox {name} does not exist", "NONEXISTENT") from None
        return "DELETE completed"

    async def _rename(self, command: Command) -> str:
        assert isinstance(command.args, Rename)
        try:
            await self.store.rename_folder(
                self.bal, command.args.old, command.args.new, actor=self.actor, source=self.source
            )
        except FolderNotFound:
            raise No(f"Mailbox {command.args.old} does not exist", "NONEXISTENT") from None
        return "RENAME completed"

    async def _subscribe(self, command: Command) -> str:
        assert isinstance(command.args, MailboxArg)
        await self.store.set_subscribed(self.bal, command.args.mailbox, command.name == "SUBSCRIBE")
        return f"{command.name} completed"

    async def _list(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, ListArgs)
        if args.patterns == ("",) and not args.selection:
            await self.untagged(f'{command.name} (\\Noselect) "/" ""')
            return f"{command.name} completed"
        folders = await self.store.folders(self.bal)
        names = [f.name for f in folders]
        subscribed_only = command.name == "LSUB" or "SUBSCRIBED" in args.selection
        special_only = "SPECIAL-USE" in args.selection
        show_subscribed = "SUBSCRIBED" in args.selection or "SUBSCRIBED" in args.returns
        for folder in sorted(folders, key=lambda f: (f.name != "INBOX", f.name)):
            if not any(listing.matches(folder.name, args.reference, p) for p in args.patterns):
                continue
            if subscribed_only and not folder.subscribed:
                continue
            if special_only and not folder.special_use:
                continue
            attributes = ["\\HasChildren" if listing.has_children(folder.name, names) else "\\HasNoChildren"]
            if show_subscribed and folder.subscribed:
                attributes.append("\\Subscribed")
            if folder.special_use and command.name == "LIST":
                attributes.append(folder.special_use)
            await self.untagged(
                f'{command.name} ({" ".join(attributes)}) "/" '.encode() + self._wire_name(folder.name)
            )
        return f"{command.name} completed"

    async def _status(self, command: Command) -> str:
        assert isinstance(command.args, Status)
        try:
            status = await self.store.status(self.bal, command.args.mailbox)
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
        await self.untagged(b"STATUS " + self._wire_name(status.folder.name) + f" ({items})".encode())
        return "STATUS completed"

    async def _append(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Append)
        try:
            result = await self.store.append(
                self.bal,
                args.mailbox,
                args.message,
                flags=args.flags,
                # In UTC: SQLite keeps no zone, so an offset would be silently dropped.
                internaldate=args.internaldate.astimezone(UTC) if args.internaldate else None,
                actor=self.actor,
                source=self.source,
            )
        except StoreError as exc:
            raise _store_no(exc, trycreate=True) from None
        if self.box is not None and self.box.folder.name == args.mailbox:
            await self._sync(allow_expunge=False, durable=True)
        return f"[APPENDUID {result.uidvalidity} {result.uid}] APPEND completed"

    async def _idle(self, command: Command) -> str:
        await self.channel.write(b"+ idling\r\n")
        if self.box is not None:
            await self._sync(allow_expunge=True, durable=True)
        reader = asyncio.ensure_future(self.channel.read_line())
        try:
            while True:
                waiters: set[asyncio.Future[object]] = {reader}  # type: ignore[arg-type]
                change_task = None
                if self.subscription is not None:
                    change_task = asyncio.ensure_future(self.subscription.get())
                    waiters.add(change_task)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
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

    # -- selected -------------------------------------------------------------------------------
    def _selected(self) -> SelectedMailbox:
        assert self.box is not None
        return self.box

    async def _close(self, command: Command) -> str:
        box = self._selected()
        if command.name == "CLOSE" and not box.readonly:
            await self.store.expunge(box.folder.id, actor=self.actor, bal=self.bal, source=self.source)
        self._deselect()
        return f"{command.name} completed"

    async def _expunge(self, command: Command) -> str:
        box = self._selected()
        assert isinstance(command.args, Expunge)
        if box.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        uids = None
        if command.args.uids is not None:
            uids = [uid for _, uid in box.resolve(command.args.uids, uid=True)]
        removed = await self.store.expunge(
            box.folder.id, uids, actor=self.actor, bal=self.bal, source=self.source
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
        sets_seen = not box.readonly and any(i.sets_seen for i in items)
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
                    bal=self.bal,
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
                metas = await self.store.meta(wanted) if wanted else {}
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
            self._note_read(box.folder.name, [uid for _, uid in live])
        if len(live) < len(targets):
            raise No("Some of the requested messages no longer exist", "EXPUNGEISSUED")
        return f"{'UID ' if command.uid else ''}FETCH completed"

    async def _store(self, command: Command) -> str:
        box = self._selected()
        args = command.args
        assert isinstance(args, Store)
        if box.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        targets = [
            (n, uid) for n, uid in self._resolve(command, args.sequence) if not box.entries[uid].expunged
        ]
        mode = {"+": "add", "-": "remove", "": "replace"}[args.mode]
        if targets:
            changed = await self.store.store_flags(
                box.folder.id,
                [uid for _, uid in targets],
                mode,  # type: ignore[arg-type]
                args.flags,
                actor=self.actor,
                bal=self.bal,
                source=self.source,
            )
            for uid, flags, modseq in changed:
                box.set_flags(uid, flags, modseq)
        if not args.silent:
            for n, uid in targets:
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
        want_meta, want_body = needs(args.key)
        largest_uid = box.uids[-1] if box.uids else 0
        found: list[int] = []
        candidates = [(i + 1, box.entries[uid]) for i, uid in enumerate(box.uids)]
        for start in range(0, len(candidates), META_BATCH):
            batch = candidates[start : start + META_BATCH]
            batch = [(n, e) for n, e in batch if not e.expunged]
            metas = await self.store.meta([e.blob_id for _, e in batch]) if want_meta else {}
            for group in _read_ahead_groups(batch) if want_body else [batch]:
                raws: list[bytes | None] = [None] * len(group)
                if want_body:
                    # Decrypted by the store's worker threads, a bounded group at a time.
                    raws = list(await asyncio.gather(*(self.store.body(e.blob_id) for _, e in group)))
                for (n, entry), raw in zip(group, raws, strict=True):
                    candidate = Candidate(n, entry, box.exists, largest_uid, metas.get(entry.blob_id), raw)
                    if matches(args.key, candidate):
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
        targets = [
            (n, uid) for n, uid in self._resolve(command, args.sequence) if not box.entries[uid].expunged
        ]
        if not targets:
            return f"{command.name} completed (no messages)"
        try:
            result = await self.store.copy(
                box.folder.id,
                [uid for _, uid in targets],
                self.bal,
                args.mailbox,
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
            if args.mailbox == box.folder.name:
                await self._sync(allow_expunge=False, durable=True)
            return f"[{code}] COPY completed"
        await self.untagged(f"OK [{code}] Moved")
        for n in box.remove([s for s, _ in result.pairs]):
            await self.untagged(b"%d EXPUNGE" % n)
        return "MOVE completed"


class _Cancelled(Exception):
    """The client cancelled a SASL exchange with ``*``."""


class _Silent(Exception):
    """The handler already wrote its tagged response (STARTTLS)."""
