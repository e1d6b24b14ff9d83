"""dbjobs doctor: each check passes, warns or fails with a one-line fix."""

from __future__ import annotations

from tests.conftest import DEFAULT_TABLES, AppDb


def test_healthy_setup_passes_every_check(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "doctor")
    assert result.code == 0, result.out
    names = [line.split(":")[0] for line in result.out.splitlines()]
    assert names == [
        "PASS  connection", "PASS  server version", "PASS  pg_cron", "PASS  scheduler", "PASS  privileges",
        "PASS  configuration", "PASS  index for refresh_tokens", "PASS  index for email_verifications",
        "PASS  index for password_resets", "PASS  index for login_attempts", "PASS  jobs",
    ]  # fmt: skip
    where = "this database" if app.layout == "same" else "database 'postgres'"
    assert f"in {where} (cron.database_name)" in result.out


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
