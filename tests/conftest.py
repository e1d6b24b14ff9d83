"""Fixtures: real PostgreSQL servers with real pg_cron, and a fresh application database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbjobs import cli
from dbjobs.cron import MAINTENANCE_JOB, cron_job_name
from tests import servers
from tests.devserver import BINDIR_VARIABLE, ThrowawayServer, find_bindir

LAYOUTS = ("same", "separate")
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[dict[str, servers.Server]]:
    """One server per layout: pg_cron in the application's database, and pg_cron in 'postgres'."""
    kind = servers.source()
    with ExitStack() as stack:
        if kind == "dsn":
            server = servers._from_dsn(os.environ["DBJOBS_TEST_DSN"])
            # One existing server offers both layouts: its pg_cron database, and other databases.
            yield {"same": server, "separate": server}
        elif kind == "docker":
            server = stack.enter_context(servers.docker_server())
            yield {"same": server, "separate": server}
        else:
            yield {
                "same": stack.enter_context(servers.local_server("app")),
                "separate": stack.enter_context(servers.local_server("postgres")),
            }


def pytest_report_header(config: pytest.Config) -> str:
    try:
        kind = servers.source()
        if kind == "local":
            return f"dbjobs test servers: local, {servers.describe_local()}"
        return f"dbjobs test servers: {kind}"
    except Exception as exc:
        return f"dbjobs test servers: none ({exc})"


@pytest.fixture(scope="session")
def pg_cron_version(pg_servers: dict[str, servers.Server]) -> tuple[int, ...]:
    """The test servers' pg_cron, e.g. (1, 6, 7) or (1, 4, 2), for tests that differ by version.

    The library's own version where it is known (local servers), else the
    extension's, which the fixtures bring up to the library's with
    ALTER EXTENSION pg_cron UPDATE.
    """
    if servers.source() == "local":
        known = servers.pg_cron_library_version(find_bindir())
        if known:
            return servers.version_tuple(known)
    with psycopg.connect(pg_servers["same"].dsn) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    assert row is not None
    return servers.version_tuple(row[0])


@dataclass
class AppDb:
    """One test's application database, and how to reach pg_cron from it."""

    layout: str
    dsn: str  # the application's connection, as the CLI gets it
    cron_dsn: str  # the pg_cron database, superuser
    database: str
    schema: str  # where this test's application tables live

    def execute(self, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def cron(self, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cron_dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def cron_jobs(self) -> list[tuple[Any, ...]]:
        """(jobid, jobname, schedule, command, active) of this database's cleanup jobs in pg_cron."""
        return self.cron(
            "SELECT jobid, jobname, schedule, command, active FROM cron.job"
            " WHERE database = %s AND jobname NOT LIKE '%%:\\_maintenance' ORDER BY jobname",
            [self.database],
        )

    def maintenance_job(self) -> list[tuple[Any, ...]]:
        """(jobid, database, schedule, command, active) of dbjobs' maintenance job for this database."""
        return self.cron(
            "SELECT jobid, database, schedule, command, active FROM cron.job WHERE jobname = %s",
            [cron_job_name(self.database, MAINTENANCE_JOB)],
        )

    def count(self, table: str, where: str = "true") -> int:
        return int(self.execute(f"SELECT count(*) FROM {table} WHERE {where}")[0][0])

    def schemas(self) -> set[str]:
        return {r[0] for r in self.execute("SELECT nspname FROM pg_namespace")}


@pytest.fixture(params=LAYOUTS)
def app(request: pytest.FixtureRequest, pg_servers: dict[str, servers.Server]) -> Iterator[AppDb]:
    """A fresh application in each layout of the README's "Where pg_cron lives"."""
    yield from _make_app(request.param, pg_servers[request.param])


@pytest.fixture
def app_separate(pg_servers: dict[str, servers.Server]) -> Iterator[AppDb]:
    """A fresh application whose database is not the pg_cron database."""
    yield from _make_app("separate", pg_servers["separate"])


@pytest.fixture
def app_same(pg_servers: dict[str, servers.Server]) -> Iterator[AppDb]:
    """A fresh application whose database is the pg_cron database."""
    yield from _make_app("same", pg_servers["same"])


def _make_app(layout: str, server: servers.Server) -> Iterator[AppDb]:
    n = next(_counter)
    if layout == "same":
        # The pg_cron database itself: this test's tables go in a schema of its own,
        # found through search_path, and are dropped afterwards.
        database, schema = server.cron_database, f"test_{os.getpid()}_{n}"
        server_conn = psycopg.connect(server.dsn, autocommit=True)
        server_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        dsn = psycopg.conninfo.make_conninfo(server.dsn, options=f"-c search_path={schema}")
    else:
        database, schema = f"dbjobs_test_{os.getpid()}_{n}", "public"
        server_conn = psycopg.connect(server.dsn, autocommit=True)
        server_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        dsn = server.dsn_for(database)
    try:
        yield AppDb(layout, dsn, server.dsn, database, schema)
    finally:
        with server_conn:
            server_conn.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE database = %s AND jobname LIKE 'dbjobs%%'",
                [database],
            )
            server_conn.execute("DELETE FROM cron.job_run_details WHERE database = %s", [database])
            if layout == "same":
                for name in (schema, "dbjobs", "dbjobs alt's"):
                    server_conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                    )
            else:
                server_conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
                )


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def dbjobs_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Any:
    """Run the CLI in-process, in an empty working directory, with a clean environment."""
    for var in list(os.environ):
        # DBJOBS_PG_BINDIR picks the test servers' binaries, not dbjobs' configuration:
        # servers started during the test must use the same ones.
        if (var.startswith(("DBJOBS_", "JOB_", "PG")) or var == "DATABASE_URL") and var != BINDIR_VARIABLE:
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)

    def invoke(*argv: str, env: dict[str, str] | None = None) -> CliResult:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()
            code = cli.main(list(argv))
            captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def write_config(tmp_path: Path) -> Any:
    """Write a dbjobs.toml into the test's working directory and return its path."""

    def write(text: str, name: str = "dbjobs.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_TABLES = (EXAMPLES / "backend_tables.sql").read_text()
SAMPLE_ROWS = (EXAMPLES / "backend_sample_rows.sql").read_text()


@pytest.fixture
def default_tables(app: AppDb) -> AppDb:
    app.execute(DEFAULT_TABLES)
    return app


def throwaway_without_pg_cron() -> ThrowawayServer:
    return ThrowawayServer(preload_pg_cron=False)
