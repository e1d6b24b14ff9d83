"""Concurrency: install racing uninstall (one of the two states, never a mix), a manual run racing
a scheduled run of the same job (one of them skips), two jobs cleaning the same table at once.
(Eight installs at once: tests/test_install.py.)"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

import dbjobs
from tests.conftest import AppDb
from tests.faults import wait_for

CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 * * * *"
batch_size = 10
"""
SESSIONS = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz, revoked boolean NOT NULL DEFAULT false);
CREATE INDEX ON sessions (expires_at);
INSERT INTO sessions SELECT i, now() - interval '2 hours', i % 3 = 0 FROM generate_series(1, 200) i;
INSERT INTO sessions SELECT i, now() + interval '2 hours', i % 3 = 0 FROM generate_series(201, 300) i;
"""
# Deleting a row takes 5 ms: a run of 200 rows takes about a second.
SLOW = """
CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN OLD; END $$;
CREATE TRIGGER slow_delete BEFORE DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION slow_delete();
"""


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start ``target`` in a thread; the list gets its result or the exception it raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def state(app: AppDb) -> tuple[bool, list[str], list[str]]:
    """(dbjobs' schema exists, the jobs in its job table, dbjobs' pg_cron jobs of this database)."""
    schema = "dbjobs" in app.schemas()
    jobs = [r[0] for r in app.execute("SELECT name FROM dbjobs.job ORDER BY name")] if schema else []
    cron = [
        r[0].rpartition(":")[2]
        for r in app.cron(
            "SELECT jobname FROM cron.job WHERE jobname LIKE %s ORDER BY jobname",
            [f"dbjobs:{app.database}:%"],
        )
    ]
    return schema, jobs, cron


INSTALLED = (True, ["sessions"], ["_maintenance", "sessions"])
UNINSTALLED = (False, [], [])


@contextlib.contextmanager
def slow_cron_commits(app: AppDb) -> Iterator[None]:
    """Make each transaction that changes cron.job take 0.3 s more to commit (a deferred constraint
    trigger), as a commit waiting for a synchronous standby would: where pg_cron lives in another
    database, install commits there after the application's database."""
    app.cron(
        "CREATE FUNCTION public.dbjobs_test_slow_commit() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;"
        "CREATE CONSTRAINT TRIGGER dbjobs_test_slow_commit AFTER INSERT OR UPDATE OR DELETE ON cron.job"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.dbjobs_test_slow_commit()"
    )
    try:
        yield
    finally:
        app.cron(
            "DROP TRIGGER dbjobs_test_slow_commit ON cron.job; DROP FUNCTION public.dbjobs_test_slow_commit()"
        )


@pytest.mark.parametrize("first", ["install", "uninstall"])
def test_install_racing_uninstall_ends_in_one_state(app: AppDb, write_config, first: str) -> None:
    app.execute(SESSIONS)
    config = dbjobs.load_config(write_config(CONFIG), environ={})

    def install() -> object:
        with psycopg.connect(app.dsn) as conn:
            return dbjobs.install(conn, config)

    def uninstall() -> object:
        with psycopg.connect(app.dsn) as conn:
            return dbjobs.uninstall(conn, config)

    if first == "uninstall":
        install()
    with slow_cron_commits(app):
        steps = [install, uninstall] if first == "install" else [uninstall, install]
        threads = []
        threads.append(in_thread(steps[0]))
        # The second one starts once the first holds install's lock, or has already finished
        # (on a loaded machine the first thread may take longer than any fixed pause to get there).
        first_thread = threads[0][0]
        wait_for(
            lambda: holds_install_lock(app) or not first_thread.is_alive(),
            30,
            f"{first} to take install's lock",
            interval=0.02,
        )
        threads.append(in_thread(steps[1]))
        for thread, _ in threads:
            thread.join(timeout=60)
    for _, outcome in threads:
        assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
    # The second one ran after the first: its state is the final one, whole.
    assert state(app) == (UNINSTALLED if first == "install" else INSTALLED)


def holds_install_lock(app: AppDb) -> bool:
    """Whether a session holds install's advisory lock (install.INSTALL_LOCK's first key)."""
    [(held,)] = app.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        " AND classid = (hashtext('dbjobs.install')::bigint & 4294967295)::text::oid"
    )
    return bool(held)


def call_run_job(app: AppDb, trigger: str) -> Callable[[], object]:
    """The CALL pg_cron makes (a scheduled run), or the one `dbjobs run` makes (manual)."""

    def call() -> object:
        with psycopg.connect(app.dsn, autocommit=True) as conn:
            conn.execute(f"CALL dbjobs.run_job(job_name => 'sessions', run_trigger => '{trigger}')")
        return trigger

    return call


@pytest.mark.parametrize("first", ["scheduled", "manual"])
def test_a_manual_run_racing_a_scheduled_run_skips_one(
    app_separate: AppDb, dbjobs_cli, write_config, first: str
) -> None:
    app = app_separate
    app.execute(SESSIONS + SLOW)
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    second = "manual" if first == "scheduled" else "scheduled"
    thread, outcome = in_thread(call_run_job(app, first))
    deadline = time.monotonic() + 20
    while app.execute("SELECT rows_deleted FROM dbjobs.run WHERE status = 'running'") in ([], [(0,)]):
        assert time.monotonic() < deadline, "the first run did not start"
        time.sleep(0.02)
    if second == "manual":
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
        assert result.code == 0
        assert result.out == "sessions: skipped: another run of this job was in progress\n", result
    else:
        call_run_job(app, second)()  # pg_cron's CALL returns normally: pg_cron records it succeeded
    thread.join(timeout=60)
    assert outcome == [first]
    assert app.execute("SELECT trigger, status, rows_deleted FROM dbjobs.run ORDER BY id") == [
        (first, "succeeded", 200),
        (second, "skipped", 0),
    ]
    assert app.count("sessions") == 100
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json").out)
    job = {j["name"]: j for j in report["jobs"]}["sessions"]
    assert (job["state"], job["last_trigger"], job["last_rows_deleted"]) == ("ok", first, 200)


TWO_JOBS = """
[jobs.expired]
table = "sessions"
expires = ["expires_at"]
retain = "1 hour"
schedule = "0 * * * *"
batch_size = 10

[jobs.revoked]
table = "sessions"
expires = ["expires_at"]
retain = "0 seconds"
where = "revoked"
schedule = "30 * * * *"
batch_size = 7
"""


def test_two_jobs_on_the_same_table_at_once(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    """Both succeed, each row goes once (the rows both rules name: to one of them), and exactly the
    rows neither rule names are left."""
    app = app_separate
    app.execute(SESSIONS + SLOW)
    app.execute("UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE id > 280")  # revoked
    config = write_config(TWO_JOBS)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    expected_left = app.count(
        "sessions", "NOT (expires_at < now() - interval '1 hour' OR (expires_at < now() AND revoked))"
    )
    total = app.count("sessions")

    def run(job: str) -> Callable[[], object]:
        def call() -> object:
            with psycopg.connect(app.dsn, autocommit=True) as conn:
                conn.execute(f"CALL dbjobs.run_job('{job}')")
            return job

        return call

    threads = [in_thread(run(job)) for job in ("expired", "revoked")]
    for thread, _ in threads:
        thread.join(timeout=60)
    assert [outcome for _, outcome in threads] == [["expired"], ["revoked"]]
    runs = app.execute("SELECT job, status, rows_deleted FROM dbjobs.run ORDER BY job")
    assert [(job, status) for job, status, _ in runs] == [("expired", "succeeded"), ("revoked", "succeeded")]
    assert app.count("sessions") == expected_left
    assert sum(deleted for *_, deleted in runs) == total - expected_left  # each row deleted once
    assert all(deleted > 0 for *_, deleted in runs), runs  # they did run at the same time
