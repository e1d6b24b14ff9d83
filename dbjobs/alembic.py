"""Install and remove dbjobs from Alembic revisions, on the migration's own connection and transaction.

    from alembic import op
    import dbjobs.alembic

    def upgrade():
        dbjobs.alembic.install(op)

    def downgrade():
        dbjobs.alembic.uninstall(op)

A revision calls the installer rather than running frozen SQL: the installer
is idempotent and upgrades whatever version it finds, so old revisions keep
working as dbjobs' SQL changes. Needs SQLAlchemy's psycopg (3) driver
(``postgresql+psycopg://``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from sqlalchemy import event

from .config import Config, load_config
from .errors import DbjobsError
from .install import Plan
from .install import install as install_on
from .install import uninstall as uninstall_on


def connection(op: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under an Alembic ``op``, inside the migration's transaction."""
    raw = op.get_bind().connection.dbapi_connection
    if not isinstance(raw, psycopg.Connection):
        raise DbjobsError(
            "dbjobs.alembic needs SQLAlchemy's psycopg 3 driver: use a postgresql+psycopg:// URL"
        )
    if raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not raw.autocommit:
        # Open the migration's transaction now, so that install runs in it (as a
        # savepoint) instead of committing a transaction of its own.
        raw.execute("SELECT 1")
    return raw


def install(op: Any, config: Config | None = None) -> Plan:
    with _until_migration_ends(op) as cron_stack:
        return install_on(connection(op), config or load_config(), cron_stack=cron_stack)


def uninstall(op: Any, config: Config | None = None) -> Plan:
    with _until_migration_ends(op) as cron_stack:
        return uninstall_on(connection(op), config or load_config(), cron_stack=cron_stack)


class _MigrationRolledBack(Exception):
    pass


@contextmanager
def _until_migration_ends(op: Any) -> Iterator[ExitStack]:
    """Hold the pg_cron database's transaction (when pg_cron lives in another
    database) open until the migration's own transaction ends: committed just
    before it commits, rolled back when it rolls back."""
    bind = op.get_bind()
    stack = ExitStack()
    try:
        yield stack
    except BaseException:
        stack.__exit__(*sys.exc_info())
        raise
    event.listen(bind, "commit", lambda _conn: stack.close(), once=True)
    event.listen(
        bind,
        "rollback",
        lambda _conn: stack.__exit__(_MigrationRolledBack, _MigrationRolledBack(), None),
        once=True,
    )
