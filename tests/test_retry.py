"""Retry with backoff (retry_after): the backoff's arithmetic against the database, the retry job's
choices, install / drift / uninstall of dbjobs' retry job, and pg_cron itself retrying a failed run
in both layouts, as a role that is not a superuser (one wait for a minute boundary, shared)."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbjobs import install, run, schedule
from dbjobs.config import parse_config
from dbjobs.cron import RETRY_JOB, cron_job_name
from tests import conftest
from tests.conftest import AppDb

TABLE = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
INSERT INTO sessions VALUES (1, now() - interval '1 day'), (2, now() - interval '2 days'),
                            (3, now() + interval '1 day');
"""


def job(name: str, schedule_: str, extra: str = "") -> str:
    return (
        f'[jobs.{name}]\ntable = "sessions"\nexpires = "expires_at"\nretain = "1 hour"\n'
        f'schedule = "{schedule_}"\n{extra}\n'
    )


# ---------------------------------------------------------------------------
# The schedule's period (no database)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "period"),
    [
        ("* * * * *", timedelta(minutes=1)),
        ("*/15 * * * *", timedelta(minutes=15)),
        ("0 2 * * *", timedelta(days=1)),
        ("0 2,3 * * *", timedelta(hours=1)),  # irregular: the shortest gap
        ("*/7 9-17 * * 1-5", timedelta(minutes=4)),  # :56, then :00 of the next hour
        ("@weekly", timedelta(days=7)),
        ("0 0 1 * *", timedelta(days=28)),  # February
        ("30 seconds", timedelta(seconds=30)),
    ],
)
def test_period_is_the_shortest_gap_between_fire_times(expression: str, period: timedelta) -> None:
    assert schedule.period(expression) == period


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # Inherited by both jobs, reported once.
        (
            'retry_after = "soon"\n' + job("a", "0 2 * * *") + job("b", "0 3 * * *"),
            "retry_after: 'soon' is not a PostgreSQL interval",
        ),
        (job("a", "0 2 * * *", 'retry_after = "0 minutes"'), "job 'a': retry_after: must be more than 0"),
        (
            job("a", "0 2 * * *", 'retry_after = "-5 minutes"'),
            "job 'a': retry_after: '-5 minutes' is negative",
        ),
        (job("a", "0 2 * * *", "retry_after = 5"), "job 'a': retry_after must be a non-empty string, not 5"),
    ],
)
def test_a_bad_retry_after_is_one_line_and_changes_nothing(
    app_same: AppDb, dbjobs_cli, write_config, config: str, message: str
) -> None:
    app = app_same
    app.execute(TABLE)
    path = write_config(config)
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "install")
    assert result.code == 2, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and message in lines[0], result.err
    assert "dbjobs" not in app.schemas()
    assert app.cron("SELECT jobname FROM cron.job WHERE jobname LIKE 'dbjobs:%%'") == []


# ---------------------------------------------------------------------------
# The backoff, with run history at chosen times
# ---------------------------------------------------------------------------

ARITHMETIC = (
    job("daily", "0 3 * * *", 'retry_after = "5 minutes"')
    + job("hourly", "0 * * * *", 'retry_after = "20 minutes"')
    + job("minutely", "* * * * *", 'retry_after = "10 seconds"')
    + job("plain", "0 3 * * *")
)


@pytest.fixture
def arithmetic(app_same: AppDb, dbjobs_cli, write_config) -> AppDb:
    app_same.execute(TABLE)
    result = dbjobs_cli("--dsn", app_same.dsn, "--config", write_config(ARITHMETIC), "install")
    assert result.code == 0, result.err
    # These tests call retries() and retry_due() on histories they write: pg_cron's own _retry
    # job, firing at a minute boundary meanwhile, would run the jobs those histories make due.
    app_same.cron("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE '%:\\_retry'")
    return app_same


def history(app: AppDb, name: str, *runs: tuple[str, datetime, datetime]) -> None:
    """Replace ``name``'s history with runs of (status, started_at, finished_at), oldest first."""
    app.execute("DELETE FROM dbjobs.run WHERE job = %s", [name])
    for status, started, finished in runs:
        app.execute(
            "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at)"
            " VALUES (%s, 'scheduled', %s, %s, %s)",
            [name, status, started, finished],
        )


def retries(app: AppDb) -> dict[str, tuple[int, datetime]]:
    return {name: (n, at) for name, n, _, at in app.execute("SELECT * FROM dbjobs.retries()")}


def status_retry_at(dbjobs_cli: Any, app: AppDb) -> dict[str, datetime]:
    """Each job's retry_at in `dbjobs status --format json` (where it has one)."""
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    return {j["name"]: datetime.fromisoformat(j["retry_at"]) for j in report["jobs"] if j.get("retry_at")}


def test_the_backoff_doubles_per_failure_and_stops_a_minute_before_the_next_fire(
    arithmetic: AppDb, dbjobs_cli
) -> None:
    app = arithmetic
    start = datetime(2026, 1, 1, 3, 0, 0, 200000, tzinfo=UTC)  # a fire of "0 3 * * *"
    took = timedelta(seconds=2)
    assert app.execute("SELECT retry_after, retry_cap FROM dbjobs.job WHERE name = 'daily'") == [
        (timedelta(minutes=5), timedelta(days=1))
    ]
    ok = ("succeeded", start - timedelta(days=1), start - timedelta(days=1) + took)

    # n failures in a row, the latest at `start`: due 5 minutes * 2^(n-1) after it ended.
    for n in range(1, 10):
        earlier = [
            ("failed", start - timedelta(hours=i), start - timedelta(hours=i) + took)
            for i in range(n - 1, 0, -1)
        ]
        history(app, "daily", ok, *earlier, ("failed", start, start + took))
        assert retries(app)["daily"] == (n, start + took + timedelta(minutes=5 * 2 ** (n - 1))), n
        if n in (1, 9):  # status says the same, by the same rule
            assert status_retry_at(dbjobs_cli, app)["daily"] == retries(app)["daily"][1]
    # The 10th: 2,560 minutes is past the next fire (a day after 03:00, less a minute): no retry,
    # the schedule's own run comes first.
    earlier = [
        ("failed", start - timedelta(hours=i), start - timedelta(hours=i) + took) for i in range(9, 0, -1)
    ]
    history(app, "daily", ok, *earlier, ("failed", start, start + took))
    assert "daily" not in retries(app)
    assert "daily" not in status_retry_at(dbjobs_cli, app)

    # A success or a partial run ends the streak; the latest run a success: nothing to retry.
    history(app, "daily", ("failed", start, start + took), ("succeeded", start + took, start + 2 * took))
    assert "daily" not in retries(app)
    history(app, "daily", ("failed", start - timedelta(hours=2), start), ("partial", start, start + took),
            ("failed", start + took, start + 2 * took))  # fmt: skip
    assert retries(app)["daily"] == (1, start + 2 * took + timedelta(minutes=5))

    # Hourly, 20 minutes: 20, then 40 (due at :40), then 80 would pass the next fire: none.
    hour = datetime(2026, 1, 1, 5, 0, 1, tzinfo=UTC)
    history(app, "hourly", ("failed", hour, hour + took))
    assert retries(app)["hourly"] == (1, hour + took + timedelta(minutes=20))
    history(app, "hourly", ("failed", hour - timedelta(hours=1), hour), ("failed", hour, hour + took))
    assert retries(app)["hourly"] == (2, hour + took + timedelta(minutes=40))
    history(
        app,
        "hourly",
        *[("failed", hour - timedelta(hours=i), hour - timedelta(hours=i) + took) for i in (2, 1, 0)],
    )
    assert "hourly" not in retries(app)
    # A run that took most of the hour leaves no room before the next fire.
    history(app, "hourly", ("failed", hour, hour + timedelta(minutes=45)))
    assert "hourly" not in retries(app)

    # A job that runs every minute is never retried, nor one without retry_after.
    history(app, "minutely", ("failed", hour, hour + took))
    history(app, "plain", ("failed", start, start + took))
    assert set(retries(app)) == {"daily"}


def test_retry_due_runs_the_due_jobs_only_and_never_beside_a_running_run(arithmetic: AppDb) -> None:
    app = arithmetic
    now = app.execute("SELECT now()")[0][0]
    took = timedelta(seconds=1)
    # daily: failed 6 minutes ago, due after 5: due. hourly: failed 10 minutes ago, due after 20: not yet.
    history(app, "daily", ("failed", now - timedelta(minutes=6), now - timedelta(minutes=6) + took))
    history(app, "hourly", ("failed", now - timedelta(minutes=10), now - timedelta(minutes=10) + took))
    history(app, "plain", ("failed", now - timedelta(hours=2), now - timedelta(hours=2) + took))

    # A run of daily is going (another session holds its lock): passed over, no skipped run recorded.
    with psycopg.connect(app.dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('dbjobs.run'), hashtext('daily'))")
        app.execute("CALL dbjobs.retry_due()")
        assert (
            app.execute(
                "SELECT job, trigger, status FROM dbjobs.run WHERE trigger = 'retry' OR status = 'skipped'"
            )
            == []
        )

    # A nested CALL of run_job, which COMMITs after each batch: it runs, as pg_cron would call it.
    app.execute("CALL dbjobs.retry_due()")
    assert app.execute(
        "SELECT job, trigger, status, rows_deleted FROM dbjobs.run WHERE started_at > %s ORDER BY id", [now]
    ) == [("daily", "retry", "succeeded", 2)]
    assert app.count("sessions") == 1
    # Succeeded: nothing more to retry, and calling again runs nothing.
    assert "daily" not in retries(app)
    app.execute("CALL dbjobs.retry_due()")
    assert app.execute("SELECT count(*) FROM dbjobs.run WHERE started_at > %s", [now]) == [(1,)]


def test_a_retry_due_within_seconds_runs_at_this_minutes_check(arithmetic: AppDb) -> None:
    """pg_cron starts _retry a few milliseconds into the minute, just before the retry of a
    scheduled run (ended a few milliseconds into its minute) is due: a retry due within
    retry_early (5 s) runs now, not a minute late; one due later waits."""
    app = arithmetic
    now = app.execute("SELECT now()")[0][0]
    took = timedelta(seconds=1)
    soon = now - timedelta(minutes=20) + timedelta(seconds=2)  # hourly's retry: due in 3 s
    later = now - timedelta(minutes=5) + timedelta(seconds=30)  # daily's: due in 31 s
    history(app, "hourly", ("failed", soon - took, soon))
    history(app, "daily", ("failed", later - took, later))
    app.execute("CALL dbjobs.retry_due()")
    assert app.execute("SELECT job FROM dbjobs.run WHERE trigger = 'retry'") == [("hourly",)]


# ---------------------------------------------------------------------------
# dbjobs' retry job: installed while some job sets retry_after
# ---------------------------------------------------------------------------


def test_the_retry_job_follows_the_configuration(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE)
    with_retry = write_config(
        'retry_after = "5 minutes"\n' + job("a", "0 2 * * *") + job("b", "*/30 * * * *"), "retry.toml"
    )
    retry_name = cron_job_name(app.database, RETRY_JOB)

    def retry_job() -> list[tuple[Any, ...]]:
        return app.cron(
            "SELECT schedule, command, database, active FROM cron.job WHERE jobname = %s", [retry_name]
        )

    first = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "install")
    assert first.code == 0, first.err
    assert (
        "create job _retry: run the failed runs of a, b again after retry_after, schedule '* * * * *'"
        in first.out.splitlines()
    )
    assert retry_job() == [("* * * * *", 'CALL "dbjobs".retry_due()', app.database, True)]
    assert app.execute("SELECT name, retry_after, retry_cap FROM dbjobs.job ORDER BY name") == [
        ("a", timedelta(minutes=5), timedelta(days=1)),
        ("b", timedelta(minutes=5), timedelta(minutes=30)),
    ]
    again = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "install")
    assert again.out.startswith("nothing to change"), again.out

    # Drift: status compares retry_after with what is installed.
    changed = write_config(
        'retry_after = "10 minutes"\n' + job("a", "0 2 * * *") + job("b", "*/30 * * * *"), "changed.toml"
    )
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "--config", changed, "status", "--format", "json").out)
    assert any("retry_after '00:05:00' -> '00:10:00'" in line for line in report["drift"]), report["drift"]
    assert RETRY_JOB not in [j["name"] for j in report["jobs"]]

    # enabled = false leaves it inactive with the jobs; no job with retry_after removes it.
    off = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "install", env={"DBJOBS_ENABLED": "false"})
    assert off.code == 0 and "update job _retry: deactivate (enabled = false)" in off.out, off.out
    assert [row[3] for row in retry_job()] == [False]
    without = write_config(job("a", "0 2 * * *") + job("b", "*/30 * * * *"), "without.toml")
    removed = dbjobs_cli("--dsn", app.dsn, "--config", without, "install")
    assert removed.code == 0 and any(
        line.startswith("remove job _retry: pg_cron job ") for line in removed.out.splitlines()
    ), removed.out
    assert retry_job() == []
    assert app.execute(
        "SELECT count(*) FROM dbjobs.job WHERE retry_after IS NOT NULL OR retry_cap IS NOT NULL"
    ) == [(0,)]

    back = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "install")
    assert back.code == 0 and len(retry_job()) == 1, back.out
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "doctor").out
    assert (
        "PASS  retries: failed runs of a, b are run again after retry_after, doubling, "
        f"by pg_cron's _retry job ({retry_name})" in doctor
    ), doctor
    app.cron("SELECT cron.unschedule(%s)", [retry_name])
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "doctor").out
    assert "WARN  retries: a, b set retry_after, but dbjobs' _retry job is not in pg_cron" in doctor, doctor
    assert "create job _retry" in dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "install").out

    assert dbjobs_cli("--dsn", app.dsn, "--config", with_retry, "uninstall").code == 0
    assert retry_job() == []


# ---------------------------------------------------------------------------
# pg_cron retrying for real (one wait for a minute boundary, both layouts at once)
# ---------------------------------------------------------------------------

GRANTS_SEPARATE = """
ALTER DATABASE {database} OWNER TO {role};
GRANT USAGE ON SCHEMA cron TO {role};
GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),
                          cron.alter_job(bigint,text,text,text,text,boolean) TO {role};
"""
GRANTS_SAME = """
GRANT CREATE ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA cron TO {role};
ALTER SCHEMA {schema} OWNER TO {role};
"""


@contextmanager
def app_in(layout: str, server: Any) -> Iterator[AppDb]:
    generator = conftest._make_app(layout, server)
    try:
        yield next(generator)
    finally:
        generator.close()


@contextmanager
def installer(app: AppDb) -> Iterator[str]:
    """A login role that is not a superuser, with the grants README "Managed PostgreSQL" lists for
    the layout; yields its connection string to the application's database."""
    role = f"retry_{app.database}_{app.schema}"[:63]
    names = {
        k: sql.Identifier(v) for k, v in (("role", role), ("database", app.database), ("schema", app.schema))
    }
    app.cron(sql.SQL("CREATE ROLE {role} LOGIN").format(**names))
    try:
        app.cron(sql.SQL(GRANTS_SAME if app.layout == "same" else GRANTS_SEPARATE).format(**names))
        yield psycopg.conninfo.make_conninfo(app.dsn, user=role)
    finally:
        app.cron("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        if app.layout == "separate":
            app.cron(sql.SQL("ALTER DATABASE {database} OWNER TO CURRENT_USER").format(**names))
        app.execute(sql.SQL("DROP OWNED BY {role} CASCADE").format(**names))
        app.cron(sql.SQL("DROP OWNED BY {role} CASCADE").format(**names))
        app.cron(sql.SQL("DROP ROLE {role}").format(**names))


def cron_history(app: AppDb) -> list[tuple[Any, ...]]:
    """pg_cron's runs of this database's jobs: what a failed wait reports."""
    return app.cron(
        "SELECT j.jobname, d.status, d.return_message, d.start_time FROM cron.job_run_details d"
        " JOIN cron.job j USING (jobid) WHERE j.database = %s ORDER BY d.runid",
        [app.database],
    )


@pytest.fixture(scope="module")
def retried(pg_servers) -> Iterator[dict[str, dict[str, Any]]]:
    """In both layouts: a daily job, due 12 hours from now, with retry_after; a run of it fails
    (DELETE revoked), the privilege is given back, and pg_cron's retry job runs it again at the
    next minute. What each database then holds, by layout."""
    hour = (datetime.now(UTC).hour + 12) % 24
    config = parse_config(
        tomllib.loads(job("sessions", f"0 {hour} * * *", 'retry_after = "1 second"')), source="dbjobs.toml"
    )
    with ExitStack() as stack:
        apps = {}
        for layout in conftest.LAYOUTS:
            app = stack.enter_context(app_in(layout, pg_servers[layout]))
            dsn = stack.enter_context(installer(app))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(TABLE)
                plan = install(conn, config)
                assert any(line.startswith("create job _retry") for line in plan.lines()), plan.lines()
                conn.execute("REVOKE DELETE ON sessions FROM CURRENT_USER")
                failed = run(conn, config, "sessions")
                assert failed.status == "failed" and "permission denied" in (failed.error or ""), failed
                conn.execute("GRANT DELETE ON sessions TO CURRENT_USER")
                role = conn.info.user
            apps[layout] = (app, role)

        deadline = (
            time.monotonic() + 150
        )  # the next minute boundary (a second after the failure), and the run
        pending = set(apps)
        while pending and time.monotonic() < deadline:
            for layout in list(pending):
                app = apps[layout][0]
                if app.execute("SELECT 1 FROM dbjobs.run WHERE trigger = 'retry' AND status <> 'running'"):
                    pending.discard(layout)
            time.sleep(1)
        assert not pending, (
            f"pg_cron did not retry the failed run within 150 s in layout(s) {sorted(pending)}: "
            + repr([cron_history(apps[layout][0]) for layout in pending])
            + repr([apps[layout][0].execute("SELECT *, now() FROM dbjobs.retries()") for layout in pending])
            + repr(
                [
                    apps[layout][0].execute("SELECT id, trigger, status, finished_at FROM dbjobs.run")
                    for layout in pending
                ]
            )
        )

        facts = {}
        for layout, (app, role) in apps.items():
            facts[layout] = {
                "app": app,
                "role": role,
                "hour": hour,
                "runs": app.execute(
                    "SELECT trigger, status, rows_deleted, started_at, finished_at"
                    " FROM dbjobs.run ORDER BY id"
                ),
                "cron_job": app.cron(
                    "SELECT jobid, username, database, schedule, command FROM cron.job WHERE jobname = %s",
                    [cron_job_name(app.database, RETRY_JOB)],
                ),
            }
            jobid = facts[layout]["cron_job"][0][0]
            facts[layout]["cron_runs"] = app.cron(
                "SELECT status, username FROM cron.job_run_details WHERE jobid = %s AND status <> 'running'"
                " ORDER BY runid",
                [jobid],
            )
        yield facts


@pytest.mark.slow
@pytest.mark.parametrize("layout", conftest.LAYOUTS)
def test_pg_cron_retries_a_failed_run_at_the_next_minute(retried, layout: str) -> None:
    facts = retried[layout]
    runs = facts["runs"]
    assert [(r[0], r[1]) for r in runs] == [("manual", "failed"), ("retry", "succeeded")], runs
    failed, retry = runs
    assert retry[2] == 2  # the two expired rows
    assert facts["app"].count("sessions") == 1
    # At the first minute after the failure (retry_after is a second), long before the job's own fire time.
    assert retry[3] - failed[4] < timedelta(seconds=75)
    next_fire = schedule.next_fire(f"0 {facts['hour']} * * *", failed[4])
    assert retry[4] < next_fire - timedelta(hours=10)


@pytest.mark.slow
@pytest.mark.parametrize("layout", conftest.LAYOUTS)
def test_the_retry_job_runs_as_the_installing_role_in_the_application_database(retried, layout: str) -> None:
    facts = retried[layout]
    [(_, username, database, schedule_, command)] = facts["cron_job"]
    assert (username, database, schedule_, command) == (
        facts["role"],
        facts["app"].database,
        "* * * * *",
        'CALL "dbjobs".retry_due()',
    )
    # Its runs (the one that retried among them) succeeded: no skipped run, no failure.
    assert facts["cron_runs"] and all(status == "succeeded" for status, _ in facts["cron_runs"]), facts[
        "cron_runs"
    ]
    assert not [r for r in facts["runs"] if r[1] == "skipped"]
