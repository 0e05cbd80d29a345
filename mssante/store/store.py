"""The message store API used by SMTP delivery, IMAP and the CLI.

Writes go through the group-commit writer (one thread, one connection, durable before the
caller hears "done"); reads run in worker threads on their own connections. Protocol code
never writes SQL: it calls these methods, which is what keeps storage separate from
protocol, as in Dovecot. The values it hands out and the refusals it raises are in
:mod:`mssante.store.types`.
"""

from mssante.store.delivery import DeliveryOps
from mssante.store.folders import FolderOps
from mssante.store.messages import MessageOps


class MessageStore(DeliveryOps, FolderOps, MessageOps):
    """The whole store: deliveries, folders and messages over one writer and its readers."""
