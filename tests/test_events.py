"""Events: `NOTIFY dbjobs` from the transaction that records each outcome, and the failures
only pg_cron saw, sent by the maintenance job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbjobs.cron import MAINTENANCE_JOB, cron_job_name
from tests.conftest import AppDb
from tests.faults import wait_for

# tokens: a divisor of 0 in an expired row makes its runs fail. sessions: 40
# expired rows in batches of 2 with a bound of 1 ms stop after the first batch.
CONFIG = """
[jobs.tokens]
table = "tokens"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 0 1 1 *"  # never during a test: pg_cron would run it beside the manual runs
where = "100 / divisor > 0"

[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 0 1 1 *"  # never during a test: pg_cron would run it beside the manual runs
batch_size = 2
max_runtime = "1 millisecond"
"""
TABLES = """
CREATE TABLE tokens (id int PRIMARY KEY, expires_at timestamptz, divisor int);
INSERT INTO tokens SELECT i, now() - interval '2 hours', 1 FROM generate_series(1, 5) i;
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 hours' FROM generate_series(1, 40) i;
INSERT INTO sessions SELECT i, now() FROM generate_series(41, 2040) i;
ANALYZE sessions;
"""
DONE = "('succeeded', 'failed')"  # pg_cron's statuses of a run that ended
KEYS = [
    "database", "job", "run_id", "cron_run_id", "trigger", "outcome",
    "rows_deleted", "duration_ms", "error", "finished_at",
]  # fmt: skip


@pytest.fixture
def installed(app: AppDb, dbjobs_cli: Any, write_config: Any) -> tuple[AppDb, str]:
    app.execute(TABLES)
    config = write_config(CONFIG)
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert result.code == 0, result.err
    return app, config


@pytest.fixture
def listener(installed: tuple[AppDb, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(installed[0].dsn, autocommit=True) as conn:
        conn.execute("LISTEN dbjobs")
        yield conn


def events(conn: psycopg.Connection[Any], count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` events, in the order they were committed."""
    got = [json.loads(n.payload) for n in conn.notifies(timeout=timeout, stop_after=count)]
    assert len(got) == count, f"expected {count} events, got {got}"
    return got


def test_an_event_per_outcome_from_the_transaction_that_records_it(installed, listener, dbjobs_cli) -> None:
    app, config = installed

    def run(job: str) -> None:
        dbjobs_cli("--dsn", app.dsn, "--config", config, "run", job)

    run("tokens")
    app.execute("INSERT INTO tokens VALUES (6, now() - interval '2 hours', 0)")
    run("tokens")
    with psycopg.connect(app.dsn, autocommit=True) as holder:  # another run of tokens in progress
        holder.execute("SELECT pg_advisory_lock(hashtext('dbjobs.run'), hashtext('tokens'))")
        run("tokens")
    run("sessions")
    # A run whose session died (left 'running'): the next run marks it failed, an event too.
    app.execute("DELETE FROM tokens WHERE divisor = 0")
    app.execute("INSERT INTO dbjobs.run (job, trigger, status) VALUES ('sessions', 'scheduled', 'running')")
    run("sessions")

    got = events(listener, 6)
    assert all(list(e) == KEYS for e in got)
    history = app.execute(
        "SELECT id, job, trigger, status, rows_deleted, error FROM dbjobs.run"
        " WHERE status <> 'running' ORDER BY id"
    )
    # Run ids: the interrupted run's row was made before the run that ended it.
    assert sorted(
        (e["run_id"], e["job"], e["trigger"], e["outcome"], e["rows_deleted"], e["error"]) for e in got
    ) == [tuple(row) for row in history]
    outcomes = [(e["job"], e["outcome"]) for e in got]
    assert outcomes == [
        ("tokens", "succeeded"),
        ("tokens", "failed"),
        ("tokens", "skipped"),
        ("sessions", "partial"),
        ("sessions", "failed"),
        ("sessions", "partial"),
    ]
    assert got[0]["rows_deleted"] == 5 and got[0]["error"] is None
    assert "division by zero" in got[1]["error"]
    assert got[2]["error"] == "another run of this job was in progress"
    assert got[4]["error"] == "interrupted: the session running it ended before it finished"
    assert got[4]["trigger"] == "scheduled"
    assert {e["database"] for e in got} == {app.database}
    assert all(e["cron_run_id"] is None and e["finished_at"].endswith("+00:00") for e in got)
    assert all(isinstance(e["duration_ms"], int) and e["duration_ms"] >= 0 for e in got)


def test_a_rolled_back_outcome_sends_no_event(installed, listener) -> None:
    app, _ = installed
    with psycopg.connect(app.dsn) as conn:  # one transaction, rolled back
        [(run_id,)] = conn.execute("SELECT dbjobs.start_run('tokens', 'manual')").fetchall()
        conn.execute("SELECT dbjobs.finish_run(%s, NULL)", [run_id])
        conn.rollback()
    with psycopg.connect(app.dsn, autocommit=True) as holder, psycopg.connect(app.dsn) as conn:
        holder.execute("SELECT pg_advisory_lock(hashtext('dbjobs.run'), hashtext('tokens'))")
        assert conn.execute("SELECT dbjobs.start_run('tokens', 'manual')").fetchall() == [(None,)]
        conn.rollback()
    assert app.count("dbjobs.run") == 0
    # Committed now: this is the first event the listener gets.
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        [(run_id,)] = conn.execute("SELECT dbjobs.start_run('tokens', 'manual')").fetchall()
        conn.execute("SELECT dbjobs.finish_run(%s, repeat('é', 5000))", [run_id])
    [event] = events(listener, 1)
    assert (event["run_id"], event["outcome"]) == (run_id, "failed")
    assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    # A long error is cut, well within NOTIFY's 8,000 bytes.
    assert event["error"] == "é" * 1000
    assert len(json.dumps(event, ensure_ascii=False).encode()) < 8000


def test_a_monitoring_role_reads_the_events_since_a_time(installed, dbjobs_cli) -> None:
    app, config = installed
    dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "tokens")
    [(first_end,)] = app.execute("SELECT max(finished_at) FROM dbjobs.run")
    dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    role = f"watcher_{app.database}"[:60]
    app.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        app.execute(f'GRANT USAGE ON SCHEMA dbjobs TO "{role}"')
        app.execute(f'GRANT EXECUTE ON FUNCTION dbjobs.status_events(timestamptz) TO "{role}"')
        with psycopg.connect(app.dsn, user=role, autocommit=True) as conn:
            rows = conn.execute("SELECT dbjobs.status_events(%s)", [first_end]).fetchall()
            assert [(e["job"], e["outcome"]) for (e,) in rows] == [("sessions", "partial")]
            rows = conn.execute("SELECT dbjobs.status_events('-infinity')").fetchall()
            assert [e["job"] for (e,) in rows] == ["tokens", "sessions"]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM dbjobs.run")
    finally:
        app.execute(f'DROP OWNED BY "{role}"')
        app.execute(f'DROP ROLE "{role}"')


def test_a_run_pg_cron_starts_sends_its_event(installed, listener, pg_cron_version) -> None:
    if pg_cron_version < (1, 5):
        pytest.skip(
            "needs pg_cron 1.5's schedules in seconds (a minute's schedule would wait for the minute)"
        )
    app, _ = installed
    [(jobid,)] = app.cron(
        "SELECT jobid FROM cron.job WHERE jobname = %s", [cron_job_name(app.database, "tokens")]
    )
    app.cron("SELECT cron.alter_job(%s, schedule => '1 seconds')", [jobid])
    try:
        [event] = events(listener, 1, timeout=15)
    finally:
        app.cron("SELECT cron.alter_job(%s, active => false)", [jobid])
    assert (event["job"], event["trigger"], event["outcome"], event["rows_deleted"]) == (
        "tokens", "scheduled", "succeeded", 5
    )  # fmt: skip


def cron_failures(app: AppDb, jobid: int) -> list[tuple[Any, ...]]:
    return app.cron(
        "SELECT runid, return_message FROM cron.job_run_details"
        " WHERE jobid = %s AND status = 'failed' AND return_message = 'connection failed' ORDER BY runid",
        [jobid],
    )


def test_runs_pg_cron_could_not_start_are_sent_by_the_maintenance_job(
    app_separate: AppDb, dbjobs_cli: Any, write_config: Any, pg_cron_version: tuple[int, ...]
) -> None:
    """pg_cron cannot connect to the application's database: no run of dbjobs' sees it; the
    maintenance job, in pg_cron's database, sends each failure once, where it runs."""
    app = app_separate
    app.execute(TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "--config", write_config(CONFIG), "install").code == 0
    [(jobid,)] = app.cron(
        "SELECT jobid FROM cron.job WHERE jobname = %s", [cron_job_name(app.database, "tokens")]
    )
    [(maintenance, command)] = app.cron(
        "SELECT jobid, command FROM cron.job WHERE jobname = %s",
        [cron_job_name(app.database, MAINTENANCE_JOB)],
    )
    seconds = pg_cron_version >= (1, 5)  # interval schedules: no minute boundary to wait for
    app.cron(f'ALTER DATABASE "{app.database}" ALLOW_CONNECTIONS false')
    try:
        app.cron(
            "SELECT cron.alter_job(%s, schedule => %s)", [jobid, "1 seconds" if seconds else "* * * * *"]
        )
        wait_for(lambda: cron_failures(app, jobid), 75, "pg_cron to fail to start the job")
        with psycopg.connect(app.cron_dsn, autocommit=True) as listener:
            listener.execute("LISTEN dbjobs")
            # By hand (no maintenance run before it): every such failure in pg_cron's history.
            failures = cron_failures(app, jobid)
            app.cron(command)
            got = [json.loads(n.payload) for n in listener.notifies(timeout=2)]
            assert [e["cron_run_id"] for e in got][: len(failures)] == [f[0] for f in failures]
            event = got[0]
            assert list(event) == KEYS
            assert (event["database"], event["job"], event["run_id"], event["outcome"]) == (
                app.database, "tokens", None, "failed"
            )  # fmt: skip
            assert event["error"] == failures[0][1] == "connection failed"
            if not seconds:
                return  # pg_cron 1.4: the maintenance job's own runs would take minutes

            # Run by pg_cron: each failure is sent once, by the first successful maintenance run
            # after it. The two jobs take turns, so that no failure is still being recorded while
            # a maintenance run reads pg_cron's history (see "Alerts" in the README).
            finished = "SELECT count(*) FROM cron.job_run_details WHERE jobid = %s AND status IN " + DONE
            unfinished = finished.replace(" IN ", " NOT IN ")

            def stop(job: int) -> None:
                app.cron("SELECT cron.alter_job(%s, active => false)", [job])
                wait_for(lambda: int(app.cron(unfinished, [job])[0][0]) == 0, 30, f"job {job}'s last run")

            def turn(job: int, runs: int) -> None:
                """Let pg_cron run ``job`` every second until it has ``runs`` more finished runs."""
                before = int(app.cron(finished, [job])[0][0])
                app.cron("SELECT cron.alter_job(%s, schedule => '1 seconds', active => true)", [job])
                wait_for(
                    lambda: int(app.cron(finished, [job])[0][0]) >= before + runs, 30, f"runs of job {job}"
                )
                stop(job)

            stop(jobid)
            turn(maintenance, 2)  # the first sends every failure so far, the second none
            first_sent = [json.loads(n.payload)["cron_run_id"] for n in listener.notifies(timeout=1)]
            assert first_sent == [f[0] for f in cron_failures(app, jobid)]
            turn(jobid, 2)  # two more failures
            turn(maintenance, 2)  # sent by the first of these, once
            then_sent = [json.loads(n.payload)["cron_run_id"] for n in listener.notifies(timeout=1)]
            assert then_sent == [f[0] for f in cron_failures(app, jobid)][len(first_sent) :]
            assert len(then_sent) >= 2
    finally:
        app.cron(f'ALTER DATABASE "{app.database}" ALLOW_CONNECTIONS true')
