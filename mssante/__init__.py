"""mssante: a secure health-messaging server for the MSSanté space of trust."""

__version__ = "0.1.0"
