"""The replica-lag throttle (max_replica_lag) against a real streaming standby on loopback whose
replay is paused: a run waits between batches while the standby lags, goes on once replay
resumes, and ends partial at max_runtime while it waits. Everything runs as a role that is not a
superuser, granted pg_monitor as the README says; without it install refuses the setting.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbjobs.config import parse_config
from dbjobs.errors import ConfigError
from tests.conftest import AppDb
from tests.devserver import ThrowawayServer, _as_server_user
from tests.faults import jobs_by_name, need_local_servers, query, status_json, wait_for
from tests.real_schemas import application_role, grant_tables

ROLE = "cleaner"
# 30 batches of 0.1 s each (a trigger sleeps 1 ms per row): 3 s without a standby in the way.
ROWS, BATCH = 3000, 100
SESSIONS = f"""
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 days' - i * interval '1 second'
  FROM generate_series(1, {ROWS}) i;
INSERT INTO sessions SELECT i, now() + interval '1 day' FROM generate_series({ROWS + 1}, {ROWS + 10}) i;
GRANT SELECT, UPDATE, DELETE ON sessions TO {ROLE};
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_sleep(0.001); RETURN OLD; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION slow_delete();
"""
CONFIG = """
max_replica_lag = "1 second"
[jobs.sessions]
table = "sessions"
expires = "expires_at"
retain = "1 hour"
schedule = "0 3 * * *"
batch_size = {batch}
{extra}
"""


@dataclass
class Pair:
    primary: ThrowawayServer
    standby: ThrowawayServer

    @property
    def app(self) -> str:
        """The application database, as the cleanup's role."""
        return self.primary.dsn("app", user=ROLE)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    need_local_servers()
    with ThrowawayServer(cron_database="postgres") as primary:
        primary.create_pg_cron()
        primary.create_database("app")
        primary.execute(
            f"CREATE ROLE {ROLE} LOGIN; GRANT pg_monitor TO {ROLE}; GRANT CREATE ON DATABASE app TO {ROLE};"
            f"GRANT USAGE ON SCHEMA cron TO {ROLE};"
            "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),"
            f" cron.alter_job(bigint,text,text,text,text,boolean) TO {ROLE}"
        )
        # The standby reports its replay position every second (10 s by default), so that the
        # primary hears of a resumed replay soon.
        standby = ThrowawayServer(
            cron_database="postgres", bindir=primary.bindir, settings={"wal_receiver_status_interval": "1"}
        )
        try:
            standby.start_as_standby_of(primary)
            yield Pair(primary, standby)
        finally:
            standby.stop()


@pytest.fixture
def sessions(pair: Pair, dbjobs_cli: Any, write_config: Any) -> Iterator[Any]:
    """A fresh sessions table; yields a function installing the job with extra settings."""
    query(
        pair.primary.dsn("app"),
        "DROP SCHEMA IF EXISTS dbjobs CASCADE; DROP TABLE IF EXISTS sessions;"
        "DROP FUNCTION IF EXISTS slow_delete",
    )
    query(pair.primary.dsn("app"), SESSIONS)

    def install(extra: str = "") -> None:
        path = write_config(CONFIG.format(batch=BATCH, extra=extra))
        result = dbjobs_cli("--dsn", pair.app, "--config", path, "install")
        assert result.code == 0, result.err

    yield install
    query(pair.standby.dsn(), "SELECT pg_wal_replay_resume()")


def caught_up(pair: Pair) -> None:
    """Until the standby has replayed all the WAL the primary has inserted (asynchronous commits
    included, which pg_current_wal_lsn may not count yet)."""
    [(target,)] = query(pair.primary.dsn(), "SELECT pg_current_wal_insert_lsn()::text")
    wait_for(
        lambda: query(pair.standby.dsn(), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])[0][0],
        30,
        "the standby to catch up",
    )


def run_in_background(dsn: str) -> tuple[threading.Thread, list[Any]]:
    """CALL run_job in a thread (as pg_cron would); the list gets the exception, if any."""
    errors: list[Any] = []

    def call() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CALL dbjobs.run_job('sessions')")
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, errors


def latest_run(dsn: str) -> tuple[Any, ...]:
    rows = query(
        dsn,
        "SELECT status, rows_deleted, extract(epoch FROM replica_waited)::float8, error"
        "  FROM dbjobs.run ORDER BY id DESC LIMIT 1",
    )
    return rows[0] if rows else ()


def held(dsn: str, seconds: float) -> int:
    """The run's rows deleted, once they have not moved for ``seconds`` while it runs."""
    before = latest_run(dsn)
    time.sleep(seconds)
    after = latest_run(dsn)
    assert after[0] == "running", after
    return int(after[1]) if before and after[1] == before[1] else -1


def test_a_run_waits_for_a_paused_standby_then_goes_on(pair: Pair, sessions: Any, dbjobs_cli: Any) -> None:
    sessions()
    caught_up(pair)
    query(pair.standby.dsn(), "SELECT pg_wal_replay_pause()")
    thread, errors = run_in_background(pair.app)
    # The run deletes batches until the standby is a second behind, then holds still.
    stuck = wait_for(lambda: held(pair.app, 1.5) > 0, 30, "the run to wait for the standby")
    assert stuck < ROWS
    assert query(pair.standby.dsn("app"), "SELECT count(*) FROM sessions")[0][0] == ROWS + 10
    query(pair.standby.dsn(), "SELECT pg_wal_replay_resume()")
    thread.join(60)
    assert not thread.is_alive() and not errors, errors
    status, deleted, waited, error = latest_run(pair.app)
    assert (status, deleted, error) == ("succeeded", ROWS, None)
    assert waited >= 1.5  # at least the time it was seen holding still
    assert query(pair.primary.dsn("app"), "SELECT count(*) FROM sessions")[0][0] == 10
    code, report = status_json(dbjobs_cli, pair.app)
    assert code in (0, 1), report
    job = jobs_by_name(report)["sessions"]
    assert job["last_replica_wait_seconds"] == pytest.approx(waited, abs=0.01)
    metrics = dbjobs_cli("--dsn", pair.app, "status", "--format", "prometheus").out
    [sample] = [
        line for line in metrics.splitlines() if line.startswith("dbjobs_job_last_replica_wait_seconds{")
    ]
    assert sample.startswith('dbjobs_job_last_replica_wait_seconds{job="sessions"} ')
    assert float(sample.split()[-1]) == pytest.approx(waited, abs=0.01)


def test_a_run_waiting_for_a_standby_ends_partial_at_max_runtime(
    pair: Pair, sessions: Any, dbjobs_cli: Any
) -> None:
    sessions('max_runtime = "4 seconds"')
    caught_up(pair)
    query(pair.standby.dsn(), "SELECT pg_wal_replay_pause()")
    started = time.monotonic()
    result = dbjobs_cli("--dsn", pair.app, "run", "sessions")
    took = time.monotonic() - started
    status, deleted, waited, error = latest_run(pair.app)
    assert (result.code, status, error) == (0, "partial", None), result.out + result.err
    assert 0 < deleted < ROWS
    assert 1 < waited <= took
    assert "partial: stopped at max_runtime" in result.out and "s for lagging standbys" in result.out
    # The rows it did not reach stay, for the next run.
    assert query(pair.primary.dsn("app"), "SELECT count(*) FROM sessions")[0][0] == ROWS + 10 - deleted


def test_a_wal_archiver_that_never_replays_is_not_waited_for(
    pair: Pair, sessions: Any, dbjobs_cli: Any
) -> None:
    """pg_receivewal (a backup tool streaming WAL to an archive) shows in pg_stat_replication with
    no replay position, ever: the run waits for the standby that replays, not for it."""
    sessions('max_runtime = "30 seconds"')
    caught_up(pair)
    target = pair.primary.workdir / "receivewal"
    subprocess.run(_as_server_user(["mkdir", "-p", str(target)]), check=True)
    receiver = subprocess.Popen(
        _as_server_user(
            [str(pair.primary.bindir / "pg_receivewal"), "-h", "127.0.0.1", "-p", str(pair.primary.port),
             "-U", "postgres", "-D", str(target), "--no-loop"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(
            lambda: query(
                pair.primary.dsn(),
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_receivewal'"
                " AND replay_lsn IS NULL",
            )[0][0],
            15,
            "pg_receivewal to stream",
        )
        result = dbjobs_cli("--dsn", pair.app, "run", "sessions")
        status, deleted, waited, error = latest_run(pair.app)
        assert (result.code, status, deleted, error) == (0, "succeeded", ROWS, None), result.out + result.err
        assert waited < 5, waited  # a moment now and then for the real standby, never until max_runtime
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_no_standby_no_wait(app_separate: AppDb, dbjobs_cli: Any, write_config: Any) -> None:
    """Without standbys the throttle never waits; without pg_monitor install refuses it, saying why."""
    with application_role(app_separate) as (role, dsn):
        app_separate.execute(SESSIONS.replace(ROLE, sql.Identifier(role).as_string(None)))
        grant_tables(app_separate, "public", role)
        path = write_config(CONFIG.format(batch=BATCH, extra=""))
        refused = dbjobs_cli("--dsn", dsn, "--config", path, "install")
        assert refused.code == 2
        line = refused.err.strip().splitlines()[-1]
        assert line.endswith(
            f"job 'sessions': max_replica_lag: role '{role}' may not read the standbys' replay lag "
            f'(pg_stat_replication): GRANT pg_monitor TO "{role}", or leave max_replica_lag out'
        )
        assert "dbjobs" not in app_separate.schemas()
        app_separate.cron(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
        assert dbjobs_cli("--dsn", dsn, "--config", path, "install").code == 0
        assert dbjobs_cli("--dsn", dsn, "run", "sessions").code == 0
        status, deleted, waited, error = latest_run(dsn)
        assert (status, deleted, waited, error) == ("succeeded", ROWS, 0.0, None)
        _, report = status_json(dbjobs_cli, dsn, "--config", path)
        assert report["drift"] == []
        # The grant revoked since: the run fails on its first step, deleting nothing unthrottled.
        app_separate.cron(sql.SQL("REVOKE pg_monitor FROM {}").format(sql.Identifier(role)))
        app_separate.execute("INSERT INTO sessions VALUES (0, now() - interval '2 days')")
        assert dbjobs_cli("--dsn", dsn, "run", "sessions").code == 1
        status, deleted, waited, error = latest_run(dsn)
        assert (status, deleted) == ("failed", 0)
        assert error == (
            f"max_replica_lag: role {role} may not read the standbys' replay lag "
            f"hint: GRANT pg_monitor TO {role}, or leave max_replica_lag out and install again"
        )


def test_batch_pause_spaces_the_batches(app_separate: AppDb, dbjobs_cli: Any, write_config: Any) -> None:
    """batch_pause sleeps after each batch that deleted rows, without holding a lock or a snapshot
    between its steps; max_runtime bounds it like any run."""
    app_separate.execute(
        "CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);"
        "INSERT INTO sessions SELECT i, now() - interval '2 days' FROM generate_series(1, 500) i"
    )
    job = '[jobs.sessions]\ntable = "sessions"\nexpires = "expires_at"\nretain = "1 hour"\n'
    job += 'schedule = "0 3 * * *"\nbatch_size = 100\n'
    path = write_config('batch_pause = "400 ms"\n' + job)
    assert dbjobs_cli("--dsn", app_separate.dsn, "--config", path, "install").code == 0
    assert dbjobs_cli("--dsn", app_separate.dsn, "run", "sessions").code == 0
    [(status, deleted, seconds)] = app_separate.execute(
        "SELECT status, rows_deleted, extract(epoch FROM finished_at - started_at)::float8 FROM dbjobs.run"
    )
    assert (status, deleted) == ("succeeded", 500)
    assert seconds >= 5 * 0.4  # a pause after each of the 5 batches

    app_separate.execute(
        "INSERT INTO sessions SELECT i, now() - interval '2 days' FROM generate_series(1, 500) i"
    )
    # A long pause, cut short by max_runtime: the run ends partial after its first batch.
    path = write_config('batch_pause = "1 minute"\nmax_runtime = "3 seconds"\n' + job)
    assert dbjobs_cli("--dsn", app_separate.dsn, "--config", path, "install").code == 0
    thread, errors = run_in_background(app_separate.dsn)
    wait_for(lambda: latest_run(app_separate.dsn)[:2] == ("running", 100), 10, "the run's first batch")
    # While it pauses, each step takes a new snapshot: the session's xmin moves past a transaction
    # that committed during the pause (one sleep would keep the snapshot it started with).
    [(xid,)] = app_separate.execute("SELECT pg_current_xact_id()::text::bigint")
    wait_for(
        lambda: (
            app_separate.execute(
                "SELECT backend_xmin::text::bigint > %s FROM pg_stat_activity"
                " WHERE query LIKE 'CALL dbjobs.run_job%%' AND backend_xmin IS NOT NULL",
                [xid],
            )
            == [(True,)]
        ),
        1,
        "the pausing run's snapshot to move on",
        interval=0.02,
    )
    thread.join(30)
    assert not errors, errors
    assert latest_run(app_separate.dsn)[:2] == ("partial", 100)


def test_the_settings_are_checked() -> None:
    """Each bad value is one line naming the job and key."""
    job = {"table": "t", "expires": "x", "retain": "1 day", "schedule": "0 3 * * *"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"max_replica_lag": 10, "jobs": {"a": {**job, "batch_pause": 5, "archive": ""}}})
    assert caught.value.problems == [
        "config: max_replica_lag must be a non-empty string, not 10",
        "job 'a': batch_pause must be a non-empty string, not 5",
        "job 'a': archive must be a non-empty string, not ''",
    ]
    inherited = parse_config({"batch_pause": "1 s", "jobs": {"a": job, "b": {**job, "batch_pause": "2 s"}}})
    assert [j.batch_pause for j in inherited.jobs] == ["1 s", "2 s"]
