"""The states of an IMAP session (RFC 3501 §3), shared by the session and its commands."""

from __future__ import annotations

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = (
    "not authenticated",
    "authenticated",
    "selected",
    "logout",
)
