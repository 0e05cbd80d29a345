"""The DMP service: the one API that the CLI, the HTTP routes and the deposit from messages
call. Each call takes the acting :class:`~mssante.auth.identity.Identity`, gathers the facts,
asks :mod:`dmp.rules`, and writes what happened — allowed or refused — to the patient's trace
(``dmp_trace``, which the patient reads) and to the product audit trail, in the transaction
of the action itself. Refusals are traced in their own transaction before the error is raised,
so that a refused attempt is never lost with a rolled-back action.

Notifications (``mssante.notify``) go to the patient's BAL after commit, as the seed lists
them: on each feed, on break-glass, on each consultation by a professional outside the care
team, and on a care-team member's first consultation of the day (one notice per professional
and day). Each carries the channel the patient chose (``webhook``: the Mon Espace Santé app;
``email``: the personal address they gave), for the gateway that delivers it.
"""

from __future__ import annotations

from dmp.core import ServiceCore, notice_channel
from dmp.feeding import Feeding
from dmp.managing import Managing
from dmp.patient_register import PatientRegister
from dmp.patient_rights import MAX_PROFILE_CHARS, NOTIFY_CHANNELS, PROFILE_KINDS, PatientRights
from dmp.reading import Reading
from dmp.types import (
    E_INS_MISMATCH,
    E_NO_INS,
    E_NOT_AUTHOR,
    E_OTHER,
    E_TRAITS,
    E_UNKNOWN_PATIENT,
    E_VERSION,
    FORMATS,
    IDENTITY_STATUSES,
    DMPError,
    DocumentInfo,
    DocumentMeta,
    FeedItem,
    NotFound,
    PatientInfo,
    Refused,
    TraceInfo,
    Traits,
)

__all__ = [
    "E_INS_MISMATCH",
    "E_NOT_AUTHOR",
    "E_NO_INS",
    "E_OTHER",
    "E_TRAITS",
    "E_UNKNOWN_PATIENT",
    "E_VERSION",
    "FORMATS",
    "IDENTITY_STATUSES",
    "MAX_PROFILE_CHARS",
    "NOTIFY_CHANNELS",
    "PROFILE_KINDS",
    "DMPError",
    "DMPService",
    "DocumentInfo",
    "DocumentMeta",
    "FeedItem",
    "NotFound",
    "PatientInfo",
    "Refused",
    "ServiceCore",
    "TraceInfo",
    "Traits",
    "notice_channel",
]  # fmt: skip


class DMPService(PatientRights, PatientRegister, Feeding, Reading, Managing):
    """One per process (cheap to share); all methods are synchronous (call them off the loop).

    Split by job: :mod:`dmp.core` (state, facts, tracing), :mod:`dmp.patient_register`,
    :mod:`dmp.feeding`, :mod:`dmp.reading`, :mod:`dmp.managing`, :mod:`dmp.patient_rights` (the
    patient's own choices); values in :mod:`dmp.types`.
    """
