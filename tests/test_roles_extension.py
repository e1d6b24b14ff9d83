"""Roles and pg_cron change under dbjobs: the installing role dropped (REASSIGN OWNED / DROP OWNED),
pg_cron's extension dropped and created again, pg_cron's database renamed. Status and doctor say
what happened, install repairs what it can, uninstall still works.

One throwaway server of this module's own (pg_cron in 'crondb'), since these change the server.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import psycopg
import pytest

from tests.devserver import ThrowawayServer
from tests.faults import need_local_servers, query, restart, scheduler_up, wait_for

CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 * * * *"
"""
TABLE = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions VALUES (1, now() - interval '1 day'), (2, now() + interval '1 day');
"""
CRON_GRANTS = (
    "GRANT USAGE ON SCHEMA cron TO {role};"
    "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),"
    " cron.alter_job(bigint,text,text,text,text,boolean) TO {role}"
)
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayServer]:
    need_local_servers()
    with ThrowawayServer(cron_database="crondb") as pg:
        pg.create_pg_cron()
        yield pg


@pytest.fixture
def app(server: ThrowawayServer) -> str:
    """A fresh application database with the sessions table; its name."""
    name = f"app{next(_names)}"
    # pg_cron 1.6 restarts its launcher over and over while a job's role is gone (a test before
    # may have left one for a moment): a role that may not read cron.database_name finds pg_cron's
    # database only through the launcher.
    wait_for(lambda: scheduler_up(server), 15, "pg_cron's scheduler")
    server.create_database(name)
    query(server.dsn(name), TABLE)
    return name


def cron_rows(server: ThrowawayServer, database: str) -> list[tuple[object, ...]]:
    """(jobname, username) of pg_cron's jobs for ``database``, dbjobs' maintenance job included."""
    return query(
        server.dsn("crondb"),
        "SELECT jobname, username FROM cron.job WHERE jobname LIKE %s ORDER BY jobname",
        [f"dbjobs:{database}:%"],
    )


def status_of(dbjobs_cli, dsn: str, *args: str) -> tuple[int, dict]:
    result = dbjobs_cli("--dsn", dsn, *args, "status", "--format", "json")
    return result.code, json.loads(result.out)


def _install_as_role(server: ThrowawayServer, app: str, dbjobs_cli, config: str) -> tuple[str, str]:
    role = f"cleaner_{app}"
    query(server.dsn("crondb"), f"CREATE ROLE {role} LOGIN; " + CRON_GRANTS.format(role=role))
    query(server.dsn(app), f"GRANT CREATE ON DATABASE {app} TO {role}; GRANT ALL ON sessions TO {role}")
    dsn = psycopg.conninfo.make_conninfo(server.dsn(app), user=role)
    assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
    assert dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions").code == 0
    return role, dsn


def _drop_role(server: ThrowawayServer, app: str, role: str, path: str) -> None:
    """What an administrator does to drop a role that owns objects, in each database."""
    if path == "reassign":  # its objects (dbjobs' schema) go to the administrator
        query(server.dsn(app), f"REASSIGN OWNED BY {role} TO postgres; DROP OWNED BY {role}")
    else:  # its objects go with it: dbjobs' schema, and the history
        query(server.dsn(app), f"DROP OWNED BY {role}")
    query(server.dsn("crondb"), f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.parametrize("path", ["reassign", "drop owned"])
def test_installing_role_dropped(server, app, dbjobs_cli, write_config, path: str) -> None:
    config = write_config(CONFIG)
    role, _ = _install_as_role(server, app, dbjobs_cli, config)
    _drop_role(server, app, role, path)
    admin = server.dsn(app)
    # pg_cron keeps the jobs, as the role that scheduled them: each run would fail to connect.
    assert [r[1] for r in cron_rows(server, app)] == [role, role]

    doctor = dbjobs_cli("--dsn", admin, "--config", config, "doctor")
    assert doctor.code == 2
    for jobid, name in query(
        server.dsn("crondb"), "SELECT jobid, jobname FROM cron.job WHERE username = %s ORDER BY jobid", [role]
    ):
        assert (
            f"FAIL  pg_cron job owner: pg_cron job {jobid} ({name}) runs as role '{role}', which no longer "
            f"exists (pg_cron 1.6 restarts its launcher over and over on such a job)\n"
            f"      fix: a superuser runs SELECT cron.unschedule({jobid}); then `dbjobs install` as an "
            "existing role"
        ) in doctor.out, doctor.out
    if path == "drop owned":
        code, report = status_of(dbjobs_cli, admin, "--config", config)
        assert (code, report["status"], report["jobs"]) == (2, "fail", [])
        assert "dbjobs is not installed in this database" in dbjobs_cli("--dsn", admin, "status").out
    else:  # the history stays with the schema, now the administrator's
        assert query(admin, "SELECT status FROM dbjobs.run") == [("succeeded",)]

    # doctor's fix, then install as an existing role: jobs of that role, the history kept.
    for jobid, _ in query(server.dsn("crondb"), "SELECT jobid, 1 FROM cron.job WHERE username = %s", [role]):
        query(server.dsn("crondb"), "SELECT cron.unschedule(%s::bigint)", [jobid])
    wait_for(lambda: scheduler_up(server), 15, "pg_cron's scheduler")
    assert dbjobs_cli("--dsn", admin, "--config", config, "install").code == 0
    assert [r[1] for r in cron_rows(server, app)] == ["postgres", "postgres"]
    code, report = status_of(dbjobs_cli, admin, "--config", config)
    assert (code, report["status"]) == (0, "pass"), report
    uninstalled = dbjobs_cli("--dsn", admin, "--config", config, "uninstall")
    assert uninstalled.code == 0 and cron_rows(server, app) == []


@pytest.mark.parametrize("path", ["reassign", "drop owned"])
def test_install_as_another_role_takes_over_jobs_whose_role_is_gone(
    server, app, dbjobs_cli, write_config, path: str
) -> None:
    config = write_config(CONFIG)
    role, _ = _install_as_role(server, app, dbjobs_cli, config)
    _drop_role(server, app, role, path)
    admin = server.dsn(app)
    try:
        installed = dbjobs_cli("--dsn", admin, "--config", config, "install")
        assert installed.code == 0, installed.err
        assert [r[1] for r in cron_rows(server, app)] == ["postgres", "postgres"]
    finally:
        query(server.dsn("crondb"), "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        dbjobs_cli("--dsn", admin, "--config", config, "uninstall")


def test_status_fails_a_job_whose_role_is_gone(server, app, dbjobs_cli, write_config) -> None:
    config = write_config(CONFIG)
    role, _ = _install_as_role(server, app, dbjobs_cli, config)
    _drop_role(server, app, role, "reassign")
    admin = server.dsn(app)
    try:
        code, report = status_of(dbjobs_cli, admin, "--config", config)
        assert code != 0 and report["status"] != "pass", report
        job = next(job for job in report["jobs"] if job["name"] == "sessions")
        assert job["state"] == "failing" and "which no longer exists" in job["last_error"], job
    finally:
        query(server.dsn("crondb"), "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        dbjobs_cli("--dsn", admin, "--config", config, "uninstall")


def test_pg_cron_dropped_and_created_again(server, app, dbjobs_cli, write_config) -> None:
    """DROP EXTENSION pg_cron takes every pg_cron job with it: status and doctor say so, and which
    fix; once it is back, status names the missing jobs and install schedules them again."""
    config = write_config(CONFIG)
    crondb = server.dsn("crondb")
    query(crondb, TABLE)  # an application in pg_cron's own database too
    try:
        dsns = [server.dsn(app), crondb]
        for dsn in dsns:
            assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
            assert dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions").code == 0
        query(crondb, "DROP EXTENSION pg_cron")
        try:
            for dsn, where in zip(
                dsns, (f"database '{app}' nor in 'crondb'", "database 'crondb'"), strict=True
            ):
                said = (
                    f"pg_cron is not installed in {where} (pg_cron's scheduler runs there): its library is "
                    "loaded and its scheduler runs in database 'crondb', but the extension is not created "
                    "there (or was dropped, with every pg_cron job): run CREATE EXTENSION pg_cron in "
                    "database 'crondb', then `dbjobs install` to schedule dbjobs' jobs again"
                )
                for command in ("status", "install"):
                    result = dbjobs_cli("--dsn", dsn, "--config", config, command)
                    assert result.code == 3 and result.err.startswith(f"dbjobs: error: {said}"), result
                    assert len(result.err.splitlines()) == 1
                doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
                assert doctor.code == 2 and f"FAIL  pg_cron: {said}" in doctor.out, doctor.out
        finally:
            server.create_pg_cron()

        for dsn in dsns:
            code, report = status_of(dbjobs_cli, dsn, "--config", config)
            assert code == 2 and {j["name"]: j["state"] for j in report["jobs"]} == {
                "sessions": "missing",
                "_maintenance": "missing",
            }, report
            assert "not registered in pg_cron: run `dbjobs install`" in report["jobs"][0]["last_error"]
            repaired = dbjobs_cli("--dsn", dsn, "--config", config, "install")
            assert sorted(line.split(":")[0] for line in repaired.out.splitlines()) == [
                "create job _maintenance",
                "update job sessions",
            ], repaired.out
            code, report = status_of(dbjobs_cli, dsn, "--config", config)
            assert (code, report["status"]) == (0, "pass"), report
            assert query(dsn, "SELECT status FROM dbjobs.run") == [("succeeded",)]  # the history stays
    finally:
        for dsn in (server.dsn(app), crondb):
            assert dbjobs_cli("--dsn", dsn, "--config", config, "uninstall").code == 0
        query(crondb, "DROP TABLE sessions")
    assert query(crondb, "SELECT count(*) FROM cron.job") == [(0,)]


def _rename(server: ThrowawayServer, old: str, new: str) -> None:
    """ALTER DATABASE ... RENAME, which needs nobody connected to it: pg_cron's launcher is (and
    pg_cron 1.6.1+ starts it again within a second), so terminate it until the rename wins."""

    def attempt() -> bool:
        query(
            server.dsn(),
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            " AND pid <> pg_backend_pid()",
            [old],
        )
        try:
            query(server.dsn(), f"ALTER DATABASE {old} RENAME TO {new}")
        except psycopg.errors.ObjectInUse:
            return False
        return True

    wait_for(attempt, 15, f"renaming database {old} to {new}", interval=0.05)


def test_pg_cron_database_renamed(server, app, dbjobs_cli, write_config, pg_cron_version) -> None:
    """The database pg_cron lives in renamed under it: its scheduler cannot start, so nothing runs.
    Status, doctor and install say so and how to fix it, uninstall refuses to leave pg_cron's jobs
    behind; with cron_dsn naming the renamed database it all works again; renamed back (and, for
    pg_cron 1.4, the server restarted), status passes."""
    config = write_config(CONFIG)
    dsn = server.dsn(app)
    assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
    before = cron_rows(server, app)
    _rename(server, "crondb", "crondb_old")
    try:
        said = (
            "cron.database_name names database 'crondb', which does not exist (renamed or dropped?), and "
            f"pg_cron is not in database '{app}': pg_cron's scheduler cannot run, so no job runs; rename "
            "the database back, or set cron.database_name to the database holding pg_cron's extension "
            "and restart PostgreSQL"
        )
        for command in ("status", "install", "uninstall"):
            result = dbjobs_cli("--dsn", dsn, "--config", config, command)
            assert result.code == 3 and result.err.startswith(f"dbjobs: error: {said}"), (command, result)
        doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
        assert doctor.code == 2 and f"FAIL  pg_cron: {said}" in doctor.out, doctor.out
        assert query(dsn, "SELECT count(*) FROM dbjobs.job") == [(1,)]  # uninstall changed nothing

        # Pointed at the renamed database: the jobs are there, the scheduler is not.
        where = write_config(f"cron_dsn = {server.dsn('crondb_old')!r}\n" + CONFIG, name="renamed.toml")
        code, report = status_of(dbjobs_cli, dsn, "--config", where)
        assert (code, report["status"], report["scheduler"]["running"]) == (2, "fail", False), report
        assert {j["name"]: j["state"] for j in report["jobs"]}["sessions"] == "pending"
        assert dbjobs_cli("--dsn", dsn, "--config", where, "install").out.startswith("nothing to change")
    finally:
        _rename(server, "crondb_old", "crondb")

    if pg_cron_version < (1, 6):  # pg_cron 1.4 never starts its launcher again: status says to restart
        code, report = status_of(dbjobs_cli, dsn, "--config", config)
        assert code == 2 and "restart PostgreSQL" in report["scheduler"]["detail"], report
        restart(server, "fast")
    wait_for(lambda: scheduler_up(server), 15, "pg_cron's scheduler in the database renamed back")
    code, report = status_of(dbjobs_cli, dsn, "--config", config)
    assert (code, report["status"]) == (0, "pass"), report
    assert cron_rows(server, app) == before
    assert dbjobs_cli("--dsn", dsn, "--config", config, "uninstall").code == 0
    assert cron_rows(server, app) == []
