"""batch_timeout: a real bound on each batch's transaction on PostgreSQL 17+ (transaction_timeout)."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.conftest import AppDb

JOB = """
batch_timeout = "{timeout}"
[jobs.events]
table = "events"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 * * * *"
batch_size = 100
"""
# 500 expired rows; the last one is slow to delete (a trigger sleeps), so its batch runs past the bound.
TABLE = """
CREATE TABLE events (id int PRIMARY KEY, expires_at timestamptz, slow boolean NOT NULL DEFAULT false);
INSERT INTO events SELECT g, now() - interval '2 days', g = 500 FROM generate_series(1, 500) g;
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.slow THEN PERFORM pg_sleep(3); END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION slow_delete();
"""


def server_version(app: AppDb) -> int:
    with psycopg.connect(app.dsn) as conn:
        return conn.info.server_version


def test_batch_timeout_is_installed_as_a_setting(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE)
    config = write_config(JOB.format(timeout="1 minute"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'batch_timeout'") == [("60000",)]
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").out.startswith("nothing to change")
    config = write_config(JOB.format(timeout="1.5 seconds"))
    changed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert changed.out.splitlines() == ["update setting batch_timeout: 60000 ms -> 1500 ms"]
    bad = dbjobs_cli("--dsn", app.dsn, "--config", write_config(JOB.format(timeout="0 seconds")), "install")
    assert bad.code == 2 and "batch_timeout: '0 seconds' must be more than 0" in bad.err


def test_a_batch_past_batch_timeout_is_stopped_and_recorded(app: AppDb, dbjobs_cli, write_config) -> None:
    if server_version(app) < 170000:
        pytest.skip("transaction_timeout arrived in PostgreSQL 17")
    app.execute(TABLE)
    config = write_config(JOB.format(timeout="1 second"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0

    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert result.code == 1
    assert "terminating connection due to transaction timeout: a batch ran past batch_timeout" in result.out
    left = app.count("events")
    assert 1 <= left < 500  # the batches before the slow one stay deleted; the slow one's is rolled back
    assert app.count("events", "slow") == 1
    [(status, error)] = app.execute("SELECT status, error FROM dbjobs.run ORDER BY id DESC LIMIT 1")
    assert status == "failed" and "batch_timeout" in error
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    job = next(job for job in report["jobs"] if job["name"] == "events")
    assert job["state"] == "failing" and "transaction timeout" in job["last_error"]

    app.execute("DROP TRIGGER slow_delete ON events")
    again = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert again.code == 0 and f"events: deleted {left} rows" in again.out
    assert app.count("events") == 0
