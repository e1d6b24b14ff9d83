"""Bounded runs (max_runtime, partial), escalation (consecutive_failures, fail_after, runs_total),
runs in progress, and the one server-log line per run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests import servers
from tests.conftest import AppDb

# Each row the rule looks at sleeps 50 ms: batches of 2 rows take a tenth of a
# second or more, so a bound of 300 ms stops a run of 40 rows part-way.
CONFIG = """
grace = "1 second"
max_runtime = "300 milliseconds"

[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "*/10 * * * *"
batch_size = 2
where = "pg_sleep(0.05) IS NOT NULL"
fail_after = 2
"""
# 40 expired rows among 2,000 live ones: under 5 %, so index-driven batches of
# batch_size rows (a sweep would take the one page of a tiny table at once).
TABLE = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 hours' FROM generate_series(1, 40) i;
INSERT INTO sessions SELECT i, now() FROM generate_series(41, 2040) i;
ANALYZE sessions;
"""


@pytest.fixture
def sessions(app_separate: AppDb, dbjobs_cli, write_config) -> tuple[AppDb, str]:
    app_separate.execute(TABLE)
    config = write_config(CONFIG)
    result = dbjobs_cli("--dsn", app_separate.dsn, "--config", config, "install")
    assert result.code == 0, result.err
    return app_separate, config


def status_json(dbjobs_cli, app: AppDb, config: str) -> tuple[int, dict]:
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json")
    return result.code, json.loads(result.out)


def test_a_run_stops_at_max_runtime_as_partial_and_the_next_goes_on(sessions, dbjobs_cli) -> None:
    app, config = sessions
    first = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert first.code == 0, first.out + first.err
    assert "(partial: stopped at max_runtime, the next run goes on)" in first.out
    left = app.count("sessions", "expires_at < now() - interval '1 hour'")
    assert 0 < left < 40

    code, report = status_json(dbjobs_cli, app, config)
    job = report["jobs"][0]
    assert (job["state"], job["status"], job["last_run_status"], code) == ("ok", "pass", "partial", 0)
    assert job["consecutive_failures"] == 0

    for _ in range(2):
        assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    assert app.count("sessions", "expires_at < now() - interval '1 hour'") < left
    code, report = status_json(dbjobs_cli, app, config)
    job = report["jobs"][0]
    assert (job["state"], job["status"], code) == ("ok", "warn", 1)
    assert job["warnings"] == [
        "the last 3 runs all stopped at max_runtime with rows left: the job is not catching up "
        "(raise max_runtime, or run it more often)"
    ]
    text = dbjobs_cli("--dsn", app.dsn, "--config", config, "status")
    assert "sessions: the last 3 runs all stopped at max_runtime" in text.out
    assert job["runs_total"] == {"partial": 3}
    prometheus = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "prometheus").out
    assert 'dbjobs_job_runs_total{job="sessions",outcome="partial"} 3.0' in prometheus
    assert "dbjobs_job_runs_created" not in prometheus


def test_consecutive_failures_escalate_at_fail_after(sessions, dbjobs_cli) -> None:
    app, config = sessions
    app.execute("ALTER TABLE sessions RENAME COLUMN expires_at TO expires")
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 1
    code, report = status_json(dbjobs_cli, app, config)
    job = report["jobs"][0]
    assert (job["state"], job["status"], job["consecutive_failures"], code) == ("failing", "warn", 1, 1)

    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 1
    code, report = status_json(dbjobs_cli, app, config)
    job = report["jobs"][0]
    assert (job["state"], job["status"], job["consecutive_failures"], code) == ("failing", "fail", 2, 2)
    assert job["warnings"] == ["2 consecutive failed runs (fail_after = 2)"]
    health = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "health")
    assert json.loads(health.out)["status"] == "fail"
    prometheus = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "prometheus").out
    assert 'dbjobs_job_consecutive_failures{job="sessions"} 2.0' in prometheus
    assert 'dbjobs_job_runs_total{job="sessions",outcome="failed"} 2.0' in prometheus
    text = dbjobs_cli("--dsn", app.dsn, "--config", config, "status").out
    assert "sessions: 2 consecutive failed runs (fail_after = 2)" in text

    # A run that makes progress (here a partial one) ends the streak.
    app.execute("ALTER TABLE sessions RENAME COLUMN expires TO expires_at")
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    code, report = status_json(dbjobs_cli, app, config)
    assert (report["jobs"][0]["consecutive_failures"], code) == (0, 0)


def test_a_run_in_progress_is_shown_and_warns_past_max_runtime(sessions, dbjobs_cli, write_config) -> None:
    app, _ = sessions
    # One row, whose rule sleeps 4 s: a single batch longer than max_runtime plus grace.
    slow = write_config(
        CONFIG.replace("pg_sleep(0.05)", "pg_sleep(4)").replace('"300 milliseconds"', '"1 second"'),
        name="slow.toml",
    )
    app.execute("DELETE FROM sessions WHERE id > 1")
    assert dbjobs_cli("--dsn", app.dsn, "--config", slow, "install").code == 0
    runner = threading.Thread(target=lambda: app.execute("CALL dbjobs.run_job('sessions')"))
    runner.start()
    try:
        time.sleep(2.6)
        code, report = status_json(dbjobs_cli, app, slow)
        job = report["jobs"][0]
        assert job["running_since"] is not None
        assert job["running_rows"] == 0
        assert (job["status"], code) == ("warn", 1)
        assert job["warnings"][0].startswith("a run has been running since ")
        assert "past max_runtime (1 s) plus grace (1 s)" in job["warnings"][0]
    finally:
        runner.join()
    code, report = status_json(dbjobs_cli, app, slow)
    # Past its bound after that batch: stopped before the step that would have found nothing left.
    assert (report["jobs"][0]["running_since"], report["jobs"][0]["last_run_status"]) == (None, "partial")


def _server_log(app: AppDb) -> Path | None:
    """The log of the throwaway server the app lives on (tests/devserver.py: workdir/server.log)."""
    if servers.source() != "local":
        return None
    datadir = app.execute("SHOW data_directory")[0][0]
    log = Path(datadir).parent / "server.log"
    return log if log.is_file() else None


def test_each_run_writes_one_line_to_the_server_log(sessions, dbjobs_cli) -> None:
    app, config = sessions
    log = _server_log(app)
    if log is None:
        pytest.skip("the server's log is only readable on the local throwaway servers")
    before = log.stat().st_size
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 0
    app.execute("ALTER TABLE sessions RENAME COLUMN expires_at TO expires")
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions").code == 1
    with log.open("rb") as fh:
        fh.seek(before)
        lines = [
            line for line in fh.read().decode(errors="replace").splitlines() if "LOG:  dbjobs: job" in line
        ]
    assert len(lines) == 2, lines
    assert " dbjobs: job sessions deleted " in lines[0]
    assert lines[0].endswith(" ms (partial)")
    assert ' ms (failed): column "expires_at" does not exist' in lines[1]
