"""What differs between pg_cron versions: the schedules each accepts, and telling the library's version
where the extension's misleads (pg_cron 1.6.0 reported 1.5 until ALTER EXTENSION pg_cron UPDATE)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from dbjobs import cron
from dbjobs.config import DEFAULT_JOBS, Config
from tests.conftest import AppDb
from tests.devserver import ThrowawayServer
from tests.servers import source

ONE_JOB = """
[jobs.{name}]
table = "t"
expires = ["x"]
retain = "1 day"
schedule = "{schedule}"
"""


def test_last_day_of_month_needs_pg_cron_1_6(
    app: AppDb, pg_cron_version: tuple[int, ...], dbjobs_cli, write_config
) -> None:
    app.execute("CREATE TABLE t (x timestamptz)")
    config = write_config(ONE_JOB.format(name="month_end", schedule="0 0 3 $ * *"))  # 6-field form too
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    if pg_cron_version >= (1, 6):
        assert result.code == 0, result.err
        assert [job[2] for job in app.cron_jobs()] == ["0 3 $ * *"]
        again = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
        assert again.out.startswith("nothing to change"), again.out
    else:
        assert result.code == 2
        assert result.err.splitlines() == [
            "dbjobs: error: job 'month_end': schedule: '0 3 $ * *' needs pg_cron 1.6 or later "
            f"(this server has {pg_cron_version[0]}.{pg_cron_version[1]}): "
            "'$' (the last day of the month) arrived in 1.6"
        ]
        assert app.cron_jobs() == []
        assert "dbjobs" not in app.schemas()


def test_library_version_is_the_servers(app: AppDb, pg_cron_version: tuple[int, ...]) -> None:
    with psycopg.connect(app.dsn) as conn, cron.locate(conn, Config(DEFAULT_JOBS), for_changes=False) as site:
        assert site.library_version == pg_cron_version[:2]
        # The fixtures update the extension, so here it agrees with the library.
        assert site.version[:2] == pg_cron_version[:2]


@pytest.fixture(scope="module")
def lagging_extension(pg_cron_version: tuple[int, ...]) -> Iterator[ThrowawayServer]:
    """A pg_cron 1.6 library whose extension was left at 1.5, as pg_cron 1.6.0 left it."""
    if source() != "local":
        pytest.skip("needs a server of the test's own")
    if pg_cron_version < (1, 6):
        pytest.skip(f"needs a pg_cron 1.6 library (this leg runs {'.'.join(map(str, pg_cron_version))})")
    with ThrowawayServer(cron_database="postgres") as pg:
        pg.execute("CREATE EXTENSION pg_cron VERSION '1.5'")
        pg.create_database("app")
        pg.execute("CREATE ROLE app_owner LOGIN")
        pg.execute("ALTER DATABASE app OWNER TO app_owner")
        pg.execute(
            "GRANT USAGE ON SCHEMA cron TO app_owner;"
            "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),"
            " cron.alter_job(bigint,text,text,text,text,boolean) TO app_owner"
        )
        with psycopg.connect(pg.dsn("app", user="app_owner"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x timestamptz)")
        yield pg


@pytest.mark.parametrize("user", ["postgres", "app_owner"])
def test_a_1_6_library_behind_a_1_5_extension(
    lagging_extension: ThrowawayServer, user: str, dbjobs_cli, write_config
) -> None:
    """Detected by the settings the library defines, which an ordinary role cannot read but can see."""
    pg = lagging_extension
    dsn = pg.dsn("app", user=user)
    with psycopg.connect(dsn) as conn, cron.locate(conn, Config(DEFAULT_JOBS), for_changes=False) as site:
        assert site.version == (1, 5)
        assert (site.library_version, site.library_version_text) == ((1, 6), "1.6")

    config = write_config(ONE_JOB.format(name="month_end", schedule="0 3 $ * *"))
    result = dbjobs_cli("--dsn", dsn, "--config", config, "install")
    try:
        assert result.code == 0, result.err
        with psycopg.connect(pg.dsn()) as conn:
            rows = conn.execute("SELECT schedule, username FROM cron.job WHERE database = 'app'").fetchall()
        assert ("0 3 $ * *", user) in rows
    finally:
        assert dbjobs_cli("--dsn", dsn, "--config", config, "uninstall").code == 0
