"""STORE and UID STORE: flag changes, each checked against the right it needs (RFC 4314)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from delegation.rights import Right
from mssante.imap.commands.base import No, flag_right
from mssante.imap.commands.values import Command, Store
from mssante.imap.render import compress

if TYPE_CHECKING:
    from mssante.imap.session import Session


async def cmd_store(session: Session, command: Command) -> str:
    box = session.selected()
    args = command.args
    assert isinstance(args, Store)
    if box.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    needed = {flag_right(f) for f in args.flags}
    if args.mode == "":  # replacing may remove any flag
        needed |= {Right.KEEP_SEEN, Right.WRITE_FLAGS, Right.DELETE_MESSAGES}
    missing = "".join(r.value for r in sorted(needed) if r not in session.box_rights)
    if missing:
        raise No(f"Permission denied: these flags need the right(s) {missing}", "NOPERM")
    targets = [
        (n, uid) for n, uid in session.resolve(command, args.sequence) if not box.entries[uid].expunged
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
    modified: list[int] = []
    if args.unchanged_since is not None:
        session.enable("CONDSTORE")
    if targets:
        changed = await session.store.store_flags(
            box.folder.id,
            [uid for _, uid in targets],
            mode,  # type: ignore[arg-type]
            args.flags,
            actor=session.actor,
            bal=session.box_bal,
            source=session.source,
            unchanged_since=args.unchanged_since,
            modified=modified,
        )
        for uid, flags, modseq in changed:
            box.set_flags(uid, flags, modseq)
    # A keyword new to the mailbox is announced (FLAGS, PERMANENTFLAGS) before it is shown.
    for line in box.announce_keywords(f for _, uid in targets for f in box.entries[uid].flags):
        await session.channel.write(line + b"\r\n")
    failed = set(modified)
    for n, uid in targets:
        entry = box.entries[uid]
        if uid in failed:
            continue
        if box.condstore and args.silent and set(entry.flags) == expected[uid]:
            # RFC 7162 §3.1.3: even .SILENT tells the new MODSEQ.
            await session.untagged(b"%d FETCH (UID %d MODSEQ (%d))" % (n, uid, entry.modseq))
        elif not args.silent or set(entry.flags) != expected[uid]:
            await session.channel.write(box.flags_update(n, entry, with_uid=command.uid) + b"\r\n")
    if failed:
        numbers = [uid if command.uid else n for n, uid in targets if uid in failed]
        return f"[MODIFIED {compress(sorted(numbers))}] Conditional STORE failed for some messages"
    return f"{'UID ' if command.uid else ''}STORE completed"
