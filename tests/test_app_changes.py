"""The application changes under dbjobs after install (a migration drops or renames the table, drops
or retypes the expiry column, drops the index, revokes a privilege).

Each time: the next run fails cleanly (recorded, status `failing` with a one-line reason), doctor
names the fix, install validates again and says what no longer matches, changing nothing; no other
row or table is touched. A dropped index is no failure: runs go on, slower, and doctor says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import AppDb
from tests.real_schemas import application_role

CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 * * * *"
"""
TABLES = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz, user_id int);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 hours', i FROM generate_series(1, 6) i;
INSERT INTO sessions SELECT i, now() + interval '1 hour', i FROM generate_series(7, 10) i;
-- No job names it: it must never change.
CREATE TABLE audit (id int PRIMARY KEY, expires_at timestamptz);
INSERT INTO audit SELECT i, now() - interval '2 days' FROM generate_series(1, 5) i;
"""

# (change, the run's error, what install and doctor say no longer matches, doctor's fix)
CHANGES = {
    "table dropped": (
        "DROP TABLE sessions",
        'relation "public.sessions" does not exist',
        "job 'sessions': table: relation 'sessions' does not exist",
    ),
    "table renamed": (
        "ALTER TABLE sessions RENAME TO user_sessions",
        'relation "public.sessions" does not exist',
        "job 'sessions': table: relation 'sessions' does not exist",
    ),
    "expiry column dropped": (
        "ALTER TABLE sessions DROP COLUMN expires_at",
        'column "expires_at" does not exist',
        "job 'sessions': expires: column 'expires_at' does not exist in 'sessions'",
    ),
    "expiry column type changed": (
        "ALTER TABLE sessions ALTER COLUMN expires_at TYPE bigint USING extract(epoch FROM expires_at)",
        "operator does not exist: bigint < timestamp with time zone",
        "job 'sessions': expires: column 'expires_at' is bigint, not timestamp, timestamptz or date",
    ),
    "privilege revoked": (
        "REVOKE DELETE ON sessions FROM {role}",
        "permission denied for table sessions",
        "job 'sessions': table: the connected role needs SELECT, UPDATE and DELETE on 'sessions'",
    ),
}


@pytest.fixture
def installed(app_separate: AppDb, dbjobs_cli, write_config) -> Iterator[tuple[AppDb, str, str, str]]:
    """(app, role, its DSN, config): installed as an application role that does not own the tables
    (a migration role does), with the README's grants, and run once."""
    app = app_separate
    app.execute(TABLES)
    with application_role(app) as (role, dsn):
        app.execute(f'GRANT SELECT, UPDATE, DELETE ON sessions TO "{role}"')
        config = write_config(CONFIG)
        installed = dbjobs_cli("--dsn", dsn, "--config", config, "install")
        assert installed.code == 0, installed.err
        ran = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
        assert ran.code == 0 and "deleted 6 rows" in ran.out, ran
        yield app, role, dsn, config


def snapshot(app: AppDb) -> tuple[object, ...]:
    """Everything the failed run and install must leave as it was."""
    sessions = app.execute(
        "SELECT to_regclass('sessions') IS NOT NULL AND has_table_privilege('sessions', 'SELECT')"
    )[0][0]
    return (
        app.execute("SELECT * FROM audit ORDER BY id"),
        app.execute("SELECT * FROM sessions ORDER BY id") if sessions else None,
        app.execute("SELECT name, table_name, expires, retain::text, schedule FROM dbjobs.job"),
        app.cron_jobs(),
        app.maintenance_job(),
    )


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_next_run_fails_cleanly_and_install_and_doctor_say_what_changed(
    installed, dbjobs_cli, change: str
) -> None:
    app, role, dsn, config = installed
    statement, run_error, mismatch = CHANGES[change]
    app.execute(statement.format(role=f'"{role}"'))
    before = snapshot(app)

    # The scheduled run (the CALL pg_cron makes, as the installing role) fails, recorded.
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error, match=run_error):
        conn.execute("CALL dbjobs.run_job('sessions')")
    [(trigger, status, error)] = app.execute(
        "SELECT trigger, status, error FROM dbjobs.run ORDER BY id DESC LIMIT 1"
    )
    assert (trigger, status) == ("scheduled", "failed") and run_error in error, error
    # A manual run says it on one line.
    ran = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
    assert ran.code == 1 and ran.out.startswith("sessions: failed after deleting 0 rows: "), ran
    assert run_error in ran.out and len(ran.out.splitlines()) == 1, ran.out

    result = dbjobs_cli("--dsn", dsn, "--config", config, "status", "--format", "json")
    job = {j["name"]: j for j in json.loads(result.out)["jobs"]}["sessions"]
    assert (result.code, job["state"], job["last_run_status"]) == (1, "failing", "failed"), job
    assert run_error in job["last_error"] and "\n" not in job["last_error"], job["last_error"]

    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert doctor.code == 2, doctor.out
    lines = doctor.out.splitlines()
    [failed] = [i for i, line in enumerate(lines) if line.startswith("FAIL  configuration:")]
    assert mismatch in lines[failed], doctor.out
    assert lines[failed + 1] == (
        "      fix: job 'sessions' is installed and each of its runs fails until its table matches again: "
        f"undo the change to the table (or the grant), or change [jobs.sessions] in {config} to match "
        "(or remove it), then run `dbjobs install`"
    ), doctor.out

    again = dbjobs_cli("--dsn", dsn, "--config", config, "install")
    assert again.code == 2 and again.out == "", again
    assert again.err.startswith(f"dbjobs: error: {mismatch}") and len(again.err.splitlines()) == 1, again.err
    assert snapshot(app) == before  # nothing else touched, by the runs nor by install


def test_a_dropped_index_slows_runs_and_doctor_prints_the_index(installed, dbjobs_cli) -> None:
    app, _, dsn, config = installed
    app.execute("DROP INDEX sessions_expires_at")
    app.execute("INSERT INTO sessions VALUES (11, now() - interval '2 hours', 11)")
    ran = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
    assert ran.code == 0 and "deleted 1 row" in ran.out, ran
    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert doctor.code == 1, doctor.out
    assert (
        "WARN  index for sessions: no index leads with expires_at: each run reads the whole of "
        '"public"."sessions"\n      fix: CREATE INDEX CONCURRENTLY ON "public"."sessions" ("expires_at")'
    ) in doctor.out
    # An index is no part of the rule: install has nothing to change.
    assert dbjobs_cli("--dsn", dsn, "--config", config, "install").out.startswith("nothing to change")
    assert app.count("audit") == 5 and app.count("sessions") == 4


def test_a_predicate_that_fails_only_at_run_time(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    """Install plans `where`, it cannot run it on every row: one that errors on some rows installs,
    and its runs fail, recorded and reported like any other failure, deleting nothing."""
    app = app_separate
    app.execute(
        TABLES + "ALTER TABLE sessions ADD COLUMN n int DEFAULT 1; UPDATE sessions SET n = 0 WHERE id = 3"
    )
    config = write_config(CONFIG + 'where = "1 / n > 0"\n')
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    ran = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert (ran.code, ran.out) == (1, "sessions: failed after deleting 0 rows: division by zero\n")
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json")
    job = {j["name"]: j for j in json.loads(result.out)["jobs"]}["sessions"]
    assert (result.code, job["state"], job["last_error"]) == (1, "failing", "division by zero")
    assert app.count("sessions") == 10
