"""Alembic environment for dbjobs: connects like the dbjobs CLI, one transaction per migration run."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool

from dbjobs.connection import connect, resolve_dsn
from dbjobs.errors import DbjobsError

# dbjobs keeps its own version table, so that it never collides with the
# application's own Alembic history in the same database.
VERSION_TABLE = "dbjobs_alembic_version"


def run_migrations_online() -> None:
    if context.config.config_file_name:  # alembic.ini's logging: what each migration did
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    dsn = resolve_dsn()
    engine = create_engine("postgresql+psycopg://", creator=lambda: connect(dsn), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
            with context.begin_transaction():
                context.run_migrations()
    except CommandError:
        raise  # dbjobs.alembic's own one-line errors
    except DbjobsError as exc:  # cannot connect, bad configuration: one line, no traceback
        raise CommandError(f"dbjobs: {exc}") from exc


if context.is_offline_mode():
    # dbjobs checks the configuration against the live catalog and pg_cron: it has no SQL to print.
    raise CommandError(
        "dbjobs migrations need a live connection: offline (--sql) mode is not supported; "
        "`dbjobs install --dry-run` prints what would change"
    )
run_migrations_online()
