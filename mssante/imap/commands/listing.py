"""The mailbox hierarchy: LIST, LSUB, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.audit import AuditEvent
from mssante.imap import listing
from mssante.imap.access import SHARED_PREFIX
from mssante.imap.commands.base import Bad, No
from mssante.imap.commands.values import Command, Create, ListArgs, MailboxArg, Rename, Status
from mssante.store.types import FolderInfo, FolderNotFound, FolderStatus

if TYPE_CHECKING:
    from mssante.imap.session import Session

SPECIAL_USES = {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"}
_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


def _check_new_name(name: str) -> None:
    """A name a folder may be given: one that LIST can name back. ``*`` and ``%`` are the
    list-wildcards, which RFC 3501 §5.1 advises against in names (a LIST for such a folder
    matches others too); control characters cannot be shown by any client."""
    if any(c in listing.WILDCARDS for c in name):
        raise No('Mailbox names may not contain the LIST wildcards "*" or "%"', "CANNOT")
    if any(c in _CONTROL for c in name):
        raise No("Mailbox names may not contain control characters", "CANNOT")


async def cmd_create(session: Session, command: Command) -> str:
    assert isinstance(command.args, Create)
    uses = command.args.special_use
    if len(uses) > 1 or any(u not in SPECIAL_USES for u in uses):
        raise No("Unsupported special-use attribute", "USEATTR")
    _check_new_name(command.args.mailbox)
    bal, name, _rights = await session.open(command.args.mailbox.rstrip("/"), Right.CREATE)
    if not name or "//" in name or name.partition("/")[0] == SHARED_PREFIX:
        raise No("Invalid mailbox name", "CANNOT")
    await session.store.create_folder(bal, name, uses[0] if uses else None)
    # The store audits DELETE and RENAME itself; CREATE is traced here.
    session.trace(
        AuditEvent(
            actor=session.actor,
            action="folder.create",
            bal=bal,
            object=name,
            source=session.source,
            detail={"special_use": uses[0]} if uses else None,
        )
    )
    return "CREATE completed"


async def cmd_delete(session: Session, command: Command) -> str:
    assert isinstance(command.args, MailboxArg)
    bal, name, _rights = await session.open(command.args.mailbox, Right.DELETE_FOLDER)
    if session.box is not None and session.box_bal == bal and session.box.folder.name == name:
        session.deselect()
    try:
        await session.store.delete_folder(bal, name, actor=session.actor, source=session.source)
    except FolderNotFound:
        raise No(f"Mailbox {name} does not exist", "NONEXISTENT") from None
    return "DELETE completed"


async def cmd_rename(session: Session, command: Command) -> str:
    assert isinstance(command.args, Rename)
    _check_new_name(command.args.new)
    bal, old, _rights = await session.open(command.args.old, Right.DELETE_FOLDER)
    new_bal, new, _rights = await session.open(command.args.new, Right.CREATE)
    if new_bal != bal:
        raise No("A mailbox cannot be renamed into another BAL", "CANNOT")
    try:
        await session.store.rename_folder(bal, old, new, actor=session.actor, source=session.source)
    except FolderNotFound:
        raise No(f"Mailbox {command.args.old} does not exist", "NONEXISTENT") from None
    return "RENAME completed"


async def cmd_subscribe(session: Session, command: Command) -> str:
    assert isinstance(command.args, MailboxArg)
    bal, name, _rights = await session.open(command.args.mailbox)
    if command.name == "SUBSCRIBE":
        # As Dovecot: only an existing mailbox can be subscribed; a subscription then outlives
        # it (DELETE leaves it, UNSUBSCRIBE removes it whether the folder exists or not).
        try:
            await session.store.folder(bal, name)
        except FolderNotFound:
            raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
    # Shared folders count as subscribed: their flag is their holder's, not ours.
    if bal == session.own_bal:
        await session.store.set_subscribed(bal, name, command.name == "SUBSCRIBE")
    return f"{command.name} completed"


async def cmd_list(session: Session, command: Command) -> str:
    args = command.args
    assert isinstance(args, ListArgs)
    if command.name == "LIST":
        _check_options(args)
    if args.patterns == ("",) and not args.selection:
        await session.untagged(f'{command.name} (\\Noselect) "/" ""')
        return f"{command.name} completed"
    if len(args.patterns) > listing.MAX_PATTERNS:
        raise No(f"Too many mailbox patterns (at most {listing.MAX_PATTERNS})", "LIMIT")
    try:
        patterns = [listing.compile_pattern(args.reference, p) for p in args.patterns]
    except listing.PatternTooLong as exc:
        raise No(str(exc), "LIMIT") from None
    visible = await _visible(session)
    if command.name == "LSUB":
        await _lsub(session, visible, patterns)
        return "LSUB completed"
    names = [name for name, folder, _ in visible if folder is not None or _is_shared(name)]
    subscribed_only = "SUBSCRIBED" in args.selection
    special_only = "SPECIAL-USE" in args.selection
    recursive = "RECURSIVEMATCH" in args.selection
    show_subscribed = "SUBSCRIBED" in args.selection or "SUBSCRIBED" in args.returns
    subscribed_names = {name for name, _, sub in visible if sub}
    for name, folder, subscribed in sorted(visible, key=lambda v: (v[0] != "INBOX", v[0])):
        if not any(p.matches(name) for p in patterns):
            continue
        # Special uses are the session's own: a client must not file its Sent into a shared BAL.
        in_shared = name.startswith(SHARED_PREFIX + "/")
        use = folder.special_use if folder is not None and not in_shared else None
        extra = b""
        if subscribed_only and not subscribed:
            # RECURSIVEMATCH (RFC 5258 §3.5): a parent of subscribed mailboxes the patterns do
            # not list themselves is listed, saying why with CHILDINFO.
            hidden = [
                n
                for n in subscribed_names
                if n.startswith(name + "/") and not any(p.matches(n) for p in patterns)
            ]
            if not (recursive and hidden):
                continue
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
        if special_only and not use:
            continue
        attributes = ["\\HasChildren" if listing.has_children(name, names) else "\\HasNoChildren"]
        if folder is None and not _is_shared(name):
            if not subscribed_only:
                continue  # a subscription whose folder is gone: only LIST (SUBSCRIBED) shows it
            attributes = ["\\NonExistent"]
        elif folder is None:
            attributes.insert(0, "\\Noselect")
        if show_subscribed and subscribed:
            attributes.append("\\Subscribed")
        if use:
            attributes.append(use)
        await session.untagged(
            f'{command.name} ({" ".join(attributes)}) "/" '.encode() + session.wire_name(name) + extra
        )
        if args.status_items and folder is not None:
            await _list_status(session, name, args.status_items)
    return f"{command.name} completed"


_SELECTION = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_RETURNS = {"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"}


def _check_options(args: ListArgs) -> None:
    """RFC 5258 §3: unknown options and a RECURSIVEMATCH alone are BAD."""
    for option in args.selection:
        if option not in _SELECTION:
            raise Bad(f"Unknown LIST selection option {option}")
    if "RECURSIVEMATCH" in args.selection and not set(args.selection) - {"RECURSIVEMATCH", "REMOTE"}:
        raise Bad("RECURSIVEMATCH needs another selection option")
    for option in args.returns:
        if option not in _RETURNS:
            raise Bad(f"Unknown LIST return option {option}")


async def _list_status(session: Session, name: str, items: tuple[str, ...]) -> None:
    """LIST-STATUS (RFC 5819): the STATUS of each selectable mailbox listed, right after it;
    one the identity may not read is simply left without."""
    try:
        bal, folder, _rights = await session.open(name, Right.READ)
        status = await session.store.status(bal, folder, count=_counts(items))
    except (No, FolderNotFound):
        return
    await session.untagged(b"STATUS " + session.wire_name(name) + _status_values(session, status, items))


def _is_shared(name: str) -> bool:
    return name == SHARED_PREFIX or name.startswith(SHARED_PREFIX + "/")


async def _visible(session: Session) -> list[tuple[str, FolderInfo | None, bool]]:
    """(name, folder or None for a \\Noselect level of the shared namespace, subscribed) of
    every mailbox the session may see."""
    visible: list[tuple[str, FolderInfo | None, bool]] = []
    own = session.own_bal
    if own is not None and (await session.rights(own)).visible:
        subscribed = set(await session.store.subscriptions(own))
        visible += [(f.name, f, f.name in subscribed) for f in await session.store.folders(own)]
        known = {f[0] for f in visible}
        # A subscribed name may outlive its folder (RFC 3501 §6.3.6): it is still listed by LSUB.
        visible += [(name, None, True) for name in sorted(subscribed - known)]
    assert session.principal is not None
    shared = [b for b in await session.access.shared(session.principal) if b != own]
    if shared:
        visible.append((SHARED_PREFIX, None, True))
    for bal in shared:
        if bal not in session.opened:
            await session.store.ensure_account(bal)
            session.opened.add(bal)
        # Shared folders count as subscribed: their flag is their holder's, not ours.
        visible.append((f"{SHARED_PREFIX}/{bal}", None, True))
        visible += [(session.shown(bal, f.name), f, True) for f in await session.store.folders(bal)]
    return visible


async def _lsub(
    session: Session, visible: list[tuple[str, FolderInfo | None, bool]], patterns: list[listing.Pattern]
) -> None:
    """LSUB (RFC 3501 §6.3.9): subscribed names matching a pattern; when ``%`` stops short of
    a subscribed name, its parent that matches is listed ``\\Noselect`` unless itself
    subscribed."""
    subscribed = {name for name, _, sub in visible if sub}
    levels = {name for name, folder, _ in visible if folder is None and _is_shared(name)}
    out: dict[str, str] = {}
    for name in subscribed:
        if any(p.matches(name) for p in patterns):
            out[name] = "\\Noselect" if name in levels else ""
            continue
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in subscribed and any(p.matches(parent) for p in patterns):
                out.setdefault(parent, "\\Noselect")
    for name in sorted(out, key=lambda n: (n != "INBOX", n)):
        await session.untagged(f'LSUB ({out[name]}) "/" '.encode() + session.wire_name(name))


def _status_values(session: Session, status: FolderStatus, items: tuple[str, ...]) -> bytes:
    if "HIGHESTMODSEQ" in items:
        session.enable("CONDSTORE")
    values = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.folder.uidnext,
        "UIDVALIDITY": status.folder.uidvalidity,
        "UNSEEN": status.unseen,
        "SIZE": status.size,
        "HIGHESTMODSEQ": status.folder.highestmodseq,
        "DELETED": status.deleted,
    }
    return (" (" + " ".join(f"{item} {values[item]}" for item in items) + ")").encode()


# STATUS items the folder's row holds: asked alone (a client watching UIDNEXT for new mail),
# they are answered without counting the folder's messages.
_FOLDER_ROW_ITEMS = frozenset({"UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ"})


def _counts(items: tuple[str, ...]) -> bool:
    return not _FOLDER_ROW_ITEMS.issuperset(items)


async def cmd_status(session: Session, command: Command) -> str:
    assert isinstance(command.args, Status)
    bal, name, _rights = await session.open(command.args.mailbox, Right.READ)
    try:
        status = await session.store.status(bal, name, count=_counts(command.args.items))
    except FolderNotFound:
        raise No(f"Mailbox {command.args.mailbox} does not exist", "NONEXISTENT") from None
    shown = session.shown(bal, status.folder.name)
    await session.untagged(
        b"STATUS " + session.wire_name(shown) + _status_values(session, status, command.args.items)
    )
    return "STATUS completed"
