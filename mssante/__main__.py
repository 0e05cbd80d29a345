"""``python -m mssante`` is the ``mssante`` command."""

from mssante.cli import main

main()
