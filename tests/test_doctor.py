"""dbjobs doctor: each check passes, warns or fails with a one-line fix."""

from __future__ import annotations

import pytest

from tests.conftest import DEFAULT_TABLES, AppDb


def test_healthy_setup_passes_every_check(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "doctor")
    assert result.code == 0, result.out
    names = [line.split(":")[0] for line in result.out.splitlines()]
    assert names == [
        "PASS  connection", "PASS  server version", "PASS  pg_cron", "PASS  scheduler", "PASS  time zone",
        "PASS  privileges",
        "PASS  configuration", "PASS  index for refresh_tokens", "PASS  index for email_verifications",
        "PASS  index for password_resets", "PASS  index for login_attempts", "PASS  jobs",
    ]  # fmt: skip
    where = (
        "this database (found: this database)"
        if app.layout == "same"
        else "database 'postgres' (found: pg_cron's scheduler runs there)"
    )
    assert f"in {where}" in result.out
    assert "PASS  time zone: schedules fire in " in result.out


def test_missing_index_warns_with_the_statement_that_fixes_it(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES + "DROP INDEX login_attempts_created_at_idx;")
    result = dbjobs_cli("--dsn", app.dsn, "doctor")
    assert result.code == 1
    lines = result.out.splitlines()
    i = lines.index(next(line for line in lines if line.startswith("WARN  index for login_attempts")))
    schema = "public" if app.layout == "separate" else app.schema
    assert (
        lines[i + 1] == f'      fix: CREATE INDEX CONCURRENTLY ON "{schema}"."login_attempts" ("created_at")'
    )
    assert "WARN  installed: dbjobs is not installed in this database" in result.out
    assert "dbjobs" not in app.schemas()  # doctor changes nothing

    app.execute("CREATE INDEX ON login_attempts (created_at)")
    assert "WARN  index" not in dbjobs_cli("--dsn", app.dsn, "doctor").out


def test_configuration_errors_fail(app: AppDb, dbjobs_cli) -> None:
    result = dbjobs_cli("--dsn", app.dsn, "doctor")  # the default tables do not exist here
    assert result.code == 2
    assert (
        "FAIL  configuration: job 'refresh_tokens': table: relation 'refresh_tokens' does not exist"
        in result.out
    )


@pytest.mark.parametrize(
    ("message", "fix"),
    [
        ("job startup timeout", "raise cron.max_running_jobs"),
        ("could not start background process; more details may be available", "raise max_worker_processes"),
        ("connection failed", "cron.use_background_workers = on"),
        ("fe_sendauth: no password supplied\n", "needs a password"),
    ],
)
def test_pg_cron_s_own_failures_get_their_fix(app: AppDb, dbjobs_cli, message: str, fix: str) -> None:
    """Failures before the cleanup ran are only in pg_cron's history (times NULL before 1.6.3)."""
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    (jobid,) = app.cron(
        "SELECT jobid FROM cron.job WHERE database = %s AND jobname LIKE '%%:refresh_tokens'", [app.database]
    )[0]
    app.cron(
        "INSERT INTO cron.job_run_details (jobid, runid, database, username, command, status, return_message)"
        " VALUES (%s, nextval('cron.runid_seq'), %s, current_user, 'CALL', 'failed', %s)",
        [jobid, app.database, message],
    )
    result = dbjobs_cli("--dsn", app.dsn, "doctor")
    assert result.code == 2
    lines = result.out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("FAIL  pg_cron runs"))
    assert "1 recent run(s) failed before the cleanup ran (last time unknown)" in lines[i]
    assert fix in lines[i + 1]


def test_a_job_whose_role_is_gone(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    # As after DROP ROLE: pg_cron keeps the job, under a name no role has any more (inactive
    # here, so that pg_cron 1.6's launcher does not trip over it while the test runs).
    app.cron(
        "UPDATE cron.job SET username = 'gone_role', active = false"
        " WHERE database = %s AND jobname LIKE '%%:login_attempts'",
        [app.database],
    )
    result = dbjobs_cli("--dsn", app.dsn, "doctor")
    assert result.code == 2
    assert "runs as role 'gone_role', which no longer exists" in result.out
    assert "SELECT cron.unschedule(" in result.out
