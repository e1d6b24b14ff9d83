"""On a hot standby, status reports that the scheduler runs on the primary, and does not fail."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS
from tests.devserver import ThrowawayServer
from tests.servers import local_standby, source


def test_status_on_a_hot_standby(dbjobs_cli) -> None:
    if source() != "local":
        pytest.skip("needs the local server binaries to start a primary and its standby")
    with ThrowawayServer(cron_database="postgres") as primary:
        primary.create_pg_cron()
        primary.create_database("app")
        app = primary.dsn("app")
        with psycopg.connect(app, autocommit=True) as conn:
            conn.execute(DEFAULT_TABLES + SAMPLE_ROWS)
        assert dbjobs_cli("--dsn", app, "install").code == 0
        assert dbjobs_cli("--dsn", app, "run", "--all").code == 0
        with local_standby(primary) as standby, psycopg.connect(primary.dsn(), autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            with psycopg.connect(standby.dsn("app"), autocommit=True) as replica:
                deadline = time.monotonic() + 30
                behind = "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn"
                while replica.execute(behind, [target]).fetchone()[0]:  # type: ignore[index]
                    assert time.monotonic() < deadline, "the standby did not catch up"
                    time.sleep(0.1)
                assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)

            result = dbjobs_cli("--dsn", standby.dsn("app"), "status", "--format", "json")
            report = json.loads(result.out)
            assert result.code == 0, result.err
            assert report["status"] == "pass"
            assert (report["scheduler"]["running"], report["scheduler"]["detail"]) == (
                None,
                "hot standby: pg_cron's scheduler runs on the primary",
            )
            states = {job["name"]: (job["state"], job["last_rows_deleted"]) for job in report["jobs"]}
            assert states["email_verifications"] == ("ok", 3)
