"""The IMAP commands, one module per family (as Dovecot's cmd-*.c).

Each handler is ``async def cmd_x(session, command) -> str``: it acts on the
:class:`~mssante.imap.session.Session` (which keeps the state and dispatches), writes its
untagged responses and returns the text of the tagged ``OK``; it raises
:class:`~mssante.imap.commands.base.Bad` or :class:`~mssante.imap.commands.base.No` to fail.
:mod:`~mssante.imap.commands.values` holds what the parser makes of a command.
"""
