"""install, runs, then uninstall leave the database as it was: the application database's schema
(pg_dump --schema-only) and pg_cron's jobs (every row of cron.job), in both layouts."""

from __future__ import annotations

import shutil
import subprocess

import psycopg
import pytest

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb
from tests.devserver import ServerUnavailable, find_bindir


def pg_dump() -> str:
    try:
        return str(find_bindir() / "pg_dump")  # the server's own version
    except ServerUnavailable:
        found = shutil.which("pg_dump")
        if found is None:
            pytest.skip("no pg_dump")
        return found


def schema_dump(app: AppDb) -> str:
    result = subprocess.run(
        [pg_dump(), "--schema-only", "--dbname", app.dsn],
        capture_output=True,
        text=True,
        check=True,
    )
    # \restrict and \unrestrict carry a random key per run (PostgreSQL 18, and the minor releases
    # of August 2025): not a difference in the database.
    return "\n".join(
        line for line in result.stdout.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def cron_state(app: AppDb) -> list[tuple[object, ...]]:
    return app.cron("SELECT * FROM cron.job ORDER BY jobid")


def test_install_then_uninstall_leaves_the_database_as_before(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    # Another application's pg_cron job, which must stay as it is.
    app.cron("SELECT cron.schedule_in_database('nightly', '0 3 * * *', 'SELECT 1', %s)", [app.database])
    try:
        before = (schema_dump(app), cron_state(app))

        assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
        assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
        with psycopg.connect(app.dsn, autocommit=True) as conn:  # as pg_cron calls it
            conn.execute("CALL dbjobs.run_job('refresh_tokens')")
        assert schema_dump(app) != before[0] and cron_state(app) != before[1]
        assert dbjobs_cli("--dsn", app.dsn, "uninstall").code == 0

        after = (schema_dump(app), cron_state(app))
        assert after[0] == before[0]
        assert after[1] == before[1]
    finally:
        app.cron("SELECT cron.unschedule('nightly')")
