"""Alembic environment for dbjobs: connects like the dbjobs CLI, one transaction per migration run."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from dbjobs.connection import connect, resolve_dsn

# dbjobs keeps its own version table, so that it never collides with the
# application's own Alembic history in the same database.
VERSION_TABLE = "dbjobs_alembic_version"


def run_migrations_online() -> None:
    dsn = resolve_dsn()
    engine = create_engine("postgresql+psycopg://", creator=lambda: connect(dsn), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("dbjobs migrations need a live connection: offline (--sql) mode is not supported")
run_migrations_online()
