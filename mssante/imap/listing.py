"""LIST/LSUB pattern matching (RFC 3501 §6.3.8): ``*`` matches anything, ``%`` stops at "/".

The reference name is simply prefixed to the pattern; ``INBOX`` is matched whatever its case.
"""

from __future__ import annotations

import re
from functools import lru_cache

DELIMITER = "/"


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def canonical_pattern(reference: str, pattern: str) -> str:
    full = reference + pattern
    # "inbox", "Inbox/x"... name the INBOX.
    head, sep, rest = full.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return full


def matches(name: str, reference: str, pattern: str) -> bool:
    return _compile(canonical_pattern(reference, pattern)).fullmatch(name) is not None


def has_children(name: str, names: set[str] | list[str]) -> bool:
    prefix = name + DELIMITER
    return any(other.startswith(prefix) for other in names)
