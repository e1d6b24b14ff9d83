"""pg_cron's settings that change what status must say: cron.timezone (1.5+) and
cron.launch_active_jobs (1.6), on a server of the test's own; UTC on pg_cron 1.4."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.devserver import ThrowawayServer
from tests.servers import source

ROLE = "app_owner"
ZONE = "Asia/Kolkata"  # UTC+5:30: an hourly job fires at :30 UTC
JOB = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "{schedule}"
"""


@pytest.fixture(scope="module")
def kolkata(pg_cron_version: tuple[int, ...]) -> Iterator[ThrowawayServer]:
    """pg_cron in 'app' with cron.timezone = 'Asia/Kolkata', and an ordinary role owning the tables."""
    if source() != "local":
        pytest.skip("needs a server of the test's own (cron.timezone is set at server start)")
    # cron.log_run = off too: pg_cron then records no runs (dbjobs' own history still does).
    settings = {"cron.log_run": "off"}
    if pg_cron_version >= (1, 5):
        settings["cron.timezone"] = f"'{ZONE}'"
    with ThrowawayServer(cron_database="app", settings=settings) as pg:
        pg.create_pg_cron()
        pg.execute(f"CREATE ROLE {ROLE} LOGIN", dbname="app")
        pg.execute(
            f"GRANT USAGE ON SCHEMA cron TO {ROLE}; GRANT CREATE ON DATABASE app TO {ROLE}", dbname="app"
        )
        with psycopg.connect(pg.dsn("app", user=ROLE), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {ROLE} AUTHORIZATION {ROLE}")
            conn.execute(f"CREATE TABLE {ROLE}.sessions (id int, expires_at timestamptz)")
        yield pg


def status(dbjobs_cli, dsn: str, *extra: str) -> dict:
    result = dbjobs_cli("--dsn", dsn, "status", "--format", "json", *extra)
    assert result.code in (0, 1), result.err + result.out
    return dict(json.loads(result.out))


def test_fire_times_in_pg_cron_s_time_zone(
    kolkata: ThrowawayServer, dbjobs_cli, write_config, pg_cron_version: tuple[int, ...]
) -> None:
    owner = kolkata.dsn("app", user=ROLE)
    config = write_config(JOB.format(schedule="0 * * * *"))
    assert dbjobs_cli("--dsn", owner, "--config", config, "install").code == 0
    try:
        superuser = status(dbjobs_cli, kolkata.dsn("app"))
        job = next(j for j in superuser["jobs"] if j["name"] == "sessions")
        next_run = datetime.fromisoformat(job["next_run_at"].replace("Z", "+00:00"))
        if pg_cron_version < (1, 5):
            assert superuser["scheduler"]["timezone"] == "UTC"
            assert "runs schedules in UTC" in superuser["scheduler"]["timezone_source"]
            assert next_run.minute == 0
            return
        assert (superuser["scheduler"]["timezone"], superuser["scheduler"]["timezone_source"]) == (
            ZONE,
            "cron.timezone",
        )
        assert next_run.minute == 30  # :00 in Kolkata

        # The owner may not read cron.timezone: pg_cron's default, and status says so ...
        owner_view = status(dbjobs_cli, owner)
        assert owner_view["scheduler"]["timezone"] == "GMT"
        assert "cannot be read" in owner_view["scheduler"]["timezone_source"]
        # ... unless the configuration says which zone pg_cron runs in.
        told = write_config(f'cron_timezone = "{ZONE}"\n' + JOB.format(schedule="0 * * * *"))
        told_view = status(dbjobs_cli, owner, "--config", told)
        assert told_view["scheduler"]["timezone"] == ZONE
        assert told_view["scheduler"]["timezone_source"].startswith("cron_timezone in the configuration")
        assert told_view["drift"] == []
        text = dbjobs_cli("--dsn", owner, "--config", told, "status").out
        assert f"schedules fire in {ZONE} (cron_timezone in the configuration" in text
    finally:
        dbjobs_cli("--dsn", owner, "--config", config, "uninstall")


@pytest.mark.slow
def test_pg_cron_fires_when_status_says_it_will(
    kolkata: ThrowawayServer, dbjobs_cli, write_config, pg_cron_version: tuple[int, ...]
) -> None:
    """A daily job at the next minute of Kolkata's clock: pg_cron runs it at the time status predicted."""
    if pg_cron_version < (1, 5):
        pytest.skip("pg_cron before 1.5 has no cron.timezone")
    owner = kolkata.dsn("app", user=ROLE)
    local = datetime.now(UTC).astimezone(ZoneInfo(ZONE)) + timedelta(minutes=1)
    if local.second > 50:  # too close to the minute's end to install in time
        time.sleep(11)
        local = datetime.now(UTC).astimezone(ZoneInfo(ZONE)) + timedelta(minutes=1)
    config = write_config(JOB.format(schedule=f"{local.minute} {local.hour} * * *"))
    assert dbjobs_cli("--dsn", owner, "--config", config, "install").code == 0
    try:
        job = next(j for j in status(dbjobs_cli, kolkata.dsn("app"))["jobs"] if j["name"] == "sessions")
        predicted = datetime.fromisoformat(job["next_run_at"].replace("Z", "+00:00"))
        assert predicted - datetime.now(UTC) < timedelta(minutes=2)  # not tomorrow, not in 5:30 hours
        deadline = time.monotonic() + 150
        with psycopg.connect(kolkata.dsn("app"), autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT started_at, trigger FROM dbjobs.run"
                    " WHERE job = 'sessions' AND status <> 'running'"
                ).fetchone()
                if row:
                    break
                assert time.monotonic() < deadline, "pg_cron did not run the job when status said it would"
                time.sleep(1)
        assert row[1] == "scheduled"
        assert abs(row[0] - predicted) < timedelta(seconds=30)
    finally:
        dbjobs_cli("--dsn", owner, "--config", config, "uninstall")


def test_a_paused_scheduler_warns(
    kolkata: ThrowawayServer, dbjobs_cli, write_config, pg_cron_version: tuple[int, ...]
) -> None:
    if pg_cron_version < (1, 6):
        pytest.skip("cron.launch_active_jobs arrived in pg_cron 1.6")
    owner = kolkata.dsn("app", user=ROLE)
    config = write_config(JOB.format(schedule="0 * * * *"))
    assert dbjobs_cli("--dsn", owner, "--config", config, "install").code == 0
    try:
        kolkata.execute("ALTER SYSTEM SET cron.launch_active_jobs = off")
        kolkata.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:
            result = dbjobs_cli("--dsn", kolkata.dsn("app"), "status", "--format", "json")
            report = json.loads(result.out)
            if report["scheduler"]["paused"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (result.code, report["status"], report["scheduler"]["paused"]) == (1, "warn", True)
        assert "cron.launch_active_jobs = off" in report["scheduler"]["detail"]
        health = json.loads(dbjobs_cli("--dsn", kolkata.dsn("app"), "status", "--format", "health").out)
        assert health["checks"]["pg_cron:scheduler"][0]["status"] == "warn"
        prometheus = dbjobs_cli("--dsn", kolkata.dsn("app"), "status", "--format", "prometheus").out
        assert "dbjobs_scheduler_paused 1.0" in prometheus
        # A role that may not read the setting cannot tell: paused is unknown, not false.
        assert status(dbjobs_cli, owner)["scheduler"]["paused"] is None
    finally:
        kolkata.execute("ALTER SYSTEM RESET cron.launch_active_jobs")
        kolkata.execute("SELECT pg_reload_conf()")
        dbjobs_cli("--dsn", owner, "--config", config, "uninstall")


def test_doctor_says_what_the_settings_mean(kolkata: ThrowawayServer, dbjobs_cli, write_config) -> None:
    config = write_config(JOB.format(schedule="0 * * * *").replace('"sessions"', f'"{ROLE}.sessions"'))
    result = dbjobs_cli("--dsn", kolkata.dsn("app"), "--config", config, "doctor")
    assert result.code == 1, result.out  # warnings only: dbjobs is not installed, run logging is off
    assert "WARN  run logging: cron.log_run = off: pg_cron records no runs" in result.out
    assert "fix: set cron.log_run = on and restart PostgreSQL" in result.out
    zone = ZONE if "1.4" not in result.out.split("PASS  pg_cron: pg_cron ")[1][:4] else "UTC"
    assert f"PASS  time zone: schedules fire in {zone}" in result.out
    # A role that may not read the settings is not told they are fine: it is not told anything.
    owner = dbjobs_cli("--dsn", kolkata.dsn("app", user=ROLE), "--config", config, "doctor")
    assert "run logging" not in owner.out
    if zone != "UTC":  # pg_cron 1.5+: the owner cannot read cron.timezone, and is told to say it
        assert "WARN  time zone: schedules fire in GMT (pg_cron's default, assumed;" in owner.out
        assert "fix: set cron_timezone to pg_cron's cron.timezone" in owner.out
