"""dbjobs' own SQL objects: privileges, pinned search_path, upgrades, pg_cron naming limits,
the tuning constants."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbjobs import schema, sqlfiles
from dbjobs.cron import MAX_JOBNAME_BYTES
from dbjobs.install import _schema_state
from tests.conftest import DEFAULT_TABLES, AppDb

README = Path(__file__).resolve().parent.parent / "README.md"

ONE_JOB = '[jobs.{name}]\ntable = "t"\nexpires = "x"\nretain = "1 day"\nschedule = "{schedule}"\n'


def test_functions_pin_search_path_and_are_not_public(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    routines = app.execute(
        """
        SELECT p.oid::regprocedure::text, p.prokind, p.proconfig,
               has_function_privilege('public', p.oid, 'EXECUTE')
          FROM pg_proc p WHERE p.pronamespace = 'dbjobs'::regnamespace ORDER BY 1
        """
    )
    created = re.findall(
        r"^CREATE (?:FUNCTION|PROCEDURE) @schema@\.(\w+)\(", sqlfiles.read("routines.sql"), re.M
    )
    assert {r[0].split("(")[0] for r in routines} == {f"dbjobs.{name}" for name in created}
    # What pg_cron, dbjobs run and status call keeps its name and signature.
    assert {
        "dbjobs.run_job(text,text,bigint)",
        "dbjobs.finish_run(bigint,text,boolean)",
        "dbjobs.status_history(text[])",
        "dbjobs.status_cron(text[],bigint)",
        "dbjobs.status_runs(text[],integer)",
        "dbjobs.status_backlog(text)",
        "dbjobs.start_run(text,text)",
        "dbjobs.retry_due()",
        "dbjobs.retries()",
    } <= {r[0] for r in routines}
    # Uninstall knows every one of them for dbjobs' own.
    with psycopg.connect(app.dsn) as conn:
        assert _schema_state(conn, "dbjobs").foreign_objects == []
    for name, kind, config, public_may_execute in routines:
        assert not public_may_execute, name
        if kind == "f":
            assert "search_path=pg_catalog, pg_temp" in (config or []), name
        else:  # the procedure COMMITs, which a SET clause would forbid
            assert config is None, name
    assert app.execute("SELECT has_schema_privilege('public', 'dbjobs', 'USAGE')") == [(False,)]


def test_upgrade_keeps_history_and_job_ids(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    assert dbjobs_cli("--dsn", app.dsn, "run", "--all").code == 0
    jobs = app.cron_jobs()
    # What an install by an older dbjobs looks like: another digest, an older procedure.
    app.execute("UPDATE dbjobs.meta SET value = 'older' WHERE key = 'sql_digest'")
    app.execute("CREATE OR REPLACE PROCEDURE dbjobs.run_job(job_name text) LANGUAGE sql AS 'SELECT 1'")

    upgraded = dbjobs_cli("--dsn", app.dsn, "install")
    assert upgraded.code == 0
    assert upgraded.out.splitlines() == [
        'update schema "dbjobs": SQL objects upgraded to this version of dbjobs, '
        f"tables unchanged at version {schema.latest_version()}"
    ]
    assert app.execute("SELECT count(*) FROM dbjobs.run") == [(4,)]
    assert app.cron_jobs() == jobs
    assert dbjobs_cli("--dsn", app.dsn, "install").out.startswith("nothing to change")
    # What pg_cron calls works: no old overload is left to make it ambiguous.
    app.execute("CALL dbjobs.run_job('refresh_tokens')")
    assert app.execute("SELECT trigger FROM dbjobs.run ORDER BY id DESC LIMIT 1") == [("scheduled",)]


def test_long_database_names_fit_pg_cron_job_names(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    long_name = "app_" + "x" * 55
    app_separate.cron(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(long_name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(app_separate.dsn, dbname=long_name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x timestamptz)")
        config = write_config(ONE_JOB.format(name="j" * 40, schedule="@daily"))
        assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
        [(jobname,)] = app_separate.cron("SELECT jobname FROM cron.job WHERE database = %s", [long_name])
        assert len(jobname.encode()) <= MAX_JOBNAME_BYTES
        assert jobname.startswith("dbjobs:~") and jobname.endswith(":" + "j" * 40)
        assert dbjobs_cli("--dsn", dsn, "--config", config, "install").out.startswith("nothing to change")
        assert dbjobs_cli("--dsn", dsn, "--config", config, "uninstall").code == 0
        assert app_separate.cron("SELECT count(*) FROM cron.job WHERE database = %s", [long_name]) == [(0,)]
    finally:
        app_separate.cron(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(long_name)))


def test_second_granularity_schedules_need_pg_cron_1_5(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE t (x timestamptz)")
    [(version,)] = app.cron("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    result = dbjobs_cli(
        "--dsn",
        app.dsn,
        "--config",
        write_config(ONE_JOB.format(name="fast", schedule="30 seconds")),
        "install",
    )
    if tuple(int(p) for p in version.replace("-", ".").split(".")[:2]) < (1, 5):
        assert result.code == 2
        assert (
            f"job 'fast': schedule: '30 seconds' needs pg_cron 1.5 or later (this server has {version[:3]}"
            in (result.err)
        )
        assert app.cron_jobs() == []
    else:
        assert result.code == 0, result.err
        assert app.cron_jobs()[0][2] == "30 seconds"


def test_tuning_constants_are_defined_once_used_and_documented() -> None:
    constants = sqlfiles.defines("routines.sql")
    assert "lock_timeout" in constants and constants["sweep_share"] == "0.05"
    text = sqlfiles.with_schema("routines.sql", "dbjobs").as_string(None)
    assert not re.findall(r"@[a-z_]+@", text)  # every one written in; @schema@ too
    readme = README.read_text()
    section = readme[readme.index("## Tuning constants") :]
    section = section[: section.index("\n## ", 1)]
    for name, value in constants.items():
        assert f"| `{name}` | {value} |" in section, name


def test_a_constant_used_but_not_defined_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    original = sqlfiles.read("routines.sql")
    for broken, message in (
        (original + "\n-- @sweep_shares@\n", "@sweep_shares@ is not defined"),
        (original + "\n-- define unused_one = 1\n", "'unused_one' is never used"),
        (original + "\n-- define held_waits = 30\n", "'held_waits' defined twice"),
    ):
        monkeypatch.setattr(sqlfiles, "read", lambda name, text=broken: text)
        for cached in (sqlfiles.defines, sqlfiles._expand):
            cached.cache_clear()
        try:
            with pytest.raises(ValueError, match=message):
                sqlfiles.with_schema("routines.sql", "dbjobs")
        finally:
            for cached in (sqlfiles.defines, sqlfiles._expand):
                cached.cache_clear()
