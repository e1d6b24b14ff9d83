"""The migrations/ environment, and dbjobs.alembic inside an application's own migration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import create_engine, pool

import dbjobs
import dbjobs.alembic
from tests.conftest import DEFAULT_TABLES, AppDb

ROOT = Path(__file__).resolve().parent.parent


def alembic(app: AppDb, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG"))}
    env["DBJOBS_DSN"] = app.dsn
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "migrations" / "alembic.ini"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upgrade_head_installs_and_downgrade_base_removes(app: AppDb, tmp_path: Path) -> None:
    app.execute(DEFAULT_TABLES)
    up = alembic(app, tmp_path, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert len(app.cron_jobs()) == 4
    assert app.execute("SELECT count(*) FROM dbjobs.job") == [(4,)]
    assert app.execute("SELECT version_num FROM dbjobs_alembic_version") == [("0001_install_dbjobs",)]

    down = alembic(app, tmp_path, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert app.cron_jobs() == []
    assert "dbjobs" not in app.schemas()
    assert app.count("refresh_tokens") == 0  # the application's tables stay


def test_install_joins_the_migrations_transaction(app_separate: AppDb) -> None:
    """A migration that fails after dbjobs.alembic.install leaves dbjobs' schema uninstalled."""
    app = app_separate
    app.execute(DEFAULT_TABLES)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(app.dsn), poolclass=pool.NullPool
    )
    config = dbjobs.load_config(environ={})
    with pytest.raises(RuntimeError), engine.begin() as connection:
        op = Operations(MigrationContext.configure(connection))
        plan = dbjobs.alembic.install(op, config)
        assert plan.changed
        assert app.execute("SELECT to_regnamespace('dbjobs')") == [(None,)]  # not committed yet
        raise RuntimeError("a later step of the same migration fails")
    assert "dbjobs" not in app.schemas()
    assert app.cron_jobs() == [] and app.maintenance_job() == []  # pg_cron's database rolled back too

    with engine.begin() as connection:
        dbjobs.alembic.install(Operations(MigrationContext.configure(connection)), config)
        assert app.cron_jobs() == []  # pg_cron's side waits for the migration's commit
    assert app.execute("SELECT count(*) FROM dbjobs.job") == [(4,)]
    assert len(app.cron_jobs()) == 4 and len(app.maintenance_job()) == 1
    engine.dispose()


def test_a_failed_migration_is_one_line_and_a_good_one_logs_the_plan(app: AppDb, tmp_path: Path) -> None:
    (tmp_path / "dbjobs.toml").write_text(
        '[jobs.gone]\ntable = "no_such_table"\nexpires = ["x"]\nretain = "1 day"\nschedule = "0 * * * *"\n'
    )
    failed = alembic(app, tmp_path, "upgrade", "head")
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert len(errors) == 1 and errors[0].startswith(
        "FAILED: dbjobs install: job 'gone': table: relation 'no_such_table' does not exist"
    ), output
    assert "dbjobs" not in app.schemas()

    (tmp_path / "dbjobs.toml").unlink()
    app.execute(DEFAULT_TABLES)
    up = alembic(app, tmp_path, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "dbjobs: create job refresh_tokens: delete from" in up.stderr  # Alembic's logger, on stderr


def test_offline_sql_mode_refuses_in_one_line(app: AppDb, tmp_path: Path) -> None:
    result = alembic(app, tmp_path, "upgrade", "head", "--sql")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert [line for line in output.splitlines() if line.startswith("FAILED")] == [
        "FAILED: dbjobs migrations need a live connection: offline (--sql) mode is not supported; "
        "`dbjobs install --dry-run` prints what would change"
    ]
