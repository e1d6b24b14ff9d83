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
(``postgresql+psycopg://``), and the ``alembic`` extra: ``pip install 'dbjobs[alembic]'``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg

try:
    from alembic.util import CommandError
    from sqlalchemy import event
except ModuleNotFoundError as exc:  # an optional dependency: the CLI and the rest of dbjobs run without it
    raise ModuleNotFoundError(
        f"dbjobs.alembic needs Alembic and SQLAlchemy ({exc.name} is not installed): "
        "pip install 'dbjobs[alembic]'",
        name=exc.name,
    ) from exc

from .config import Config, load_config
from .errors import DbjobsError, one_line_error
from .install import Plan
from .install import install as install_on
from .install import uninstall as uninstall_on


def connection(op: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under an Alembic ``op``, inside the migration's transaction."""
    if op.get_context().as_sql:
        raise MigrationError(
            "dbjobs cannot write its install as SQL (alembic --sql): it checks the configuration "
            "against the live catalog and pg_cron first; run the migration online, or see "
            "`dbjobs install --dry-run` for what it would change"
        )
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


# A child of Alembic's own logger: its configuration (alembic.ini) shows these lines.
log = logging.getLogger("alembic.dbjobs")


class MigrationError(CommandError, DbjobsError):
    """dbjobs could not install or uninstall inside a migration.

    A CommandError, which Alembic's command line prints as one line
    (``FAILED: ...``) instead of a traceback; a DbjobsError for code that
    catches dbjobs' errors.
    """


def install(op: Any, config: Config | None = None) -> Plan:
    """Install dbjobs in the migration's transaction; each change is logged through Alembic's logger."""
    with _one_line_errors("install"), _until_migration_ends(op) as cron_stack:
        plan = install_on(connection(op), config or load_config(), cron_stack=cron_stack)
    for line in plan.lines():
        log.info("dbjobs: %s", line)
    return plan


def uninstall(op: Any, config: Config | None = None) -> Plan:
    with _one_line_errors("uninstall"), _until_migration_ends(op) as cron_stack:
        plan = uninstall_on(connection(op), config or load_config(), cron_stack=cron_stack)
    for line in plan.lines():
        log.info("dbjobs: %s", line)
    return plan


@contextmanager
def _one_line_errors(action: str) -> Iterator[None]:
    try:
        yield
    except MigrationError:
        raise
    except DbjobsError as exc:
        raise MigrationError(f"dbjobs {action}: {'; '.join(str(exc).splitlines())}") from exc
    except psycopg.Error as exc:
        raise MigrationError(f"dbjobs {action}: database error: {one_line_error(str(exc))}") from exc


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
