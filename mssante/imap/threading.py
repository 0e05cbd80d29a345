"""SORT and THREAD (RFC 5256) over each message's keys (:mod:`mssante.store.sortkeys`).

Pure functions: they receive each message as an :class:`Item` (number, size, arrival date and
its keys) and return numbers in order, or threads. Every comparison ends with the message
number, as the RFC asks, so equal keys keep a stable, reproducible order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from mssante.store.sortkeys import SortKeys, keys_of

NO_KEYS = keys_of(None)  # a message whose content is gone: no date, subject or links


@dataclass(slots=True)
class Item:
    """One message to sort or thread."""

    msn: int
    number: int  # what the response names: the message number, or the UID for UID SORT/THREAD
    size: int
    arrival: float  # INTERNALDATE, seconds since the epoch
    keys: SortKeys = NO_KEYS

    def sent(self) -> float:
        """The Date field, or the arrival date when it is missing or unreadable."""
        sent = self.keys.sent
        return self.arrival if sent is None else sent


# What each SORT criterion compares: a field of the keys (DATE and the columns are apart).
KEY_FIELDS = {
    "SUBJECT": "subject",
    "FROM": "first_from",
    "TO": "first_to",
    "CC": "first_cc",
    "DISPLAYFROM": "display_from",
    "DISPLAYTO": "display_to",
}
SORT_KEYS = frozenset({"ARRIVAL", "DATE", "SIZE", *KEY_FIELDS})  # what SORT may be asked to compare


def sort_order(
    criteria: tuple[str, ...], count: int, keys: Sequence[SortKeys], column: Callable[[str], Sequence[int]]
) -> list[int]:
    """Positions ``0 … count - 1`` (messages in ascending number) in the order ``criteria``
    (``REVERSE`` before a key) give, from each message's ``keys`` (none needed for ARRIVAL
    and SIZE) and the mailbox's ``column("size")`` and ``column("date")`` (the arrival).

    Stable sorts from the last key to the first: the first key decides, the next breaks ties,
    the message number last. Each sort compares a list of values made beforehand
    (``values.__getitem__``): no Python call per comparison, for a webmail's SORT of 20,000
    messages at every page."""

    def values(criterion: str) -> Sequence[Any]:
        if criterion == "SIZE":
            return column("size")
        if criterion == "ARRIVAL":
            return column("date")
        if criterion == "DATE":  # the Date field, or the arrival date without one
            arrivals = column("date")
            return [arrival if k.sent is None else k.sent for k, arrival in zip(keys, arrivals, strict=True)]
        return list(map(attrgetter(KEY_FIELDS[criterion]), keys))

    steps: list[tuple[str, bool]] = []
    reverse = False
    for criterion in criteria:
        if criterion == "REVERSE":
            reverse = True
            continue
        steps.append((criterion, reverse))
        reverse = False
    order = list(range(count))
    for criterion, descending in reversed(steps):
        order.sort(key=values(criterion).__getitem__, reverse=descending)
    return order


# --- THREAD --------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    item: Item | None = None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    def date(self) -> tuple[float, int]:
        """Sort key: the message's sent date; a dummy takes its first child's."""
        node = self
        while node.item is None:
            if not node.children:
                return float("-inf"), 0
            node = node.children[0]
        return node.item.sent(), node.item.msn

    def has_descendant(self, other: Node) -> bool:
        """Whether ``other`` is below this node (its parents walked up: no recursion, however
        long the chain a References field makes)."""
        node = other.parent
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _sort_tree(nodes: list[Node]) -> None:
    """Each level by date, a level before the levels below it (a dummy's date is its first
    child's as it stands then)."""
    levels = [nodes]
    while levels:
        level = levels.pop()
        level.sort(key=Node.date)
        levels.extend(node.children for node in level if node.children)


def ordered_subject(items: list[Item]) -> list[Node]:
    """ORDEREDSUBJECT: by base subject, then date; each group's first message is the parent
    of the others."""
    groups: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.sent(), i.msn)):
        groups.setdefault(item.keys.subject, []).append(item)
    roots = []
    for members in groups.values():
        root = Node(members[0])
        for item in members[1:]:
            _link(root, Node(item))
        roots.append(root)
    roots.sort(key=Node.date)
    return roots


def references(items: list[Item]) -> list[Node]:
    """REFERENCES (RFC 5256 §3): the parent/child links of References and In-Reply-To, dummy
    containers pruned, threads of one base subject gathered, children ordered by date."""
    table: dict[str, Node] = {}
    for item in sorted(items, key=lambda i: i.msn):
        found = item.keys.message_id
        key = found if found is not None and (found not in table or table[found].item is None) else None
        if key is None:
            key = f"<unique-{item.msn}@thread>"  # none, or a duplicate: a message of its own
        node = table.setdefault(key, Node())
        node.item = item
        previous: Node | None = None
        for ref in item.keys.parents or ():
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
    roots = _prune(roots)
    _sort_tree(roots)
    roots = _gather_subjects(roots)
    _sort_tree(roots)
    return roots


def _pruned(nodes: list[Node], *, top: bool) -> list[Node]:
    """RFC 5256 §3 step 4 on one list of siblings whose own children are pruned already: a
    dummy without children goes, one with children gives them its place (at the top, only a
    dummy with one child)."""
    out: list[Node] = []
    for node in nodes:
        if node.item is None and not node.children:
            continue
        if node.item is None and (not top or len(node.children) == 1):
            for child in node.children:
                child.parent = None if top else node.parent
            out.extend(node.children)
            continue
        out.append(node)
    return out


def _prune(roots: list[Node]) -> list[Node]:
    """The tree pruned from its leaves up (an explicit walk: a References field of thousands of
    ids makes a chain as deep, which recursion could not follow)."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):  # every node after all of its descendants
        node.children = _pruned(node.children, top=False)
        for child in node.children:
            child.parent = node
    return _pruned(roots, top=True)


def _subject_of(node: Node) -> tuple[str, bool]:
    """(base subject, whether the subject was a reply or forward) of a thread's top message."""
    item = node.item if node.item is not None else (node.children[0].item if node.children else None)
    keys = item.keys if item is not None else NO_KEYS
    return keys.subject, keys.reply


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
    where: dict[Node, int] = {}  # each thread's place in ``out`` (a search of it was quadratic)
    for root in roots:
        if root.parent is not None:
            continue  # already made part of another thread
        base, reply = _subject_of(root)
        keeper = by_subject.get(base) if base else None
        if keeper is None or keeper is root:
            where[root] = len(out)
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
            index = where.pop(keeper, None)
            _link(merged, keeper)
            _link(merged, root)
            by_subject[base] = merged
            if index is None:
                index = len(out)
                out.append(merged)
            out[index], where[merged] = merged, index
    return out


def render(roots: list[Node]) -> str:
    """``(1 2 (3)(4))(5)``: a chain is written flat, siblings each in parentheses. Written
    with an explicit stack of what is left to write: threads nest as deep as replies go."""
    out: list[str] = []
    pending: list[Node | str] = []
    for root in reversed(roots):
        pending += [")", root, "("]
    while pending:
        top = pending.pop()
        if isinstance(top, str):
            out.append(top)
            continue
        numbers: list[str] = []
        current = top
        while True:
            if current.item is not None:
                numbers.append(str(current.item.number))
            if len(current.children) != 1:
                break
            current = current.children[0]
        out.append(" ".join(numbers))
        if current.children:
            if numbers:
                out.append(" ")
            for child in reversed(current.children):
                pending += [")", child, "("]
    return "".join(out)
