"""pg_cron itself runs an installed job, in both layouts (this waits for the next minute)."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import pytest

from tests import conftest
from tests.conftest import AppDb

CONFIG = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 minute"
schedule = "* * * * *"
"""


@contextmanager
def app_in(layout: str, server):  # type: ignore[no-untyped-def]
    generator = conftest._make_app(layout, server)
    try:
        yield next(generator)
    finally:
        generator.close()


@pytest.mark.slow
def test_pg_cron_runs_the_installed_job_in_both_layouts(pg_servers, dbjobs_cli, write_config) -> None:
    config = write_config(CONFIG)
    with ExitStack() as stack:
        apps: list[AppDb] = [
            stack.enter_context(app_in(layout, pg_servers[layout])) for layout in conftest.LAYOUTS
        ]
        for app in apps:
            app.execute(
                "CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz);"
                "INSERT INTO sessions VALUES (1, now() - interval '1 day'), (2, now() - interval '2 days'),"
                " (3, now() + interval '1 day');"
            )
            result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
            assert result.code == 0, result.err

        deadline = time.monotonic() + 90  # the next minute boundary, plus the run itself
        pending = {app.layout: app for app in apps}
        while pending and time.monotonic() < deadline:
            for layout, app in list(pending.items()):
                runs = app.execute(  # a run is visible as running from its first commit on
                    "SELECT status, rows_deleted FROM dbjobs.run"
                    " WHERE trigger = 'scheduled' AND status <> 'running'"
                )
                if runs:
                    assert runs[0] == ("succeeded", 2), (layout, runs)
                    del pending[layout]
            time.sleep(1)
        assert not pending, f"pg_cron did not run the job within 90 s in layout(s) {sorted(pending)}"

        for app in apps:
            assert [r[0] for r in app.execute("SELECT id FROM sessions")] == [3]
            jobid = app.cron_jobs()[0][0]
            # pg_cron's own history agrees: the CALL succeeded, in the application's database.
            details = []
            for _ in range(10):
                details = app.cron(
                    "SELECT status, database, command FROM cron.job_run_details WHERE jobid = %s", [jobid]
                )
                if details and details[0][0] == "succeeded":
                    break
                time.sleep(0.5)
            assert details and details[0][:2] == ("succeeded", app.database), details
            status = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json")
            assert status.code == 0 and '"state": "ok"' in status.out
