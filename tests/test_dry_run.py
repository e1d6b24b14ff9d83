"""dbjobs run --dry-run: what each job would delete now, counted exactly, deleting and recording nothing."""

from __future__ import annotations

import json

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb
from tests.test_partitions import OLD, RULE, config, make_table, partitions


def test_dry_run_counts_what_the_run_then_deletes(app: AppDb, dbjobs_cli) -> None:
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    before = {table: app.count(table) for table in ("refresh_tokens", "email_verifications")}

    dry = dbjobs_cli("--dsn", app.dsn, "run", "--dry-run", "refresh_tokens", "email_verifications")
    assert dry.code == 0, dry.err
    lines = dry.out.splitlines()
    assert lines[0].startswith("refresh_tokens: would delete 2 rows expired from ")
    assert lines[1].startswith("email_verifications: would delete 3 rows expired from ")
    assert lines[-1] == "dry run: nothing was deleted or recorded"
    assert {table: app.count(table) for table in before} == before
    assert app.execute("SELECT count(*) FROM dbjobs.run") == [(0,)]

    report = json.loads(dbjobs_cli("--dsn", app.dsn, "run", "--dry-run", "--all", "--format", "json").out)
    counts = {entry["job"]: entry["rows"] for entry in report}
    assert counts == {
        "email_verifications": 3,
        "login_attempts": 2,
        "password_resets": 2,
        "refresh_tokens": 2,
    }
    oldest = report[0]["oldest_expired_at"]
    assert oldest.endswith("Z") and oldest <= report[0]["newest_expired_at"] < report[0]["cutoff"]

    ran = dbjobs_cli("--dsn", app.dsn, "run", "--all")
    for job, rows in counts.items():
        assert f"{job}: deleted {rows} rows" in ran.out
    unknown = dbjobs_cli("--dsn", app.dsn, "run", "--dry-run", "nope")
    assert unknown.code == 2 and "unknown job 'nope'" in unknown.err


def test_dry_run_names_the_partitions_it_would_drop(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    make_table(app)
    expected = app.count("sessions", RULE)
    path = write_config(config())
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    [entry] = json.loads(dbjobs_cli("--dsn", app.dsn, "run", "--dry-run", "sessions", "--format", "json").out)
    assert entry["rows"] == expected  # the partitions' rows included
    assert (sorted(entry["partitions"]), entry["partitions_mode"]) == (sorted(OLD), "drop")
    assert partitions(app) == {*OLD, "p_now", "p_next", "p_later", "p_default"}  # nothing dropped
    text = dbjobs_cli("--dsn", app.dsn, "run", "--dry-run", "sessions").out
    assert ", and drop 3 partition(s): p_old1, p_old2, p_old3" in text
