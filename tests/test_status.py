"""Status states and exit codes, set up by writing history rows (never by waiting)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import AppDb

JOB = """
grace = "10 minutes"
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 * * * *"
"""
EXIT = {"pass": 0, "warn": 1, "fail": 2}


@pytest.fixture
def installed(app: AppDb, dbjobs_cli, write_config):  # type: ignore[no-untyped-def]
    app.execute("CREATE TABLE sessions (id int, expires_at timestamptz)")

    def install(extra: str = "") -> str:
        config = write_config(JOB + extra)
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
        assert result.code == 0, result.err
        return config

    return install


def report(dbjobs_cli, app: AppDb, config: str) -> dict:
    """The JSON status, with "jobs" holding only the sessions job (dbjobs' maintenance job aside)."""
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json")
    data = json.loads(result.out)
    assert result.code == EXIT[data["status"]]
    assert [job["name"] for job in data["jobs"]] == ["sessions", "_maintenance"]
    data["jobs"] = data["jobs"][:1]
    return data


def add_run(app: AppDb, status: str, finished_ago: str, error: str | None = None, rows: int = 0) -> None:
    app.execute(
        "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at, rows_deleted, error)"
        " VALUES ('sessions', 'scheduled', %s, now() - %s::interval - interval '2 seconds',"
        " now() - %s::interval, %s, %s)",
        [status, finished_ago, finished_ago, rows, error],
    )


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_pending_then_stale_when_a_run_was_due(installed, app: AppDb, dbjobs_cli) -> None:
    config = installed()
    data = report(dbjobs_cli, app, config)
    [job] = data["jobs"]
    assert (data["status"], job["state"], job["last_run_at"]) == ("pass", "pending", None)
    installed_at = app.execute("SELECT installed_at FROM dbjobs.job")[0][0]
    first_fire = installed_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert parse(job["stale_at"]) == first_fire + timedelta(minutes=10)
    assert parse(job["next_run_at"]) >= first_fire

    # Installed three hours ago and never run: a run was due more than grace ago.
    app.execute("UPDATE dbjobs.job SET installed_at = now() - interval '3 hours'")
    data = report(dbjobs_cli, app, config)
    assert (data["status"], data["jobs"][0]["state"]) == ("warn", "stale")


def test_ok_stale_and_failing_from_history(installed, app: AppDb, dbjobs_cli) -> None:
    config = installed()
    add_run(app, "succeeded", "1 minute", rows=7)
    data = report(dbjobs_cli, app, config)
    [job] = data["jobs"]
    assert (data["status"], job["state"], job["last_rows_deleted"], job["last_duration_ms"]) == (
        "pass",
        "ok",
        7,
        2000.0,
    )
    assert parse(job["last_success_at"]) - parse(job["last_run_at"]) == timedelta(seconds=2)

    app.execute("DELETE FROM dbjobs.run")
    add_run(app, "succeeded", "2 hours")
    assert report(dbjobs_cli, app, config)["jobs"][0]["state"] == "stale"

    add_run(app, "failed", "1 minute", error="canceling statement due to lock timeout")
    data = report(dbjobs_cli, app, config)
    [job] = data["jobs"]
    assert (data["status"], job["state"], job["last_run_status"]) == ("warn", "failing", "failed")
    assert job["last_error"] == "canceling statement due to lock timeout"
    assert parse(job["last_success_at"]) < parse(job["last_run_at"])

    add_run(app, "skipped", "10 seconds")  # a skipped run changes nothing
    assert report(dbjobs_cli, app, config)["jobs"][0]["state"] == "failing"
    add_run(app, "succeeded", "5 seconds")
    assert report(dbjobs_cli, app, config)["jobs"][0]["state"] == "ok"


def test_max_age_replaces_the_schedule_aware_bound(installed, app: AppDb, dbjobs_cli) -> None:
    config = installed('max_age = "2 hours"\n')
    add_run(app, "succeeded", "90 minutes")  # schedule-aware would say stale; max_age says fine
    data = report(dbjobs_cli, app, config)
    assert data["jobs"][0]["state"] == "ok"
    success = parse(data["jobs"][0]["last_success_at"])
    assert parse(data["jobs"][0]["stale_at"]) == success + timedelta(hours=2)
    add_run(app, "succeeded", "3 hours")
    app.execute("DELETE FROM dbjobs.run WHERE finished_at > now() - interval '100 minutes'")
    assert report(dbjobs_cli, app, config)["jobs"][0]["state"] == "stale"


def test_a_run_pg_cron_could_not_start_counts_as_failed(installed, app: AppDb, dbjobs_cli) -> None:
    config = installed()
    add_run(app, "succeeded", "1 minute")
    [(jobid, *_)] = app.cron_jobs()

    def cron_run(status: str, message: str, started: bool) -> None:
        app.cron(
            "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
            " return_message, start_time, end_time)"
            " SELECT jobid, nextval('cron.runid_seq'), NULL, database, username, command, %s, %s,"
            " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END FROM cron.job WHERE jobid = %s",
            [status, message, started, started, jobid],
        )

    cron_run("failed", "connection failed", started=False)
    data = report(dbjobs_cli, app, config)
    [job] = data["jobs"]
    assert (data["status"], job["state"], job["last_error"]) == (
        "warn",
        "failing",
        "pg_cron: connection failed",
    )
    cron_run("succeeded", "CALL", started=True)
    assert report(dbjobs_cli, app, config)["jobs"][0]["state"] == "ok"
    app.cron("DELETE FROM cron.job_run_details WHERE jobid = %s", [jobid])


def test_a_job_switched_off_in_pg_cron_behind_dbjobs_back_warns(installed, app: AppDb, dbjobs_cli) -> None:
    config = installed()
    add_run(app, "succeeded", "1 minute")
    [(jobid, *_)] = app.cron_jobs()
    app.cron("SELECT cron.alter_job(%s, active => false)", [jobid])
    data = report(dbjobs_cli, app, config)
    [job] = data["jobs"]
    assert (data["status"], job["state"], job["active"]) == ("warn", "stale", False)
    assert "run `dbjobs install`" in job["last_error"]
