"""dbjobs run: the same procedure pg_cron calls, batches, failures and the history."""

from __future__ import annotations

import json

import psycopg
import pytest

import dbjobs
from tests.conftest import AppDb

CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 0 1 1 *"  # never during a test: pg_cron would run it beside the manual runs
batch_size = 3
"""
TABLE = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
INSERT INTO sessions SELECT i, now() - interval '2 hours' FROM generate_series(1, 10) i;
INSERT INTO sessions SELECT i, now() FROM generate_series(11, 15) i;
"""


@pytest.fixture
def sessions(app_separate: AppDb, dbjobs_cli, write_config) -> tuple[AppDb, str]:
    app_separate.execute(TABLE)
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app_separate.dsn, "--config", config, "install").code == 0
    return app_separate, config


def status_of(dbjobs_cli, app: AppDb, config: str) -> dict:
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json")
    return json.loads(result.out)["jobs"][0] | {"exit": result.code}


def test_batches_commit_until_nothing_is_left(sessions, dbjobs_cli) -> None:
    app, config = sessions
    assert status_of(dbjobs_cli, app, config)["state"] == "pending"
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert result.code == 0
    assert result.out.startswith("sessions: deleted 10 rows")
    assert app.count("sessions") == 5
    assert app.execute("SELECT trigger, status, rows_deleted FROM dbjobs.run") == [
        ("manual", "succeeded", 10)
    ]


def test_unknown_and_uninstalled_jobs(sessions, dbjobs_cli, write_config) -> None:
    app, config = sessions
    unknown = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "nope")
    assert unknown.code == 2
    assert "unknown job 'nope': installed jobs: sessions" in unknown.err

    more = write_config(CONFIG + CONFIG.replace("jobs.sessions", "jobs.later"), name="more.toml")
    not_installed = dbjobs_cli("--dsn", app.dsn, "--config", more, "run", "later")
    assert not_installed.code == 2
    assert "run `dbjobs install` first" in not_installed.err

    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall").code == 0
    gone = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "--all")
    assert gone.code == 2
    assert "dbjobs is not installed in this database" in gone.err
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run").code == 2  # neither JOB nor --all
    assert app.count("sessions") == 15


def test_a_failing_run_is_recorded_and_reported(sessions, dbjobs_cli) -> None:
    app, config = sessions
    app.execute("ALTER TABLE sessions RENAME COLUMN expires_at TO expires")
    failed = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert failed.code == 1
    assert 'sessions: failed after deleting 0 rows: column "expires_at" does not exist' in failed.out

    job = status_of(dbjobs_cli, app, config)
    assert (job["state"], job["status"], job["last_run_status"], job["exit"]) == (
        "failing",
        "warn",
        "failed",
        1,
    )
    assert 'column "expires_at" does not exist' in job["last_error"]
    assert job["last_success_at"] is None

    app.execute("ALTER TABLE sessions RENAME COLUMN expires TO expires_at")
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    job = status_of(dbjobs_cli, app, config)
    assert (job["state"], job["last_rows_deleted"], job["exit"]) == ("ok", 10, 0)


def test_rows_the_application_holds_are_skipped_and_taken_later(sessions, dbjobs_cli) -> None:
    app, config = sessions
    with psycopg.connect(app.dsn) as holder:
        holder.execute("SELECT * FROM sessions WHERE id IN (1, 2) FOR UPDATE")
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
        assert result.code == 0
        assert "deleted 8 rows" in result.out
    assert [r[0] for r in app.execute("SELECT id FROM sessions WHERE id <= 10 ORDER BY id")] == [1, 2]
    assert "deleted 2 rows" in dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").out


def test_a_second_run_of_the_same_job_is_skipped(sessions, dbjobs_cli) -> None:
    app, config = sessions
    with psycopg.connect(app.dsn) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('dbjobs.run'), hashtext('sessions'))")
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert result.code == 0
    assert result.out.startswith("sessions: skipped: another run of this job was in progress")
    assert app.count("sessions") == 15
    assert app.execute("SELECT status FROM dbjobs.run") == [("skipped",)]


def test_a_run_whose_session_died_is_marked_failed(sessions, dbjobs_cli) -> None:
    app, config = sessions
    app.execute(
        "INSERT INTO dbjobs.run (job, trigger, status, rows_deleted)"
        " VALUES ('sessions', 'scheduled', 'running', 4)"
    )
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    assert app.execute("SELECT status, error LIKE 'interrupted%%' FROM dbjobs.run ORDER BY id") == [
        ("failed", True),
        ("succeeded", None),
    ]


def test_run_refuses_a_connection_inside_a_transaction(sessions) -> None:
    app, _ = sessions
    with psycopg.connect(app.dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(dbjobs.DbjobsError, match="not inside a transaction"):
            dbjobs.run(conn, dbjobs.load_config(environ={}), "sessions")


def test_a_cancelled_run_is_recorded_failed_and_frees_the_job(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """A statement timeout cancels the CALL, which PL/pgSQL cannot catch: dbjobs closes the run itself."""
    app = app_separate
    app.execute(TABLE)
    slow = write_config(
        CONFIG.replace("batch_size = 3", 'batch_size = 1\nwhere = "pg_sleep(0.2) IS NOT NULL"')
    )
    assert dbjobs_cli("--dsn", app.dsn, "--config", slow, "install").code == 0
    impatient = psycopg.conninfo.make_conninfo(app.dsn, options="-c statement_timeout=500")
    result = dbjobs_cli("--dsn", impatient, "--config", slow, "run", "sessions")
    assert result.code == 1
    assert "failed after deleting" in result.out and "statement timeout" in result.out
    [(status, error)] = app.execute("SELECT status, error FROM dbjobs.run")
    assert status == "failed" and "statement timeout" in error
    # The job's lock was released: the next run runs, it is not skipped.
    fast = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", fast, "install").code == 0
    again = dbjobs_cli("--dsn", app.dsn, "--config", fast, "run", "sessions")
    assert again.code == 0 and "deleted" in again.out


def test_a_misspelt_job_runs_nothing(sessions, dbjobs_cli) -> None:
    app, config = sessions
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions", "sesions")
    assert result.code == 2 and "unknown job 'sesions'" in result.err
    assert app.count("sessions") == 15


def test_a_run_killed_half_way_keeps_its_progress_and_the_next_run_finishes(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """Terminating the backend mid-run: committed batches stay deleted, nothing outside the rule goes,
    the run is recorded as failed, and the next run deletes the rest."""
    import contextlib
    import threading
    import time

    app = app_separate
    app.execute(
        "CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);"
        "INSERT INTO sessions SELECT i, now() - interval '2 hours' FROM generate_series(1, 200) i;"
        "INSERT INTO sessions SELECT i, now() FROM generate_series(201, 300) i;"
    )
    # 10 rows a batch, each row costing 10 ms: a run of about two seconds.
    slow = CONFIG.replace("batch_size = 3", 'batch_size = 10\nwhere = "pg_sleep(0.01) IS NOT NULL"')
    config = write_config(slow)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0

    def call() -> None:
        victim = psycopg.connect(app.dsn, autocommit=True, application_name="victim")
        with contextlib.suppress(psycopg.OperationalError), victim:  # terminated
            victim.execute("CALL dbjobs.run_job('sessions')")

    runner = threading.Thread(target=call)
    runner.start()
    deadline = time.monotonic() + 30
    while app.execute("SELECT rows_deleted >= 20 FROM dbjobs.run WHERE status = 'running'") != [(True,)]:
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    app.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim'")
    runner.join(timeout=30)

    left = app.count("sessions")
    assert 100 < left <= 280  # some batches committed, not all
    assert app.count("sessions", "expires_at > now() - interval '1 hour'") == 100  # nothing outside the rule
    [(status, deleted)] = app.execute("SELECT status, rows_deleted FROM dbjobs.run")
    assert status == "running" and deleted == 300 - left  # what it recorded is what it deleted

    fast = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", fast, "install").code == 0
    finished = dbjobs_cli("--dsn", app.dsn, "--config", fast, "run", "sessions")
    assert finished.code == 0 and f"deleted {left - 100} rows" in finished.out
    assert app.execute("SELECT status, error LIKE 'interrupted%%' FROM dbjobs.run ORDER BY id") == [
        ("failed", True),
        ("succeeded", None),
    ]
    assert app.count("sessions") == 100


def test_progress_is_reported_while_a_run_goes(app_separate: AppDb, write_config) -> None:
    app = app_separate
    app.execute(
        "CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);"
        "INSERT INTO sessions SELECT i, now() - interval '2 hours' FROM generate_series(1, 100) i;"
    )
    slow = CONFIG.replace("batch_size = 3", 'batch_size = 10\nwhere = "pg_sleep(0.005) IS NOT NULL"')
    config = dbjobs.load_config(write_config(slow), environ={})
    seen: list[tuple[int, int | None]] = []
    with psycopg.connect(app.dsn) as conn:
        dbjobs.install(conn, config)
        result = dbjobs.run(
            conn, config, "sessions", progress=lambda done, estimate: seen.append((done, estimate))
        )
    assert result.rows_deleted == 100
    assert seen, "no progress was reported during a run of about half a second"
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert all(estimate is not None and estimate > 0 for _, estimate in seen)  # the planner's, for an ETA


def test_run_on_a_terminal_shows_a_progress_bar(sessions, dbjobs_cli, monkeypatch, capsys) -> None:
    app, config = sessions
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert result.code == 0
    assert result.out.startswith("sessions: deleted 10 rows")  # the result line stays on stdout
    assert "sessions" in result.err  # the bar (tqdm) went to stderr
