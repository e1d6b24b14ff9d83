"""Scheduler liveness: a terminated pg_cron launcher makes status fail, with the fix for the version."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

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


def _terminate_launcher(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pg_cron scheduler' AND usesysid = 10"
        )


def _launcher_started_after(dsn: str, moment: datetime) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pg_cron scheduler'"
            " AND usesysid = 10 AND backend_start > %s)",
            [moment],
        ).fetchone()
    return bool(row and row[0])


def _status_while_down(dsn: str, dbjobs_cli, *argv: str):  # type: ignore[no-untyped-def]
    """Terminate the launcher and run ``dbjobs status ...`` before it is back: pg_cron 1.6.1+
    restarts it within a second, so a try it restarted during is done again."""
    for _ in range(5):
        before = datetime.now(UTC)
        _terminate_launcher(dsn)
        time.sleep(0.2)
        result = dbjobs_cli("--dsn", dsn, "status", *argv)
        if not _launcher_started_after(dsn, before):
            return result
    pytest.fail("pg_cron's launcher came back before every status could read it down")


def test_terminated_launcher_fails_the_status(
    own_server: Server, dbjobs_cli, pg_cron_version: tuple[int, ...]
) -> None:
    dsn = own_server.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", dsn, "install").code == 0
    healthy = json.loads(dbjobs_cli("--dsn", dsn, "status", "--format", "json").out)
    assert healthy["scheduler"]["running"] is True and healthy["status"] == "pass"

    result = _status_while_down(dsn, dbjobs_cli, "--format", "json")
    report = json.loads(result.out)
    assert result.code == 2
    assert report["status"] == "fail"
    assert report["scheduler"]["running"] is False
    assert {job["state"] for job in report["jobs"]} == {"pending"}  # the jobs themselves are fine

    if pg_cron_version >= (1, 6):  # (1.6.0, which did not, cannot be told from 1.6.1 by its settings)
        # pg_cron restarts a terminated launcher: the advice says so, and status passes again.
        assert "restarts it" in report["scheduler"]["detail"]
        deadline = time.monotonic() + 10
        while dbjobs_cli("--dsn", dsn, "status").code != 0:
            assert time.monotonic() < deadline, "pg_cron 1.6.1+ did not restart its launcher"
            time.sleep(0.2)
        return

    # pg_cron before 1.6.1 never restarts a terminated launcher: restarting PostgreSQL does.
    assert "restart PostgreSQL" in report["scheduler"]["detail"]
    doctor = dbjobs_cli("--dsn", dsn, "doctor")
    assert doctor.code == 2
    assert "FAIL  scheduler: pg_cron scheduler is not running" in doctor.out
    assert "fix: check shared_preload_libraries and cron.database_name, then restart PostgreSQL" in doctor.out
    time.sleep(2)
    assert dbjobs_cli("--dsn", dsn, "status").code == 2


def test_a_session_calling_itself_the_scheduler_is_not_taken_for_it(own_server: Server, dbjobs_cli) -> None:
    """With the launcher terminated, a look-alike session must not pass for it."""
    with psycopg.connect(own_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE nobody_special LOGIN")
    dsn = psycopg.conninfo.make_conninfo(own_server.dsn, application_name="pg_cron scheduler")
    impostor_dsn = psycopg.conninfo.make_conninfo(dsn, user="nobody_special")
    with psycopg.connect(impostor_dsn):
        result = _status_while_down(own_server.dsn, dbjobs_cli, "--format", "json")
    assert json.loads(result.out)["scheduler"]["running"] is False
