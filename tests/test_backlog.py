"""status --backlog (the rows eligible for deletion now, exact or estimated, and the oldest one's
expiry), the backlog each run leaves and its growth, and pg_cron runs stuck before they start."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbjobs.status import JobFacts, job_status
from tests.conftest import AppDb
from tests.faults import wait_for
from tests.real_schemas import application_role, grant_tables
from tests.test_partitions import RULE, config, make_table

# The module (dbjobs.status is also the name of its function, which the package exports).
status_module = importlib.import_module("dbjobs.status")

# Two expiry columns (a row expires at the earlier one) and a predicate, an index on each column.
TOKENS = """
CREATE TABLE tokens (id int PRIMARY KEY, expires_at timestamptz, used_at timestamptz, kept boolean NOT NULL);
CREATE INDEX ON tokens (expires_at);
CREATE INDEX ON tokens (used_at);
-- 30 rows expired by expires_at (one of them kept: the predicate leaves it), 10 by used_at only,
-- 20 not expired; the oldest eligible expiry is a used_at 50 days ago.
INSERT INTO tokens SELECT i, now() - (i + 2) * interval '1 day', NULL, i = 30 FROM generate_series(1, 30) i;
UPDATE tokens SET expires_at = now() - interval '90 days' WHERE id = 30;
INSERT INTO tokens SELECT i, now() + interval '1 day', now() - (i + 10) * interval '1 day', false
  FROM generate_series(31, 40) i;
INSERT INTO tokens SELECT i, now() + interval '1 day', NULL, false FROM generate_series(41, 60) i;
-- 30,000 expired rows in a second table: past the exact threshold (10,000).
CREATE TABLE sessions_big (id int, expires_at timestamptz);
CREATE INDEX ON sessions_big (expires_at);
INSERT INTO sessions_big SELECT i, now() - interval '2 days' - i * interval '1 second'
  FROM generate_series(1, 30000) i;
INSERT INTO sessions_big SELECT i, now() + interval '1 day' FROM generate_series(30001, 40000) i;
ANALYZE tokens, sessions_big;
"""
TOKENS_RULE = "(expires_at < now() - interval '1 day' OR used_at < now() - interval '1 day') AND NOT kept"
JOBS = """
grace = "1 second"

[jobs.tokens]
table = "tokens"
expires = ["expires_at", "used_at"]
retain = "1 day"
where = "NOT kept"
schedule = "0 3 * * *"
max_age = "1 day"

[jobs.big]
table = "sessions_big"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 3 * * *"
max_age = "1 day"
"""


def status_json(dbjobs_cli: Any, dsn: str, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = dbjobs_cli("--dsn", dsn, "status", "--format", "json", *args)
    assert result.out, result.err
    report = json.loads(result.out)
    return result.code, {job["name"]: job for job in report["jobs"]}


def test_backlog_exact_below_the_threshold_estimated_above(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    app.execute(TOKENS)
    path = write_config(JOBS)
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    [(expected_oldest,)] = app.execute(
        f"SELECT min(least(expires_at, used_at)) FROM tokens WHERE {TOKENS_RULE}"
    )

    # Without --backlog: no backlog keys, and no query on the jobs' tables.
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert code == 0 and "backlog_rows" not in jobs["tokens"]

    code, jobs = status_json(dbjobs_cli, app.dsn, "--backlog")
    assert code == 0
    tokens, big = jobs["tokens"], jobs["big"]
    assert (tokens["backlog_rows"], tokens["backlog_exact"], tokens["backlog_error"]) == (
        app.count("tokens", TOKENS_RULE),
        True,
        None,
    )
    assert tokens["backlog_rows"] == 39  # 29 by expires_at (one kept), 10 by used_at
    assert datetime.fromisoformat(tokens["oldest_expired_at"]) == expected_oldest
    # Past backlog_exact_max: the planner's estimate, at least what was counted.
    assert big["backlog_exact"] is False
    assert big["backlog_rows"] >= 10_001 and 15_000 <= big["backlog_rows"] <= 60_000
    [(oldest_big,)] = app.execute("SELECT min(expires_at) FROM sessions_big")
    assert datetime.fromisoformat(big["oldest_expired_at"]) == oldest_big

    text = dbjobs_cli("--dsn", app.dsn, "status", "--backlog").out
    assert (
        f"tokens: backlog 39 rows, the oldest expired {expected_oldest.astimezone(UTC):%Y-%m-%d %H:%M}"
        in text
    )
    assert f"big: backlog about {big['backlog_rows']} rows (estimated), the oldest expired " in text
    assert "_maintenance: backlog" not in text  # dbjobs' own pg_cron job has none
    prometheus = dbjobs_cli("--dsn", app.dsn, "status", "--backlog", "--format", "prometheus").out
    assert 'dbjobs_job_backlog_rows{job="tokens"} 39.0' in prometheus
    assert 'dbjobs_job_backlog_exact{job="tokens"} 1.0' in prometheus
    assert 'dbjobs_job_backlog_exact{job="big"} 0.0' in prometheus
    [oldest_line] = [
        line for line in prometheus.splitlines()
        if line.startswith('dbjobs_job_oldest_expired_timestamp_seconds{job="tokens"}')
    ]  # fmt: skip
    assert float(oldest_line.split()[-1]) == round(expected_oldest.timestamp(), 3)
    plain = dbjobs_cli("--dsn", app.dsn, "status", "--format", "prometheus").out
    assert "dbjobs_job_backlog_rows" not in plain

    # What a run deletes is what the backlog said; it records what it left (nothing).
    ran = dbjobs_cli("--dsn", app.dsn, "run", "tokens")
    assert "tokens: deleted 39 rows" in ran.out
    assert app.execute("SELECT backlog_after FROM dbjobs.run WHERE job = 'tokens'") == [(0,)]
    code, jobs = status_json(dbjobs_cli, app.dsn, "--backlog")
    assert (jobs["tokens"]["backlog_rows"], jobs["tokens"]["oldest_expired_at"]) == (0, None)
    assert "tokens: backlog 0 rows\n" in dbjobs_cli("--dsn", app.dsn, "status", "--backlog").out + "\n"


def test_partitioned_backlog_counts_the_partitions_a_run_would_drop(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    make_table(app)
    assert dbjobs_cli("--dsn", app.dsn, "--config", write_config(config()), "install").code == 0
    _, jobs = status_json(dbjobs_cli, app.dsn, "--backlog")
    assert (jobs["sessions"]["backlog_rows"], jobs["sessions"]["backlog_exact"]) == (
        app.count("sessions", RULE),
        True,
    )
    [(oldest,)] = app.execute(f"SELECT min(expires_at) FROM sessions WHERE {RULE}")
    assert datetime.fromisoformat(jobs["sessions"]["oldest_expired_at"]) == oldest


def test_a_backlog_too_slow_to_count_is_unknown_with_the_reason(
    app_separate: AppDb, dbjobs_cli, write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_separate
    app.execute(TOKENS)
    # Each row the rule looks at sleeps 10 ms: counting 39 rows takes longer than the bound.
    slow = JOBS.replace('where = "NOT kept"', 'where = "NOT kept AND pg_sleep(0.01) IS NOT NULL"')
    assert dbjobs_cli("--dsn", app.dsn, "--config", write_config(slow), "install").code == 0
    monkeypatch.setattr(status_module, "BACKLOG_TIMEOUT", 0.1)
    code, jobs = status_json(dbjobs_cli, app.dsn, "--backlog")
    assert code == 0  # the jobs themselves are fine
    assert jobs["tokens"]["backlog_rows"] is None and jobs["tokens"]["backlog_exact"] is None
    assert jobs["tokens"]["backlog_error"] == (
        "not counted within 0.1 s: it reads too much of the table "
        "(`dbjobs doctor` checks for an index on each expires column)"
    )
    assert jobs["big"]["backlog_rows"] >= 10_001  # the other job is still counted
    text = dbjobs_cli("--dsn", app.dsn, "status", "--backlog").out
    assert "tokens: backlog unknown: not counted within 0.1 s" in text


MONITOR_GRANTS = """
GRANT USAGE ON SCHEMA dbjobs TO {role};
GRANT EXECUTE ON FUNCTION dbjobs.status_history(text[]), dbjobs.status_cron(text[], bigint) TO {role};
"""


def test_a_monitoring_role_reads_the_backlog_as_the_job_sees_it_through_rls(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """Row-level security hides some rows from the cleaning role: the backlog counts what its runs
    can delete, read by a monitoring role that may read neither the table nor dbjobs' tables."""
    app = app_separate
    app.execute(
        """
        CREATE SCHEMA auth;
        CREATE TABLE auth.tokens (id int PRIMARY KEY, tenant text NOT NULL, expires_at timestamptz);
        CREATE INDEX ON auth.tokens (expires_at);
        ALTER TABLE auth.tokens ENABLE ROW LEVEL SECURITY;
        INSERT INTO auth.tokens SELECT i, CASE WHEN i <= 4 THEN 'hidden' ELSE 'app' END,
                                       now() - i * interval '1 day'
          FROM generate_series(1, 12) i;
        """
    )
    with application_role(app) as (cleaner, cleaner_dsn):
        grant_tables(app, "auth", cleaner)
        app.execute(
            sql.SQL("CREATE POLICY cleanup ON auth.tokens TO {} USING (tenant <> 'hidden')").format(
                sql.Identifier(cleaner)
            )
        )
        job = (
            '[jobs.tokens]\ntable = "auth.tokens"\nexpires = ["expires_at"]\nretain = "1 day"\n'
            'schedule = "@daily"\n'
        )
        installed = dbjobs_cli("--dsn", cleaner_dsn, "--config", write_config(job), "install")
        assert installed.code == 0, installed.err
        monitor = f"monitor_{app.database}"
        app.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(monitor)))
        monitor_dsn = psycopg.conninfo.make_conninfo(app.dsn, user=monitor)
        try:
            app.execute(sql.SQL(MONITOR_GRANTS).format(role=sql.Identifier(monitor)))
            # Not granted status_backlog: the backlog is unknown, saying which grant; status goes on.
            _, jobs = status_json(dbjobs_cli, monitor_dsn, "--backlog")
            assert jobs["tokens"]["backlog_rows"] is None
            assert jobs["tokens"]["backlog_error"] == (
                "permission denied for function status_backlog: "
                'GRANT EXECUTE ON FUNCTION "dbjobs"."status_backlog"(text) to this role'
            )
            app.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION dbjobs.status_backlog(text) TO {}").format(
                    sql.Identifier(monitor)
                )
            )
            _, jobs = status_json(dbjobs_cli, monitor_dsn, "--backlog")
            # Rows 2..12 are past 1 day; 2..4 are hidden from the cleaner: 8 it can delete.
            assert (jobs["tokens"]["backlog_rows"], jobs["tokens"]["backlog_exact"]) == (8, True)
            [(oldest,)] = app.execute("SELECT expires_at FROM auth.tokens WHERE id = 12")
            assert datetime.fromisoformat(jobs["tokens"]["oldest_expired_at"]) == oldest
            with psycopg.connect(monitor_dsn, autocommit=True) as conn:
                for forbidden in ("SELECT count(*) FROM auth.tokens", "SELECT * FROM dbjobs.run"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(forbidden)
            ran = dbjobs_cli("--dsn", cleaner_dsn, "run", "tokens")
            assert "tokens: deleted 8 rows" in ran.out
        finally:
            app.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(monitor)))
            app.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(monitor)))


def test_each_run_records_what_it_left_and_a_growing_backlog_warns(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    app.execute(TOKENS)
    path = write_config(JOBS.replace('schedule = "0 3 * * *"', 'schedule = "0 3 * * *"\nbatch_size = 5'))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    # The application holds 3 expired rows: the run skips them, and records that it left them.
    with psycopg.connect(app.dsn) as holder:
        holder.execute("SELECT FROM tokens WHERE id IN (1, 2, 3) FOR UPDATE")
        ran = dbjobs_cli("--dsn", app.dsn, "run", "tokens")
        assert "tokens: deleted 36 rows" in ran.out, ran.out
        holder.rollback()
    assert app.execute("SELECT backlog_after FROM dbjobs.run WHERE job = 'tokens'") == [(3,)]
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert (code, jobs["tokens"]["warnings"]) == (0, [])

    # The history of a job falling behind: each run left more than the one before (and a batch).
    app.execute(
        """
        INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at, backlog_after)
        SELECT 'tokens', 'scheduled', 'succeeded', now() - n * interval '1 minute',
               now() - n * interval '1 minute', 100 * (4 - n)
          FROM generate_series(3, 1, -1) n
        """
    )
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert (code, jobs["tokens"]["status"], jobs["tokens"]["state"]) == (1, "warn", "ok")
    assert jobs["tokens"]["warnings"] == [
        "the backlog grew over the last 3 runs (they left 100, 200, 300 rows eligible, newest last): "
        "the job is not keeping up (run it more often, or raise batch_size or max_runtime)"
    ]
    assert "tokens: the backlog grew over the last 3 runs" in dbjobs_cli("--dsn", app.dsn, "status").out
    # A run that catches up ends it.
    assert dbjobs_cli("--dsn", app.dsn, "run", "tokens").code == 0
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert (code, jobs["tokens"]["warnings"]) == (0, [])


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("left", "batch_size", "warns"),
    [
        ((300, 200, 100), 100, True),
        ((300, 200, 100), 500, False),  # the newest left less than a batch: the next run clears it
        ((300, 300, 100), 100, False),
        ((300, 200), 100, False),  # fewer than 3 runs
        ((300, None, 100), 100, False),
        ((300, 200, 100, 400), 100, True),  # only the latest 3 count
    ],
)
def test_growth_needs_three_runs_each_leaving_more(
    left: tuple[int | None, ...], batch_size: int, warns: bool
) -> None:
    facts = JobFacts(None, NOW - timedelta(days=1), None, None, None, None, recent_backlog=left,
                     batch_size=batch_size)  # fmt: skip
    job = job_status("j", "0 * * * *", facts, NOW, timedelta(minutes=10), enabled=True, known=False)
    assert bool(job.warnings) is warns


def _pending_run(app: AppDb, status: str) -> None:
    """A run of the job as pg_cron records it before running it: no start time."""
    app.cron(
        """
        INSERT INTO cron.job_run_details (jobid, runid, database, username, command, status)
        SELECT jobid, nextval('cron.runid_seq'), database, username, command, %s
          FROM cron.job WHERE jobname = %s
        """,
        [status, f"dbjobs:{app.database}:tokens"],
    )


def test_a_pg_cron_run_left_connecting_warns(app: AppDb, dbjobs_cli, write_config) -> None:
    """Simulated: pg_cron's row of a run still connecting, written as pg_cron writes it."""
    app.execute(TOKENS)
    path = write_config(JOBS.replace('schedule = "0 3 * * *"', 'schedule = "*/5 * * * *"', 1))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    _pending_run(app, "connecting")
    # Installed just now: the run was due at the next fire time at the earliest, not yet past.
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert (code, jobs["tokens"]["warnings"]) == (0, [])

    # Installed an hour ago, never run: due at the first fire time after that, long past.
    app.execute("UPDATE dbjobs.job SET installed_at = now() - interval '1 hour' WHERE name = 'tokens'")
    code, jobs = status_json(dbjobs_cli, app.dsn)
    [warning] = jobs["tokens"]["warnings"]
    assert (code, jobs["tokens"]["status"]) == (1, "warn")
    assert warning.startswith("pg_cron's run of it has been connecting since ")
    assert warning.endswith(
        " or earlier, longer than 1 s: pg_cron gives up on a connection after 10 s, so its scheduler is "
        "stuck (pg_stat_activity shows what the 'pg_cron scheduler' waits for)"
    )
    # Once pg_cron moves it on (to running: dbjobs' own history covers that), no warning.
    app.cron(
        "UPDATE cron.job_run_details SET status = 'running', start_time = now() WHERE jobid = %s",
        [app.cron_jobs()[-1][0]],
    )
    code, jobs = status_json(dbjobs_cli, app.dsn)
    assert jobs["tokens"]["warnings"] == []


@pytest.mark.slow
def test_pg_cron_really_stuck_connecting_warns(
    app_same: AppDb, dbjobs_cli, write_config, pg_cron_version: tuple[int, ...]
) -> None:
    """pg_cron's scheduler really blocked: a trigger on its history makes the update of our job's
    run to 'sending' wait for a lock this test holds, so the run stays 'connecting' (as a scheduler
    blocked on a lock, or hung, leaves it) until the lock is released."""
    app = app_same
    app.execute(TOKENS)
    every = "1 seconds" if pg_cron_version >= (1, 5) else "* * * * *"
    path = write_config(JOBS.replace('schedule = "0 3 * * *"', f'schedule = "{every}"', 1))
    jobname = f"dbjobs:{app.database}:tokens"
    key = 7_041_977
    with psycopg.connect(app.cron_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        holder.execute(
            sql.SQL(
                """
                CREATE FUNCTION public.dbjobs_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.status = 'sending'
                       AND NEW.jobid = (SELECT jobid FROM cron.job WHERE jobname = {jobname}) THEN
                        PERFORM pg_advisory_xact_lock({key});
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER dbjobs_test_hold BEFORE UPDATE ON cron.job_run_details
                    FOR EACH ROW EXECUTE FUNCTION public.dbjobs_test_hold();
                """
            ).format(jobname=sql.Literal(jobname), key=sql.Literal(key))
        )
        try:
            assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0

            def stuck() -> list[str]:
                _, jobs = status_json(dbjobs_cli, app.dsn)
                return [w for w in jobs["tokens"]["warnings"] if w.startswith("pg_cron's run of it")]

            [warning] = wait_for(stuck, 90, "status to see pg_cron's run stuck connecting", interval=0.5)
            assert "has been connecting since " in warning
            assert app.cron(
                "SELECT d.status, d.start_time FROM cron.job_run_details d JOIN cron.job j USING (jobid)"
                " WHERE j.jobname = %s ORDER BY d.runid DESC LIMIT 1",
                [jobname],
            ) == [("connecting", None)]
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [key])
            holder.execute("DROP TRIGGER dbjobs_test_hold ON cron.job_run_details")
            holder.execute("DROP FUNCTION public.dbjobs_test_hold()")
    # Released, pg_cron goes on: the run is recorded, and the warning is gone.
    wait_for(
        lambda: app.execute("SELECT count(*) FROM dbjobs.run WHERE job = 'tokens' AND trigger = 'scheduled'")[
            0
        ][0],
        30,
        "the released run to reach dbjobs",
    )
    wait_for(lambda: not stuck(), 30, "the warning to go")
