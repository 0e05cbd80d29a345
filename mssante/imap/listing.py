"""LIST/LSUB pattern matching (RFC 3501 §6.3.8): ``*`` matches anything, ``%`` stops at "/".

The reference name is simply prefixed to the pattern; ``INBOX`` is matched whatever its case.

Matching runs in time linear in the name, whatever the client sends: a pattern is compiled
to a small automaton (one bit per position, runs of wildcards collapsed into one) that is
stepped once per character of the name — no regular expression, no backtracking. A
pattern of 200 stars costs what one star costs. Patterns are bounded in length and number
(:data:`MAX_PATTERN_LENGTH`, :data:`MAX_PATTERNS`) so that one LIST stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

DELIMITER = "/"
WILDCARDS = frozenset("*%")
MAX_PATTERN_LENGTH = 1024  # characters of reference + pattern
MAX_PATTERNS = 16  # patterns of one LIST-EXTENDED command


class PatternTooLong(ValueError):
    """A pattern (reference included) longer than :data:`MAX_PATTERN_LENGTH`."""


def collapse(pattern: str) -> str:
    """Runs of wildcards as the single one they amount to: ``%*%`` is ``*``, ``%%`` is ``%``."""
    out: list[str] = []
    for char in pattern:
        if char in WILDCARDS and out and out[-1] in WILDCARDS:
            out[-1] = "*" if "*" in (char, out[-1]) else "%"
        else:
            out.append(char)
    return "".join(out)


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern: bit ``i`` of a state set stands for "the first ``i`` tokens are
    matched"; the name is accepted when bit ``size`` is set after its last character."""

    size: int
    literals: dict[str, int]  # character → bits of the positions holding that literal
    stars: int  # bits of the positions holding ``*``
    percents: int  # bits of the positions holding ``%``

    def matches(self, name: str) -> bool:
        wild = self.stars | self.percents
        states = self._closure(1, wild)
        accept = 1 << self.size
        for char in name:
            # A wildcard position consumes the character and stays; a literal one advances.
            step = (states & self.literals.get(char, 0)) << 1
            step |= states & (self.stars if char == DELIMITER else wild)
            states = self._closure(step, wild)
            if not states:
                return False
        return bool(states & accept)

    @staticmethod
    def _closure(states: int, wild: int) -> int:
        # A wildcard may match nothing: from its position, the next is reached at once. Runs
        # are collapsed, so the next position is never a wildcard and one step suffices.
        return states | ((states & wild) << 1)


def canonical_pattern(reference: str, pattern: str) -> str:
    full = reference + pattern
    # "inbox", "Inbox/x"... name the INBOX.
    head, sep, rest = full.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return full


@lru_cache(maxsize=256)
def compile_pattern(reference: str, pattern: str) -> Pattern:
    """The automaton of ``reference + pattern``; :class:`PatternTooLong` beyond the bound."""
    full = canonical_pattern(reference, pattern)
    if len(full) > MAX_PATTERN_LENGTH:
        raise PatternTooLong(f"Mailbox pattern too long (at most {MAX_PATTERN_LENGTH} characters)")
    tokens = collapse(full)
    literals: dict[str, int] = {}
    stars = percents = 0
    for i, char in enumerate(tokens):
        if char == "*":
            stars |= 1 << i
        elif char == "%":
            percents |= 1 << i
        else:
            literals[char] = literals.get(char, 0) | 1 << i
    return Pattern(len(tokens), literals, stars, percents)


def matches(name: str, reference: str, pattern: str) -> bool:
    return compile_pattern(reference, pattern).matches(name)


def has_children(name: str, names: set[str] | list[str]) -> bool:
    prefix = name + DELIMITER
    return any(other.startswith(prefix) for other in names)
