"""Upgrades of dbjobs' own schema: an install of the previous release, upgraded by this one, is a
fresh install with the old history; migrations are numbered without gaps; no downgrades."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbjobs import schema, sqlfiles
from tests import servers
from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb
from tests.devserver import find_bindir

ROOT = Path(__file__).resolve().parent.parent
# The tree just before schema versions: sql/schema.sql, run whole on every install (CREATE TABLE
# IF NOT EXISTS, then ADD COLUMN IF NOT EXISTS per later column), meta without schema_version.
PREVIOUS_RELEASE = "ebcdde6e2854ae07bfcfc4a951b0cd7b6306933a"
# The first commit with the SQL: run's first nine columns only, everything else added since by the
# ADD COLUMN IF NOT EXISTS lines that migration 0001 now holds.
FIRST_SCHEMA = "f14595b"


def _checkout(commit: str, into: Path) -> Path:
    """dbjobs/ and sql/ of ``commit``, from git history, in ``into``."""
    into.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "dbjobs", "sql"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs the git history of this checkout, with commit {commit[:12]}: {exc}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _old_cli(tree: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """That dbjobs' CLI, in a process of its own, with a clean environment as dbjobs_cli has."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("DBJOBS_", "JOB_", "PG")) or k == "DATABASE_URL")
    }
    env["PYTHONPATH"] = str(tree)
    code = (
        "import sys, dbjobs; from dbjobs import cli; "
        "assert dbjobs.__file__.startswith(sys.argv[1]), dbjobs.__file__; "
        "sys.exit(cli.main(sys.argv[2:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tree), *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result


def _pg_dump() -> str:
    """The pg_dump of the test servers' PostgreSQL (its own bin directory: PostgreSQL 15's on the
    Debian leg, the wheel's on the PostgreSQL 18 one)."""
    if servers.source() == "local":
        return str(find_bindir() / "pg_dump")
    found = shutil.which("pg_dump")
    if found is None:
        pytest.skip("no pg_dump for this server")
    return found


def schema_dump(app: AppDb, name: str = "dbjobs") -> str:
    """pg_dump --schema-only of dbjobs' schema, without pg_dump 15.14+'s random \\restrict keys."""
    dump = subprocess.run(
        [_pg_dump(), "--schema-only", f"--schema={name}", "--dbname", app.dsn],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict"))]
    assert any(line.startswith("CREATE TABLE") for line in lines)
    return "\n".join(lines)


def table_rows(app: AppDb, table: str) -> dict[Any, Any]:
    key = "id" if table == "run" else "name"
    return {r[0]: r[1] for r in app.execute(f"SELECT {key}, to_jsonb(t) FROM dbjobs.{table} t")}


def test_the_previous_release_upgrades_to_a_fresh_install(app: AppDb, dbjobs_cli, tmp_path: Path) -> None:
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    fresh = schema_dump(app)
    assert dbjobs_cli("--dsn", app.dsn, "uninstall").code == 0

    # The previous release installs, runs every job (history rows of every kind of column) ...
    old = _checkout(PREVIOUS_RELEASE, tmp_path / "previous")
    _old_cli(old, tmp_path, "--dsn", app.dsn, "install")
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'schema_version'") == []
    _old_cli(old, tmp_path, "--dsn", app.dsn, "run", "--all")
    runs, jobs, cron_jobs = table_rows(app, "run"), table_rows(app, "job"), app.cron_jobs()
    assert len(runs) == 4 and {r["status"] for r in runs.values()} == {"succeeded"}
    assert sum(r["rows_deleted"] for r in runs.values()) > 0

    # ... and this one upgrades it.
    upgraded = dbjobs_cli("--dsn", app.dsn, "install")
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out.splitlines() == [
        'update schema "dbjobs": SQL objects upgraded to this version of dbjobs, tables upgraded from an '
        f"install without versions to version {schema.latest_version()} "
        f"({', '.join(m.name for m in schema.migrations())})",
        # Its maintenance command sends the failures only pg_cron saw as events (sql/maintenance.sql).
        "update job _maintenance: command upgraded",
    ]
    assert schema_dump(app) == fresh
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'schema_version'") == [
        (str(schema.latest_version()),)
    ]
    after = table_rows(app, "run")
    # A scheduled run may have added one since. Columns added since hold NULL (backlog_after) or
    # their defaults (replica_waited).
    assert {id: {k: after[id][k] for k in row} for id, row in runs.items()} == runs
    assert {after[id]["backlog_after"] for id in runs} == {None}
    assert {after[id]["replica_waited"] for id in runs} == {"00:00:00"}
    # Kept as they were; columns added since hold their defaults (NULL: max_runtime, fail_after).
    upgraded_jobs = table_rows(app, "job")
    assert {name: {k: upgraded_jobs[name][k] for k in job} for name, job in jobs.items()} == jobs
    assert all(
        value is None
        for job in upgraded_jobs.values()
        for k, value in job.items()
        if k not in jobs[job["name"]]
    )
    assert app.cron_jobs() == cron_jobs
    assert dbjobs_cli("--dsn", app.dsn, "install").out.startswith("nothing to change")
    assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
    assert app.count("dbjobs.run") >= 8


def reread_sql_files() -> None:
    for cached in (sqlfiles.read, sqlfiles.queries, sqlfiles.defines, sqlfiles._expand):
        cached.cache_clear()


def test_the_first_shape_gets_every_column_from_migration_0001(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    fresh = schema_dump(app)
    assert dbjobs_cli("--dsn", app.dsn, "uninstall").code == 0

    # That commit's sql/schema.sql as its install applied it, with a job and its history.
    try:
        first = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{FIRST_SCHEMA}:sql/schema.sql"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs the git history of this checkout, with commit {FIRST_SCHEMA}: {exc}")
    app.execute(first.replace("@schema@", '"dbjobs"'))
    app.execute(
        """
        INSERT INTO dbjobs.meta VALUES ('sql_digest', 'first'), ('history_retention', '7 days');
        INSERT INTO dbjobs.job (name, table_schema, table_name, expires, retain, batch_size, schedule)
        VALUES ('refresh_tokens', current_schema, 'refresh_tokens', '{expires_at}', '30 days', 5000,
                '0 * * * *');
        INSERT INTO dbjobs.run (job, trigger, status, finished_at, cutoff, rows_deleted)
        VALUES ('refresh_tokens', 'scheduled', 'succeeded', now(), now() - interval '30 days', 12),
               ('refresh_tokens', 'manual', 'failed', now(), now() - interval '30 days', 0);
        """
    )
    assert app.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'dbjobs.run'::regclass AND attnum > 0"
    ) == [(9,)]
    runs = table_rows(app, "run")

    upgraded = dbjobs_cli("--dsn", app.dsn, "install")
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out.splitlines()[0].startswith(
        'update schema "dbjobs": SQL objects upgraded to this version of dbjobs, tables upgraded from an '
        "install without versions to version "
    )
    assert schema_dump(app) == fresh  # the first run_job(text) overload is gone too
    after = table_rows(app, "run")
    zero = {"partitions_removed", "partition_rows", "rows_skipped"}  # NOT NULL DEFAULT 0
    for id, row in runs.items():
        assert {k: after[id][k] for k in row} == row
        assert {k: v for k, v in after[id].items() if k not in row} == {
            k: 0 if k in zero else "00:00:00" if k == "replica_waited" else None
            for k in after[id]
            if k not in row
        }
    assert dbjobs_cli("--dsn", app.dsn, "run", "refresh_tokens").code == 0


@pytest.fixture
def sql_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A copy of sql/ that dbjobs reads instead, to add a migration to (then reread_sql_files())."""
    copy = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", copy)
    reread_sql_files()
    monkeypatch.setattr(sqlfiles, "_sql_dir", lambda: copy)
    yield copy
    reread_sql_files()


def test_a_migration_takes_an_install_to_the_next_version(app: AppDb, dbjobs_cli, sql_dir: Path) -> None:
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
    runs = table_rows(app, "run")
    latest = schema.latest_version()

    # The next version adds a column: a migration, and the same column last in tables.sql.
    step = f"{latest + 1:04d}_run_note"
    (sql_dir / "migrations" / f"{step}.sql").write_text(
        "ALTER TABLE @schema@.run ADD COLUMN note text NOT NULL DEFAULT '' CHECK (note <> 'x');\n"
    )
    tables = (sql_dir / "tables.sql").read_text()
    tables = tables.replace(
        "    replica_waited     interval NOT NULL DEFAULT interval '0'\n);",
        "    replica_waited     interval NOT NULL DEFAULT interval '0',\n"
        "    note text NOT NULL DEFAULT '' CHECK (note <> 'x')\n);",
    )
    tables = tables.replace(f"('schema_version', '{latest}')", f"('schema_version', '{latest + 1}')")
    assert "note text" in tables and f"'{latest + 1}')" in tables
    (sql_dir / "tables.sql").write_text(tables)
    reread_sql_files()
    assert schema.latest_version() == latest + 1

    line = (
        'update schema "dbjobs": SQL objects upgraded to this version of dbjobs, '
        f"tables upgraded from version {latest} to version {latest + 1} ({step})"
    )
    dry = dbjobs_cli("--dsn", app.dsn, "install", "--dry-run")
    assert dry.out.splitlines() == [line, "dry run: nothing was changed"]
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'schema_version'") == [(str(latest),)]

    upgraded = dbjobs_cli("--dsn", app.dsn, "install")
    assert upgraded.out.splitlines() == [line], upgraded.err
    assert app.execute("SELECT value FROM dbjobs.meta WHERE key = 'schema_version'") == [(str(latest + 1),)]
    assert {
        id: {k: v for k, v in row.items() if k != "note"} for id, row in table_rows(app, "run").items()
    } == runs
    assert dbjobs_cli("--dsn", app.dsn, "install").out.startswith("nothing to change")
    assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
    migrated = schema_dump(app)

    assert dbjobs_cli("--dsn", app.dsn, "uninstall").code == 0
    created = dbjobs_cli("--dsn", app.dsn, "install").out.splitlines()[0]
    assert (
        created
        == f'create schema "dbjobs": tables (version {latest + 1}), functions and the cleanup procedure'
    )
    assert schema_dump(app) == migrated


def test_a_newer_schema_is_refused(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    newer = schema.latest_version() + 1
    app.execute("UPDATE dbjobs.meta SET value = %s WHERE key = 'schema_version'", [str(newer)])
    result = dbjobs_cli("--dsn", app.dsn, "install")
    assert result.code == 3
    assert (
        f'schema "dbjobs" holds dbjobs\' tables at version {newer}, newer than this dbjobs knows '
        f"({newer - 1}): use a dbjobs at least as new as the one that installed them "
        "(there are no downgrades)"
    ) in result.err


def test_migrations_are_numbered_without_gaps_up_to_the_fresh_shape() -> None:
    names = sorted(p.name for p in (ROOT / "sql" / "migrations").iterdir())
    assert names and all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name) for name in names), names
    numbers = [int(name[:4]) for name in names]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [m.version for m in schema.migrations()] == numbers
    # A fresh install records the version the migrations reach.
    recorded = re.findall(r"\('schema_version', '(\d+)'\)", sqlfiles.read("tables.sql"))
    assert recorded == [str(numbers[-1])] and schema.latest_version() == numbers[-1]
    # Migrations change tables only: the routines are routines.sql's, dropped and made again.
    for name in names:
        text = (ROOT / "sql" / "migrations" / name).read_text()
        assert not re.search(r"CREATE (OR REPLACE )?(FUNCTION|PROCEDURE)", text), name
