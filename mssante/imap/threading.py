"""SORT and THREAD (RFC 5256) over the structures the store cached at delivery.

Pure functions: they receive each message as a :class:`Item` (number, size, dates and the
cached analysis) and return numbers in order, or threads. Every comparison ends with the
message number, as the RFC asks, so equal keys keep a stable, reproducible order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from mssante.store.mime import decode_value

Json = dict[str, Any]

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO")
ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")

_TRAILER = re.compile(r"(\s*\(fwd\))+\s*$|\s+$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^\s*(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*", re.IGNORECASE)
_LEADING_BLOB = re.compile(rf"^\s*{_BLOB}")
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.IGNORECASE | re.DOTALL)
_MSG_ID = re.compile(r"<[^<>\s]+>")


@dataclass
class Item:
    """One message to sort or thread."""

    msn: int
    number: int  # what the response names: the message number, or the UID for UID SORT/THREAD
    size: int
    internaldate: datetime
    meta: Json | None

    @property
    def envelope(self) -> Json:
        return (self.meta or {}).get("envelope") or {}

    def header(self, name: str) -> str | None:
        for key, value in (self.meta or {}).get("headers", []):
            if key.lower() == name:
                return str(value)
        return None

    def sent(self) -> datetime:
        """The Date header in UTC, or the arrival time when it is missing or unreadable."""
        raw = self.envelope.get("date")
        if raw:
            try:
                when = parsedate_to_datetime(raw)
                return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
            except (TypeError, ValueError, IndexError):
                pass
        return self.internaldate.astimezone(UTC)


def base_subject(subject: str | None) -> str:
    """RFC 5256 §2.1: the subject without ``Re:``, ``Fwd:``, ``[list]`` leaders, ``(fwd)``
    trailers and ``[Fwd: …]`` wrappers, whitespace collapsed; compared case-insensitively."""
    text = " ".join(decode_value(subject or "").split())
    while True:
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        while True:
            stripped = _LEADER.sub("", text, count=1)
            if stripped == text:
                blob = _LEADING_BLOB.match(text)
                if blob and text[blob.end() :].strip():
                    stripped = text[blob.end() :]
            if stripped == text:
                break
            text = stripped
        wrapped = _FWD_WRAP.match(text)
        if not wrapped:
            return text.upper()
        text = wrapped.group(1)


def _first_mailbox(item: Item, field_name: str) -> str:
    # The first address's mailbox part, a group's name included (what Dovecot compares).
    for _name, _adl, mailbox, _host in item.envelope.get(field_name) or ():
        return (mailbox or "").upper()
    return ""


def sort(items: list[Item], criteria: tuple[str, ...]) -> list[int]:
    """The numbers of ``items`` in the order ``criteria`` (``REVERSE`` before a key) give."""
    keys: list[tuple[str, bool]] = []
    reverse = False
    for criterion in criteria:
        if criterion == "REVERSE":
            reverse = True
            continue
        keys.append((criterion, reverse))
        reverse = False

    def value(item: Item, key: str) -> Any:
        if key == "ARRIVAL":
            return item.internaldate.astimezone(UTC)
        if key == "DATE":
            return item.sent()
        if key == "SIZE":
            return item.size
        if key == "SUBJECT":
            return base_subject(item.envelope.get("subject"))
        return _first_mailbox(item, {"FROM": "from", "TO": "to", "CC": "cc"}[key])

    ordered = sorted(items, key=lambda i: i.msn)
    # Stable sorts from the last key to the first: the first key decides, the next breaks ties.
    for key, descending in reversed(keys):
        ordered.sort(key=lambda i, k=key: value(i, k), reverse=descending)  # type: ignore[misc]
    return [i.number for i in ordered]


# --- THREAD --------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    item: Item | None = None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    def date(self) -> tuple[datetime, int]:
        """Sort key: the message's sent date; a dummy takes its first child's."""
        if self.item is not None:
            return self.item.sent(), self.item.msn
        return self.children[0].date() if self.children else (datetime.min.replace(tzinfo=UTC), 0)

    def has_descendant(self, other: Node) -> bool:
        return any(c is other or c.has_descendant(other) for c in self.children)


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _sort_tree(nodes: list[Node]) -> None:
    nodes.sort(key=Node.date)
    for node in nodes:
        _sort_tree(node.children)


def ordered_subject(items: list[Item]) -> list[Node]:
    """ORDEREDSUBJECT: by base subject, then date; each group's first message is the parent
    of the others."""
    groups: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.sent(), i.msn)):
        groups.setdefault(base_subject(item.envelope.get("subject")), []).append(item)
    roots = []
    for members in groups.values():
        root = Node(members[0])
        for item in members[1:]:
            _link(root, Node(item))
        roots.append(root)
    roots.sort(key=Node.date)
    return roots


def _references(item: Item) -> list[str]:
    refs = _MSG_ID.findall(item.header("references") or "")
    if not refs:
        refs = _MSG_ID.findall(item.envelope.get("in_reply_to") or "")[:1]
    return refs


def references(items: list[Item]) -> list[Node]:
    """REFERENCES (RFC 5256 §3): the parent/child links of References and In-Reply-To, dummy
    containers pruned, threads of one base subject gathered, children ordered by date."""
    table: dict[str, Node] = {}
    for item in sorted(items, key=lambda i: i.msn):
        ids = _MSG_ID.findall(item.envelope.get("message_id") or "")
        key = ids[0] if ids and (ids[0] not in table or table[ids[0]].item is None) else None
        if key is None:
            key = f"<unique-{item.msn}@thread>"  # none, or a duplicate: a message of its own
        node = table.setdefault(key, Node())
        node.item = item
        previous: Node | None = None
        for ref in _references(item):
            current = table.setdefault(ref, Node())
            if (
                previous is not None
                and current.parent is None
                and current is not previous
                and not current.has_descendant(previous)
            ):
                _link(previous, current)
            previous = current
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and previous is not node and not node.has_descendant(previous):
            _link(previous, node)
    roots = [n for n in table.values() if n.parent is None]
    roots = _prune(roots, top=True)
    _sort_tree(roots)
    roots = _gather_subjects(roots)
    _sort_tree(roots)
    return roots


def _prune(nodes: list[Node], *, top: bool) -> list[Node]:
    out: list[Node] = []
    for node in nodes:
        node.children = _prune(node.children, top=False)
        for child in node.children:
            child.parent = node
        if node.item is None and not node.children:
            continue
        if node.item is None and (not top or len(node.children) == 1):
            for child in node.children:
                child.parent = None if top else node.parent
            out.extend(node.children)
            continue
        out.append(node)
    return out


def _subject_of(node: Node) -> tuple[str, bool]:
    """(base subject, whether the subject was a reply or forward) of a thread's top message."""
    item = node.item if node.item is not None else (node.children[0].item if node.children else None)
    raw = item.envelope.get("subject") if item is not None else None
    base = base_subject(raw)
    plain = " ".join(decode_value(raw or "").split()).upper()
    return base, base != plain


def _gather_subjects(roots: list[Node]) -> list[Node]:
    """RFC 5256 §3 step 5: threads whose tops share a base subject become one."""
    by_subject: dict[str, Node] = {}
    for root in roots:
        base, _reply = _subject_of(root)
        if not base:
            continue
        seen = by_subject.get(base)
        if (
            seen is None
            or (seen.item is not None and root.item is None)
            or (
                seen.item is not None
                and root.item is not None
                and _subject_of(seen)[1]
                and not _subject_of(root)[1]
            )
        ):
            by_subject[base] = root
    out: list[Node] = []
    for root in roots:
        if root.parent is not None:
            continue  # already made part of another thread
        base, reply = _subject_of(root)
        keeper = by_subject.get(base) if base else None
        if keeper is None or keeper is root:
            out.append(root)
            continue
        if keeper.item is None and root.item is None:
            for child in list(root.children):
                _link(keeper, child)
        elif keeper.item is None:
            _link(keeper, root)
        elif root.item is None:
            continue  # cannot happen: a dummy keeper is preferred
        elif reply and not _subject_of(keeper)[1]:
            _link(keeper, root)
        else:
            merged = Node()
            index = out.index(keeper) if keeper in out else None
            _link(merged, keeper)
            _link(merged, root)
            by_subject[base] = merged
            if index is not None:
                out[index] = merged
            else:
                out.append(merged)
    return out


def render(roots: list[Node]) -> str:
    """``(1 2 (3)(4))(5)``: a chain is written flat, siblings each in parentheses."""

    def one(node: Node) -> str:
        parts: list[str] = []
        current = node
        while True:
            if current.item is not None:
                parts.append(str(current.item.number))
            if len(current.children) == 1:
                current = current.children[0]
                continue
            if current.children:
                parts.append("".join(f"({one(child)})" for child in current.children))
            return " ".join(parts)

    return "".join(f"({one(root)})" for root in roots)
