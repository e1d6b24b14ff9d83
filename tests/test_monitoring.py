"""A separate monitoring role reads the status of dbjobs' jobs, and nothing else."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb

GRANTS = """
GRANT USAGE ON SCHEMA dbjobs TO {role};
GRANT EXECUTE ON FUNCTION dbjobs.status_history(text[]), dbjobs.status_cron(text[], bigint) TO {role};
"""


def test_monitoring_role(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
    role = f"monitor_{app.database}"
    app.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    monitor_dsn = psycopg.conninfo.make_conninfo(app.dsn, user=role)
    try:
        # Before the grants: nothing readable, so nothing is pretended.
        denied = dbjobs_cli("--dsn", monitor_dsn, "status")
        assert denied.code == 3 and "permission denied" in denied.err

        app.execute(sql.SQL(GRANTS).format(role=sql.Identifier(role)))
        # An upgrade creates the functions again: the grants must survive it.
        app.execute("UPDATE dbjobs.meta SET value = 'older' WHERE key = 'sql_digest'")
        assert "update schema" in dbjobs_cli("--dsn", app.dsn, "install").out
        result = dbjobs_cli("--dsn", monitor_dsn, "status", "--format", "json")
        report = json.loads(result.out)
        assert result.code == 0, result.err
        assert report["scheduler"]["running"] is True
        states = {job["name"]: job["state"] for job in report["jobs"]}
        assert states == {
            "refresh_tokens": "ok", "email_verifications": "ok",
            "password_resets": "ok", "login_attempts": "ok",
            # dbjobs' maintenance job lives only in pg_cron's history: out of sight in the other layout
            **({"_maintenance": "pending"} if app.layout == "same" else {}),
        }  # fmt: skip
        rows = {job["name"]: job["last_rows_deleted"] for job in report["jobs"]}
        assert rows["email_verifications"] == 3
        if app.layout == "same":
            # pg_cron's rows come through the SECURITY DEFINER function: a vanished job is seen.
            assert {job["active"] for job in report["jobs"]} == {True}
            app.cron("SELECT cron.unschedule(%s::bigint)", [app.cron_jobs()[0][0]])
            assert dbjobs_cli("--dsn", monitor_dsn, "status").code == 2
        else:
            # pg_cron lives in another database, out of the functions' reach: registration is
            # unknown (null), and staleness still catches a job that stops running.
            assert {job["active"] for job in report["jobs"]} == {None}

        with psycopg.connect(monitor_dsn, autocommit=True) as conn:
            for forbidden in (
                "SELECT * FROM dbjobs.run",
                "SELECT * FROM dbjobs.job",
                f'SELECT * FROM "{app.schema}".refresh_tokens',
                "CALL dbjobs.run_job('refresh_tokens')",
                "SELECT dbjobs.start_run('refresh_tokens', 'manual')",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forbidden)
    finally:
        app.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        app.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_status_cron_shows_nothing_but_dbjobs_jobs_of_this_database(app_same: AppDb, dbjobs_cli) -> None:
    app = app_same
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    command = "COPY (SELECT 1) TO PROGRAM 'curl -u admin:S3cret example.invalid'"
    [(secret,)] = app.cron("SELECT cron.schedule('backup', '@daily', %s)", [command])
    try:
        asked = ["backup", f"dbjobs:{app.database}:refresh_tokens"]
        rows = app.execute("SELECT * FROM dbjobs.status_cron(%s, 1000000000)", [asked])
        assert [row[1] for row in rows] == [f"dbjobs:{app.database}:refresh_tokens"]
        assert all("S3cret" not in str(row) for row in rows)
    finally:
        app.cron("SELECT cron.unschedule(%s::bigint)", [secret])
