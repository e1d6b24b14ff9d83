"""History pruning: dbjobs' own history by each run, pg_cron's by dbjobs' maintenance job."""

from __future__ import annotations

import json

import psycopg

from tests.conftest import AppDb

CONFIG = """
history_retention = "{retention}"
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "*/10 * * * *"
"""


def install(app: AppDb, dbjobs_cli, write_config, retention: str = "7 days") -> str:
    config = write_config(CONFIG.format(retention=retention))
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert result.code == 0, result.err
    return config


def test_each_run_prunes_its_own_old_history(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE sessions (id int, expires_at timestamptz)")
    config = install(app, dbjobs_cli, write_config)
    app.execute(
        "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at) VALUES"
        " ('sessions', 'scheduled', 'succeeded', now() - interval '8 days', now() - interval '8 days'),"
        " ('sessions', 'scheduled', 'succeeded', now() - interval '6 days', now() - interval '6 days'),"
        " ('gone_job', 'scheduled', 'succeeded', now() - interval '9 days', now() - interval '9 days')"
    )
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    kept = app.execute("SELECT job, now() - started_at < interval '7 days' FROM dbjobs.run ORDER BY id")
    assert kept == [("sessions", True), ("gone_job", False), ("sessions", True)]


def test_maintenance_job_prunes_only_dbjobs_old_pg_cron_history(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE sessions (id int, expires_at timestamptz)")
    install(app, dbjobs_cli, write_config)
    [(jobid, *_)] = app.cron_jobs()
    [(maintenance_id, where, schedule, command, active)] = app.maintenance_job()
    assert (schedule, active) == ("47 * * * *", True)
    assert where == app.cron("SELECT current_database()")[0][0]  # runs in pg_cron's own database
    [(foreign,)] = app.cron(
        "SELECT cron.schedule_in_database('foreign', '@daily', 'SELECT 1', %s)", [app.database]
    )

    def add(job: int, age: str | None, status: str = "succeeded") -> None:
        app.cron(
            "INSERT INTO cron.job_run_details (jobid, runid, database, username, command, status,"
            " return_message, start_time, end_time)"
            " VALUES (%s, nextval('cron.runid_seq'), %s, current_user, 'x', %s, 'x',"
            " now() - %s::interval, now() - %s::interval)",
            [job, app.database, status, age, age],
        )

    # In the order pg_cron would have written them: run ids grow with time.
    add(foreign, "30 days")  # another application's history is not dbjobs' to prune
    add(jobid, None, "failed")  # could not start, before the old run below: old too
    add(jobid, "10 days")
    add(jobid, None, "failed")  # could not start, after the last old run: kept
    add(jobid, "1 day")
    # Run the maintenance command as pg_cron would, as the installing role.
    with psycopg.connect(app.cron_dsn, autocommit=True) as conn:
        assert conn.execute(command).rowcount == 2
    left = app.cron(
        "SELECT jobid, end_time IS NULL FROM cron.job_run_details WHERE jobid IN (%s, %s) ORDER BY runid",
        [jobid, foreign],
    )
    assert left == [(foreign, False), (jobid, True), (jobid, False)]

    # Status reports the maintenance job like any job, from pg_cron's history.
    app.cron(
        "INSERT INTO cron.job_run_details (jobid, runid, database, username, command, status, return_message,"
        " start_time, end_time) VALUES (%s, nextval('cron.runid_seq'), 'x', current_user, 'x', 'succeeded',"
        " 'DELETE 2', now(), now())",
        [maintenance_id],
    )
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    [job] = [j for j in report["jobs"] if j["name"] == "_maintenance"]
    assert (job["state"], job["last_run_status"], job["last_rows_deleted"]) == ("ok", "succeeded", 2)
    app.cron("SELECT cron.unschedule(%s::bigint)", [foreign])


def test_changing_history_retention_updates_the_maintenance_job(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE sessions (id int, expires_at timestamptz)")
    install(app, dbjobs_cli, write_config)
    [(jobid, *_)] = app.maintenance_job()
    config = write_config(CONFIG.format(retention="30 days"))
    changed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert changed.out.splitlines() == [
        "update setting history_retention: 7 days -> 30 days",  # what each run's pruning reads
        "update job _maintenance: history_retention changed",
    ]
    [(same_id, _, _, command, _)] = app.maintenance_job()
    assert same_id == jobid and "'30 days'::interval" in command
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'history_retention'") == [("30 days",)]
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall").code == 0
    assert app.maintenance_job() == []
