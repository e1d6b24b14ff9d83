"""pg_cron in a database of another name (Aiven's 'defaultdb'), used by an ordinary role with only the
README's grants: dbjobs finds it from pg_cron's scheduler in pg_stat_activity, with no cron_dsn."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from dbjobs import cron
from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS
from tests.devserver import ThrowawayServer
from tests.faults import scheduler_up, wait_for
from tests.servers import source

ROLE = "app_owner"
# The README's grants, in pg_cron's database.
GRANTS = f"""
GRANT USAGE ON SCHEMA cron TO {ROLE};
GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),
                          cron.alter_job(bigint,text,text,text,text,boolean) TO {ROLE};
"""


@pytest.fixture(scope="module")
def defaultdb() -> Iterator[ThrowawayServer]:
    """A server whose cron.database_name is 'defaultdb', and an application database 'app' owned by
    an ordinary role."""
    if source() != "local":
        pytest.skip("needs a server of the test's own (cron.database_name = 'defaultdb')")
    with ThrowawayServer(cron_database="defaultdb") as pg:
        pg.create_pg_cron()
        pg.execute(f"CREATE ROLE {ROLE} LOGIN")
        pg.execute(GRANTS, dbname="defaultdb")
        pg.execute(f"CREATE DATABASE app OWNER {ROLE}")
        with psycopg.connect(pg.dsn("app", user=ROLE), autocommit=True) as conn:
            conn.execute(DEFAULT_TABLES)
            conn.execute(SAMPLE_ROWS)
        yield pg


def test_the_scheduler_shows_where_pg_cron_lives_to_any_role(defaultdb: ThrowawayServer) -> None:
    with psycopg.connect(defaultdb.dsn("app", user=ROLE), autocommit=True) as conn:
        assert cron.find_cron_database(conn) == ("defaultdb", "pg_cron's scheduler runs there")
        # What dbjobs could read before: nothing, cron.database_name is for superusers.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT current_setting('cron.database_name')")


def test_install_run_status_without_cron_dsn(defaultdb: ThrowawayServer, dbjobs_cli) -> None:
    dsn = defaultdb.dsn("app", user=ROLE)
    installed = dbjobs_cli("--dsn", dsn, "install")
    try:
        assert installed.code == 0, installed.err
        with psycopg.connect(defaultdb.dsn("defaultdb")) as conn:
            jobs = conn.execute(
                "SELECT jobname, username, database FROM cron.job"
                " WHERE jobname LIKE 'dbjobs:app:%' ORDER BY jobname"
            ).fetchall()
        assert jobs == [
            ("dbjobs:app:_maintenance", ROLE, "defaultdb"),
            ("dbjobs:app:email_verifications", ROLE, "app"),
            ("dbjobs:app:login_attempts", ROLE, "app"),
            ("dbjobs:app:password_resets", ROLE, "app"),
            ("dbjobs:app:refresh_tokens", ROLE, "app"),
        ]
        assert dbjobs_cli("--dsn", dsn, "install").out.startswith("nothing to change")

        ran = dbjobs_cli("--dsn", dsn, "run", "--all")
        assert ran.code == 0, ran.err
        assert "refresh_tokens: deleted 2 rows" in ran.out

        status = dbjobs_cli("--dsn", dsn, "status", "--format", "json")
        report = json.loads(status.out)
        assert report["database"] == "app"
        assert report["scheduler"]["running"] is True
        states = {job["name"]: job["state"] for job in report["jobs"]}
        assert {states[name] for name in states if name != "_maintenance"} == {"ok"}, states
    finally:
        removed = dbjobs_cli("--dsn", dsn, "uninstall")
    assert removed.code == 0, removed.err
    with psycopg.connect(defaultdb.dsn("defaultdb")) as conn:
        assert conn.execute("SELECT count(*) FROM cron.job WHERE username = %s", [ROLE]).fetchone() == (0,)


def test_pg_cron_missing_from_the_schedulers_database_is_one_clear_line(
    defaultdb: ThrowawayServer, dbjobs_cli
) -> None:
    """pg_cron preloaded, its scheduler up in 'defaultdb', the extension not created there yet."""
    defaultdb.execute("DROP EXTENSION pg_cron", dbname="defaultdb")
    try:
        for argv in (["install"], ["status"]):
            # The scheduler is up there (what this test is about): on a loaded machine pg_cron
            # 1.6 may still be restarting its launcher after the DROP; dbjobs finds it by it.
            wait_for(lambda: scheduler_up(defaultdb), 15, "pg_cron's scheduler in defaultdb")
            result = dbjobs_cli("--dsn", defaultdb.dsn("app", user=ROLE), *argv)
            assert result.code == 3, result
            [line] = result.err.splitlines()
            assert line.startswith(
                "dbjobs: error: pg_cron is not installed in database 'app' nor in 'defaultdb' "
                "(pg_cron's scheduler runs there): "
            ), line
            assert "CREATE EXTENSION pg_cron" in line and "cron_dsn" in line
    finally:
        defaultdb.create_pg_cron()
        defaultdb.execute(GRANTS, dbname="defaultdb")


def test_cron_dsn_still_overrides(defaultdb: ThrowawayServer, dbjobs_cli, write_config) -> None:
    """An explicit cron_dsn wins over what the scheduler shows, even when it is wrong."""
    config = write_config(f"cron_dsn = {defaultdb.dsn('postgres', user=ROLE)!r}\n")
    result = dbjobs_cli("--dsn", defaultdb.dsn("app", user=ROLE), "--config", config, "install")
    assert result.code == 3
    [line] = result.err.splitlines()
    assert "pg_cron is not installed in database 'app' nor in 'postgres' (cron_dsn)" in line
