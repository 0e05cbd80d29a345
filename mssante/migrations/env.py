"""Alembic environment: runs on the connection the product hands it (see mssante.schema)."""

from alembic import context

from mssante.db import is_sqlite, load_all_models

target_metadata = load_all_models()
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=is_sqlite(str(connection.engine.url)),
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
