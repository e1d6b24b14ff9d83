"""Faults that need pg_cron itself to start a run: failover to a promoted standby, and a server
restarted (fast and immediate shutdown) in the middle of a scheduled run.

Every server here runs `* * * * *` jobs, set up together just before a minute boundary, so that
the whole module waits for pg_cron's fire time once: the promoted standby runs its jobs at that
minute, and the runs the restarts interrupt start at that same minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import dbjobs
from tests.devserver import ThrowawayServer
from tests.faults import (
    jobs_by_name,
    need_local_servers,
    pg_ctl,
    query,
    restart,
    scheduler_up,
    status_json,
    wait_for,
    wait_replayed,
)

pytestmark = pytest.mark.slow

EVERY_MINUTE = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "* * * * *"
"""
SESSIONS = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 days' FROM generate_series(1, 10) i;
INSERT INTO sessions SELECT i, now() + interval '1 day' FROM generate_series(11, 15) i;
"""

# The restarted servers' runs: 3,000 expired rows, 20 a batch, each row's delete taking 40 ms
# (a trigger): two minutes uninterrupted, 0.8 s a batch. Rows that are not expired, or never
# expire, and a table no job names, must survive whatever happens.
EXPIRED, FRESH, NEVER = 3000, 200, 50
SLOW_SESSIONS = f"""
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 days' - i * interval '1 second'
  FROM generate_series(1, {EXPIRED}) i;
INSERT INTO sessions SELECT i, now() + interval '1 day'
  FROM generate_series({EXPIRED + 1}, {EXPIRED + FRESH}) i;
INSERT INTO sessions SELECT i, NULL FROM generate_series({EXPIRED + FRESH + 1}, {EXPIRED + FRESH + NEVER}) i;
CREATE TABLE bystander (id int PRIMARY KEY, expires_at timestamptz);
INSERT INTO bystander SELECT i, now() - interval '2 days' FROM generate_series(1, 100) i;
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_sleep(0.04); RETURN OLD; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION slow_delete();
"""
SLOW_CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "{schedule}"
batch_size = 20
"""


@dataclass
class World:
    config: str  # path of the `* * * * *` configuration
    slow_config: str
    primary: ThrowawayServer  # pg_cron in 'postgres'; an application in 'app' and one in 'postgres'
    standby: ThrowawayServer
    # The same, but pg_cron runs jobs over a connection to the host and port each job was
    # scheduled on (cron.job.nodename, nodeport): the standby listens on another port.
    other_primary: ThrowawayServer
    other_standby: ThrowawayServer
    fast: ThrowawayServer  # restarted with a fast shutdown: pg_cron in the application's database 'app'
    crash: ThrowawayServer  # restarted with an immediate shutdown: pg_cron in 'postgres', the app in 'app'
    fire_at: datetime  # when the restarted servers' job fires (once)


def _install(dsn: str, config_path: str) -> None:
    config = dbjobs.load_config(config_path, environ={})
    with psycopg.connect(dsn) as conn:
        dbjobs.install(conn, config)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    need_local_servers()
    folder = tmp_path_factory.mktemp("failover")
    config, slow_config = folder / "every_minute.toml", folder / "slow.toml"
    config.write_text(EVERY_MINUTE)
    with ExitStack() as stack:
        # Background workers: a job runs inside the server that fires it, whatever host and
        # port it was scheduled on (as on Amazon RDS). Standbys listen on ports of their own.
        workers = {"cron.use_background_workers": "on", "max_worker_processes": "16"}
        primary = stack.enter_context(ThrowawayServer(cron_database="postgres", settings=workers))
        standby = ThrowawayServer(cron_database="postgres", bindir=primary.bindir, settings=workers)
        stack.callback(standby.stop)
        other_primary = stack.enter_context(ThrowawayServer(cron_database="app"))
        other_standby = ThrowawayServer(cron_database="app", bindir=primary.bindir)
        stack.callback(other_standby.stop)
        fast = stack.enter_context(ThrowawayServer(cron_database="app"))
        # Durable: with synchronous_commit off, an immediate shutdown loses the WAL of the
        # batches committed in the last moments before it, which is no fault of dbjobs.
        crash = stack.enter_context(ThrowawayServer(cron_database="postgres", durable=True))
        for server in (primary, other_primary, fast, crash):
            server.create_pg_cron()
        primary.create_database("app")
        crash.create_database("app")
        for dsn in (primary.dsn("app"), primary.dsn("postgres"), other_primary.dsn("app")):
            query(dsn, SESSIONS)
            _install(dsn, str(config))
            with psycopg.connect(dsn) as conn:
                assert dbjobs.run(conn, dbjobs.load_config(str(config), environ={}), "sessions").ok
        standby.start_as_standby_of(primary)  # test_failover_to_a_promoted_standby promotes it
        other_standby.start_as_standby_of(other_primary)
        wait_replayed(other_primary, other_standby)
        other_primary.stop()
        pg_ctl(other_standby, "promote", "-w")

        # The restarted servers' job fires once, at a minute boundary 20 s or more from now
        # (the promoted standbys run theirs at the same one), and takes minutes uninterrupted.
        for dsn in (fast.dsn("app"), crash.dsn("app")):
            query(dsn, SLOW_SESSIONS)
        fire = datetime.now(UTC) + timedelta(seconds=80)
        fire = fire.replace(second=0, microsecond=0)
        slow_config.write_text(SLOW_CONFIG.format(schedule=f"{fire.minute} {fire.hour} * * *"))
        for server in (fast, crash):
            _install(server.dsn("app"), str(slow_config))
        yield World(
            str(config), str(slow_config), primary, standby, other_primary, other_standby, fast, crash,
            fire,
        )  # fmt: skip


def test_failover_to_a_promoted_standby(world: World, dbjobs_cli) -> None:
    """The primary stops, the standby is promoted: pg_cron runs the jobs there, once a minute."""
    primary, standby = world.primary, world.standby
    wait_replayed(primary, standby)

    # Before promotion: the hot standby's status does not fail (the scheduler runs on the primary).
    for database in ("app", "postgres"):
        code, report = status_json(dbjobs_cli, standby.dsn(database), "--config", world.config)
        assert code in (0, 1) and report["status"] != "fail", report
        assert report["scheduler"]["running"] is None, report
        assert jobs_by_name(report)["sessions"]["state"] == "ok", report

    primary.stop()  # the primary is gone (immediate shutdown, its data directory removed)
    pg_ctl(standby, "promote", "-w")
    promoted_at = datetime.now(UTC)
    assert query(standby.dsn(), "SELECT pg_is_in_recovery()") == [(False,)]
    wait_for(lambda: scheduler_up(standby), 20, "pg_cron's scheduler on the promoted standby")

    # pg_cron runs each job at its next fire time on the new primary, in both layouts, and
    # deletes what expired there.
    scheduled = (
        "SELECT status, rows_deleted FROM dbjobs.run"
        " WHERE trigger = 'scheduled' AND started_at > %s AND status <> 'running'"
    )
    for database in ("app", "postgres"):
        query(
            standby.dsn(database),
            "INSERT INTO sessions SELECT i, now() - interval '2 days' FROM generate_series(16, 20) i",
        )
    for database in ("app", "postgres"):
        dsn = standby.dsn(database)
        wait_for(
            lambda dsn=dsn: sum(r[1] for r in query(dsn, scheduled, [promoted_at])) == 5,
            95,
            f"a scheduled run on the promoted standby to clean up ({database})",
            interval=0.5,
        )
        assert {r[0] for r in query(dsn, scheduled, [promoted_at])} == {"succeeded"}
        assert query(dsn, "SELECT count(*) FROM sessions") == [(5,)]
        code, report = status_json(dbjobs_cli, dsn, "--config", world.config)
        job = jobs_by_name(report)["sessions"]
        assert (code, report["status"], job["state"], job["last_trigger"]) == (0, "pass", "ok", "scheduled")
        assert report["scheduler"]["running"] is True

    # Nothing ran twice in one minute, in dbjobs' history nor in pg_cron's.
    twice = (
        "SELECT job, date_trunc('minute', started_at), count(*) FROM dbjobs.run"
        " GROUP BY 1, 2 HAVING count(*) > 1"
    )
    for database in ("app", "postgres"):
        assert query(standby.dsn(database), twice) == []
    assert (
        query(
            standby.dsn(),
            "SELECT jobid, date_trunc('minute', start_time), count(*) FROM cron.job_run_details"
            " GROUP BY 1, 2 HAVING count(*) > 1",
        )
        == []
    )


def test_failover_to_a_standby_on_another_port(world: World, dbjobs_cli) -> None:
    """pg_cron runs a job over a connection to the port it was scheduled on: after a failover to
    a server on another port, every run fails before the cleanup starts. Status and doctor say so."""
    standby = world.other_standby
    wait_for(lambda: scheduler_up(standby), 20, "pg_cron's scheduler on the promoted standby")
    app = standby.dsn("app")
    wait_for(
        lambda: query(app, "SELECT status, return_message FROM cron.job_run_details WHERE status = 'failed'"),
        95,
        "pg_cron's first run on the promoted standby",
        interval=0.5,
    )
    code, report = status_json(dbjobs_cli, app, "--config", world.config)
    job = jobs_by_name(report)["sessions"]
    assert (code, job["state"], job["last_error"]) == (1, "failing", "pg_cron: connection failed"), report
    # doctor names the cause (not the password or pg_hba.conf advice of a refused connection)
    # and the fix, which install then completes, keeping the history.
    doctor = dbjobs_cli("--dsn", app, "--config", world.config, "doctor")
    assert doctor.code == 2
    jobs = query(app, "SELECT jobid, jobname FROM cron.job ORDER BY jobid")  # _maintenance, sessions
    jobids = [jobid for jobid, _ in jobs]
    assert (
        f"FAIL  pg_cron job address: pg_cron runs job {jobids[0]} ({jobs[0][1]}) and others by "
        f"connecting to 127.0.0.1:{world.other_primary.port}, where it was scheduled, but this server "
        f"listens on port {standby.port}"
    ) in doctor.out, doctor.out
    unschedule = f"SELECT cron.unschedule(jobid) FROM cron.job WHERE jobid IN ({', '.join(map(str, jobids))})"
    assert f"fix: {unschedule}; then `dbjobs install`" in doctor.out
    assert "see 'pg_cron job address'" in doctor.out and ".pgpass" not in doctor.out

    query(app, unschedule)
    repaired = dbjobs_cli("--dsn", app, "--config", world.config, "install")
    assert sorted(line.split(":")[0] for line in repaired.out.splitlines()) == [
        "create job _maintenance",
        "update job sessions",
    ]
    assert {r[1] for r in app_cron_jobs(app)} == {standby.port}
    assert query(app, "SELECT count(*) FROM dbjobs.run") == [(1,)]  # the manual run on the old primary
    assert "pg_cron job address" not in dbjobs_cli("--dsn", app, "--config", world.config, "doctor").out


def app_cron_jobs(dsn: str) -> list[tuple[int, int]]:
    return [(r[0], r[1]) for r in query(dsn, "SELECT jobid, nodeport FROM cron.job ORDER BY jobid")]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restarted_in_the_middle_of_a_scheduled_run(world: World, mode: str, dbjobs_cli) -> None:
    """Committed batches stay, nothing outside the rule goes, the run is recorded as interrupted,
    pg_cron's "server restarted" shows in status, and the next run finishes the work."""
    server = world.fast if mode == "fast" else world.crash
    app = server.dsn("app")
    running = "SELECT rows_deleted FROM dbjobs.run WHERE trigger = 'scheduled' AND status = 'running'"
    wait_for(
        lambda: (rows := query(app, running)) and rows[0][0] >= 40,
        95,
        "pg_cron to start the slow run and commit two batches",
        interval=0.2,
    )
    restart(server, mode)
    # The run that finishes the work goes at full speed.
    query(app, "ALTER TABLE sessions DISABLE TRIGGER slow_delete")

    left = query(app, "SELECT count(*) FROM sessions")[0][0]
    gone = EXPIRED + FRESH + NEVER - left
    assert 0 < gone < EXPIRED, "the restart did not come in the middle of the run"
    # Nothing outside the rule: the rows not expired and never expiring, the other table.
    assert query(app, f"SELECT count(*) FROM sessions WHERE id > {EXPIRED}") == [(FRESH + NEVER,)]
    assert query(app, "SELECT count(*) FROM bystander") == [(100,)]
    # The run's own bookkeeping committed with each batch: what it recorded is what went.
    [(status, recorded)] = query(app, "SELECT status, rows_deleted FROM dbjobs.run")
    assert (status, recorded) == ("running", gone)

    # pg_cron marks its run failed, "server restarted", and status shows it so.
    wait_for(lambda: scheduler_up(server), 20, "pg_cron's scheduler after the restart")
    cron_dsn = server.dsn(server.cron_database)
    details = wait_for(
        lambda: query(
            cron_dsn,
            "SELECT d.status, d.return_message FROM cron.job_run_details d JOIN cron.job j USING (jobid)"
            " WHERE j.jobname LIKE '%:sessions' AND d.status <> 'running'"
            # the interrupted run: pg_cron may have run the job again since, and the
            # _maintenance job (hourly, at :47) may have run too
            " ORDER BY d.runid LIMIT 1",
        ),
        20,
        "pg_cron to close its interrupted run",
    )
    # pg_cron says "server restarted" when it starts again; pg_cron 1.6 may see the job's
    # connection drop first, on a fast shutdown, and record that.
    [(status, message)] = details
    lost = "server closed the connection unexpectedly"
    assert status == "failed" and (message == "server restarted" or message.startswith(lost)), details
    code, report = status_json(dbjobs_cli, app, "--config", world.slow_config)
    job = jobs_by_name(report)["sessions"]
    assert (code, job["state"]) == (1, "failing"), report
    assert job["last_error"] in ("pg_cron: server restarted", f"pg_cron: {' '.join(message.split())}"), job

    # The next run marks the interrupted one failed, and deletes the rest.
    result = dbjobs_cli("--dsn", app, "--config", world.slow_config, "run", "sessions")
    assert result.code == 0 and f"sessions: deleted {EXPIRED - gone} rows" in result.out, result
    assert query(app, "SELECT count(*) FROM sessions") == [(FRESH + NEVER,)]
    history = query(
        app,
        "SELECT status, left(error, 12), rows_deleted FROM dbjobs.run WHERE status <> 'skipped' ORDER BY id",
    )
    assert history == [("failed", "interrupted:", gone), ("succeeded", None, EXPIRED - gone)], history
    code, report = status_json(dbjobs_cli, app, "--config", world.slow_config)
    assert (code, jobs_by_name(report)["sessions"]["state"]) == (0, "ok"), report
