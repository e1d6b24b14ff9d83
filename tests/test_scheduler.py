"""Scheduler liveness: a terminated pg_cron launcher makes status fail, with the fix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import DEFAULT_TABLES
from tests.servers import Server, local_server, source


@pytest.fixture(scope="module")
def own_server() -> Iterator[Server]:
    """A server of this module's own: killing its launcher must not break other tests."""
    if source() != "local":
        pytest.skip("terminating pg_cron's launcher needs a server of the test's own")
    with local_server("postgres") as server:
        yield server


def test_terminated_launcher_fails_the_status(own_server: Server, dbjobs_cli) -> None:
    dsn = own_server.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", dsn, "install").code == 0
    healthy = json.loads(dbjobs_cli("--dsn", dsn, "status", "--format", "json").out)
    assert healthy["scheduler"]["running"] is True and healthy["status"] == "pass"

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pg_cron scheduler'"
        )
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()[0]  # type: ignore[index]
    time.sleep(0.5)
    result = dbjobs_cli("--dsn", dsn, "status", "--format", "json")
    report = json.loads(result.out)
    assert result.code == 2
    assert report["status"] == "fail"
    assert report["scheduler"]["running"] is False
    assert "restart PostgreSQL" in report["scheduler"]["detail"]
    assert {job["state"] for job in report["jobs"]} == {"pending"}  # the jobs themselves are fine

    doctor = dbjobs_cli("--dsn", dsn, "doctor")
    assert doctor.code == 2
    assert "FAIL  scheduler: pg_cron scheduler is not running" in doctor.out
    assert "fix: restart PostgreSQL" in doctor.out

    if version.startswith("1.4"):  # pg_cron 1.4 never restarts a terminated launcher
        time.sleep(2)
        assert dbjobs_cli("--dsn", dsn, "status").code == 2


def test_a_session_calling_itself_the_scheduler_is_not_taken_for_it(own_server: Server, dbjobs_cli) -> None:
    """With the launcher terminated, a look-alike session must not pass for it."""
    with psycopg.connect(own_server.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pg_cron scheduler' AND usesysid = 10"
        )
        conn.execute("CREATE ROLE nobody_special LOGIN")
    dsn = psycopg.conninfo.make_conninfo(own_server.dsn, application_name="pg_cron scheduler")
    impostor_dsn = psycopg.conninfo.make_conninfo(dsn, user="nobody_special")
    with psycopg.connect(impostor_dsn):
        report = json.loads(dbjobs_cli("--dsn", own_server.dsn, "status", "--format", "json").out)
    assert report["scheduler"]["running"] is False
