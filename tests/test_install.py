"""install, run and uninstall against real pg_cron, in both layouts (its database or another)."""

from __future__ import annotations

import json
import threading

import psycopg

import dbjobs
from tests.conftest import SAMPLE_ROWS, AppDb

EXPECTED_DELETED = {"refresh_tokens": 2, "email_verifications": 3, "password_resets": 2, "login_attempts": 2}
EXPECTED_LEFT = {"refresh_tokens": 3, "email_verifications": 3, "password_resets": 2, "login_attempts": 2}


def test_default_jobs_delete_exactly_the_expired_rows(default_tables: AppDb, dbjobs_cli) -> None:
    app = default_tables
    app.execute(SAMPLE_ROWS)

    installed = dbjobs_cli("--dsn", app.dsn, "install")
    assert installed.code == 0, installed.err
    assert installed.out.count("create job") == 5
    assert "create job _maintenance: prune pg_cron's history of these jobs older than 7 days" in installed.out

    ran = dbjobs_cli("--dsn", app.dsn, "run", "--all")
    assert ran.code == 0, ran.err
    for job, deleted in EXPECTED_DELETED.items():
        assert f"{job}: deleted {deleted} rows" in ran.out
    for table, left in EXPECTED_LEFT.items():
        assert app.count(table) == left, table

    report = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    by_name = {job["name"]: job for job in report["jobs"]}
    assert set(by_name) == set(EXPECTED_DELETED) | {"_maintenance"}
    for job, deleted in EXPECTED_DELETED.items():
        assert by_name[job]["state"] == "ok"
        assert by_name[job]["last_run_status"] == "succeeded"
        assert by_name[job]["last_rows_deleted"] == deleted
        assert by_name[job]["last_error"] is None
        assert by_name[job]["last_success_at"] is not None
    assert report["database"] == app.database

    # The history records each manual run.
    history = app.execute("SELECT job, trigger, status, rows_deleted FROM dbjobs.run ORDER BY job")
    assert {(job, deleted) for job, _, _, deleted in history} == set(EXPECTED_DELETED.items())
    assert {(trigger, status) for _, trigger, status, _ in history} == {("manual", "succeeded")}


def test_reinstall_changes_nothing_and_keeps_job_ids(default_tables: AppDb, dbjobs_cli) -> None:
    app = default_tables
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    jobs_before = app.cron_jobs()
    assert [name.rpartition(":")[2] for _, name, *_ in jobs_before] == sorted(EXPECTED_DELETED)
    assert all(name.startswith("dbjobs") for _, name, *_ in jobs_before)

    again = dbjobs_cli("--dsn", app.dsn, "install")
    assert again.code == 0
    assert again.out.startswith("nothing to change")
    assert app.cron_jobs() == jobs_before


def test_schedule_change_updates_in_place(default_tables: AppDb, dbjobs_cli, write_config) -> None:
    app = default_tables
    config = write_config(
        '[jobs.login_attempts]\ntable = "login_attempts"\nexpires = ["created_at"]\n'
        'retain = "7 days"\nschedule = "0 2 * * *"\n'
    )
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    [(jobid, *_)] = app.cron_jobs()

    config = write_config(
        '[jobs.login_attempts]\ntable = "login_attempts"\nexpires = ["created_at"]\n'
        'retain = "3 days"\nschedule = "0 0 3 * * *"\n'
    )
    changed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert changed.code == 0, changed.err
    assert changed.out.splitlines() == [
        "update job login_attempts: retain '7 days' -> '3 days', schedule '0 2 * * *' -> '0 3 * * *'"
    ]
    assert [(j[0], j[2]) for j in app.cron_jobs()] == [(jobid, "0 3 * * *")]
    assert app.execute("SELECT retain::text FROM dbjobs.job") == [("3 days",)]

    # A setting added, then taken away: "unset" on the side where there is none.
    config = write_config(
        '[jobs.login_attempts]\ntable = "login_attempts"\nexpires = ["created_at"]\n'
        'retain = "3 days"\nschedule = "0 0 3 * * *"\nmax_age = "2 days"\n'
    )
    added = dbjobs_cli("--dsn", app.dsn, "--config", config, "install").out.splitlines()
    assert added == ["update job login_attempts: max_age unset -> '2 days'"]
    config = write_config(
        '[jobs.login_attempts]\ntable = "login_attempts"\nexpires = ["created_at"]\n'
        'retain = "3 days"\nschedule = "0 0 3 * * *"\n'
    )
    removed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install").out.splitlines()
    assert removed == ["update job login_attempts: max_age '2 days' -> unset"]


def test_dry_run_changes_nothing(default_tables: AppDb, dbjobs_cli, write_config) -> None:
    app = default_tables
    planned = dbjobs_cli("--dsn", app.dsn, "install", "--dry-run")
    assert planned.code == 0
    assert planned.out.count("create job") == 5
    assert "dry run: nothing was changed" in planned.out
    assert "dbjobs" not in app.schemas()
    assert app.cron_jobs() == []

    # Also for a plan that updates and removes.
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    before = (app.cron_jobs(), app.execute("SELECT * FROM dbjobs.job ORDER BY name"))
    config = write_config(
        '[jobs.refresh_tokens]\ntable = "refresh_tokens"\nexpires = "expires_at"\n'
        'retain = "1 day"\nschedule = "*/5 * * * *"\n'
    )
    planned = dbjobs_cli("--dsn", app.dsn, "--config", config, "install", "--dry-run")
    assert planned.code == 0
    assert planned.out.count("remove job") == 3
    assert planned.out.count("update job refresh_tokens") == 1
    assert (app.cron_jobs(), app.execute("SELECT * FROM dbjobs.job ORDER BY name")) == before


def test_job_dropped_from_config_is_removed_and_foreign_jobs_are_kept(
    default_tables: AppDb, dbjobs_cli, write_config
) -> None:
    app = default_tables
    foreign = [
        ("nightly-report", "0 3 * * *", "SELECT 1"),
        ("dbjobs_lookalike", "0 4 * * *", "SELECT 2"),  # not dbjobs' naming: dbjobs:<db>:<job>
    ]
    for name, schedule, command in foreign:
        app.cron("SELECT cron.schedule_in_database(%s, %s, %s, %s)", [name, schedule, command, app.database])
    app.cron("SELECT cron.schedule('dbjobs:other_db:refresh_tokens', '0 5 * * *', 'SELECT 3')")
    foreign_rows = app.cron("SELECT jobid, jobname, schedule, command, database FROM cron.job ORDER BY jobid")

    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    config = write_config(
        '[jobs.refresh_tokens]\ntable = "refresh_tokens"\nexpires = ["expires_at"]\n'
        'retain = "30 days"\nschedule = "0 * * * *"\n'
    )
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert result.code == 0, result.err
    assert sorted(line.split(":")[0] for line in result.out.splitlines()) == [
        "remove job email_verifications",
        "remove job login_attempts",
        "remove job password_resets",
    ]
    assert [name for _, name, *_ in app.cron_jobs() if name.startswith(f"dbjobs:{app.database}:")] == [
        f"dbjobs:{app.database}:refresh_tokens"
    ]
    assert app.execute("SELECT name FROM dbjobs.job") == [("refresh_tokens",)]

    for uninstall_run in range(2):
        removed = dbjobs_cli("--dsn", app.dsn, "uninstall")
        assert removed.code == 0, removed.err
        if uninstall_run == 0:
            assert "remove job refresh_tokens" in removed.out and 'remove schema "dbjobs"' in removed.out
        else:
            assert removed.out.startswith("nothing to remove")
    assert "dbjobs" not in app.schemas()
    # Other jobs, and the application's tables, are untouched.
    assert app.cron("SELECT jobid, jobname, schedule, command, database FROM cron.job ORDER BY jobid") == (
        foreign_rows
    )
    assert app.count("refresh_tokens") == 0 and app.count("login_attempts") == 0  # tables still exist
    app.cron("SELECT cron.unschedule(jobid) FROM cron.job")


def test_quoted_schema_qualified_identifiers_and_where(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(
        """
        CREATE SCHEMA "My App";
        CREATE TABLE "My App"."Audit Log" (id int PRIMARY KEY, "Created At" timestamp, "Kept Until" date,
                                           revoked boolean NOT NULL DEFAULT false);
        INSERT INTO "My App"."Audit Log" VALUES
            (1, now() - interval '3 days', NULL, true),          -- deleted
            (2, now() - interval '3 days', NULL, false),         -- not revoked
            (3, now() - interval '1 hour', current_date - 10, true),  -- deleted: date column
            (4, now() - interval '1 hour', current_date + 10, true),
            (5, NULL, NULL, true);                               -- never expires
        """
    )
    config = write_config(
        """
        schema = "dbjobs alt's"
        [jobs.audit]
        table = '"My App"."Audit Log"'
        expires = ["Created At", "Kept Until"]
        retain = "2 days"
        schedule = "@hourly"
        where = "revoked -- only revoked entries"
        batch_size = 1
        """
    )
    installed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert installed.code == 0, installed.err
    # The plan line says the whole rule, the predicate included.
    assert (
        'create job audit: delete from "My App"."Audit Log" where Created At or Kept Until is older than '
        "2 days and (revoked -- only revoked entries), schedule '@hourly'"
    ) in installed.out
    assert app.cron_jobs()[0][3] == "CALL \"dbjobs alt's\".run_job('audit')"
    ran = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "audit")
    assert ran.code == 0, ran.err
    assert "audit: deleted 2 rows" in ran.out
    assert [r[0] for r in app.execute('SELECT id FROM "My App"."Audit Log" ORDER BY id')] == [2, 4, 5]
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall").code == 0
    assert "dbjobs alt's" not in app.schemas()


def test_disabled_jobs_stay_installed_but_inactive(default_tables: AppDb, dbjobs_cli) -> None:
    app = default_tables
    off = dbjobs_cli("--dsn", app.dsn, "install", env={"JOB_ENABLE_CLEANUP": "false"})
    assert off.code == 0, off.err
    assert [active for *_, active in app.cron_jobs()] == [False] * 4
    report = json.loads(
        dbjobs_cli("--dsn", app.dsn, "status", "--format", "json", env={"JOB_ENABLE_CLEANUP": "false"}).out
    )
    assert {job["name"]: job["state"] for job in report["jobs"]} == {
        **dict.fromkeys(EXPECTED_DELETED, "inactive"),
        "_maintenance": "pending",  # history pruning goes on
    }

    jobids = [j[0] for j in app.cron_jobs()]
    on = dbjobs_cli("--dsn", app.dsn, "install")
    assert on.out.count("activate") == 4
    assert [(j[0], j[4]) for j in app.cron_jobs()] == [(jobid, True) for jobid in jobids]


def test_concurrent_installs_are_serialized(default_tables: AppDb) -> None:
    """Several deploy replicas installing at once: one does the work, the others find nothing to do."""
    app = default_tables
    config = dbjobs.load_config(environ={})
    plans: list[dbjobs.Plan] = []
    errors: list[BaseException] = []

    def deploy() -> None:
        try:
            with psycopg.connect(app.dsn) as conn:
                plans.append(dbjobs.install(conn, config))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deploy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(plan.changed for plan in plans) == [False, False, False, True]
    assert len(app.cron_jobs()) == 4


def test_python_api(default_tables: AppDb) -> None:
    app = default_tables
    app.execute(SAMPLE_ROWS)
    config = dbjobs.load_config(environ={})
    with psycopg.connect(app.dsn) as conn:
        plan = dbjobs.install(conn, config, dry_run=False)
        assert plan.changed
        result = dbjobs.run(conn, config, "refresh_tokens")
        assert (result.status, result.rows_deleted) == ("succeeded", 2)
        report = dbjobs.status(conn, config)
        assert report.status == "pass"
        jobs = {job["name"]: job for job in report.to_dict()["jobs"]}
        assert jobs["refresh_tokens"]["last_rows_deleted"] == 2
        dbjobs.uninstall(conn, config)
    assert app.cron_jobs() == []


def test_status_before_install_and_after_a_job_vanishes(default_tables: AppDb, dbjobs_cli) -> None:
    app = default_tables
    before = dbjobs_cli("--dsn", app.dsn, "status", "--format", "json")
    assert before.code == 2
    report = json.loads(before.out)
    assert report["status"] == "fail"
    assert report["jobs"] == []  # nothing is installed: no job to report, configured or not
    assert "not installed" in dbjobs_cli("--dsn", app.dsn, "status").out

    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    assert dbjobs_cli("--dsn", app.dsn, "status").code == 0
    jobid, jobname, *_ = app.cron_jobs()[0]
    app.cron("SELECT cron.unschedule(%s::bigint)", [jobid])
    vanished = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    assert vanished["status"] == "fail"
    assert [j["name"] for j in vanished["jobs"] if j["state"] == "missing"] == [jobname.rpartition(":")[2]]

    repaired = dbjobs_cli("--dsn", app.dsn, "install")
    assert repaired.out.splitlines() == [
        f"update job {jobname.rpartition(':')[2]}: missing from pg_cron: schedule it again"
    ]
    assert dbjobs_cli("--dsn", app.dsn, "status").code == 0


def test_dry_run_prints_exactly_what_install_then_does(
    default_tables: AppDb, dbjobs_cli, write_config
) -> None:
    app = default_tables
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    config = write_config(
        """
        batch_timeout = "30 seconds"
        history_retention = "2 days"
        enabled = false
        [jobs.refresh_tokens]
        table = "refresh_tokens"
        expires = ["expires_at"]
        retain = "10 days"
        schedule = "15 * * * *"
        [jobs.attempts]
        table = "login_attempts"
        expires = ["created_at"]
        retain = "1 day"
        schedule = "0 3 * * *"
        """
    )
    dry = dbjobs_cli("--dsn", app.dsn, "--config", config, "install", "--dry-run")
    assert dry.code == 0, dry.err
    planned = dry.out.splitlines()
    assert planned[-1] == "dry run: nothing was changed"
    before = app.cron_jobs()
    assert (
        dbjobs_cli("--dsn", app.dsn, "--config", config, "install", "--dry-run").out == dry.out
    )  # unchanged
    done = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert done.out.splitlines() == planned[:-1]
    assert app.cron_jobs() != before
    assert {
        "update setting history_retention: 7 days -> 2 days",
        "update setting enabled: true -> false",
        "update setting batch_timeout: 60000 ms -> 30000 ms",
        "update job _maintenance: history_retention changed",
    } <= set(planned)
    assert sum(line.startswith("remove job ") for line in planned) == 3
    assert any(line.startswith("create job attempts: ") for line in planned)
    assert any(
        line.startswith("update job refresh_tokens: retain '30 days' -> '10 days'") for line in planned
    )
    again = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert again.out.startswith("nothing to change")
    meta = dict(app.execute("SELECT key, value FROM dbjobs.meta"))
    assert (meta["history_retention"], meta["enabled"], meta["batch_timeout"]) == ("2 days", "false", "30000")
