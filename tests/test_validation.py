"""Bad input: one line naming the job and key, exit 2, and nothing changed."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import AppDb

TABLE = """
CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz, label text, revoked boolean);
INSERT INTO sessions VALUES (1, now() - interval '1 year', 'old', true);
CREATE TABLE by_month (expires_at timestamptz) PARTITION BY RANGE (expires_at);
"""


def job(**overrides: str) -> str:
    keys = {
        "table": '"sessions"',
        "expires": '["expires_at"]',
        "retain": '"1 day"',
        "schedule": '"0 * * * *"',
    }
    keys.update(overrides)
    return "[jobs.sessions]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


GOOD_SECOND_JOB = (
    '[jobs.other]\ntable = "sessions"\nexpires = "expires_at"\nretain = "2 days"\nschedule = "@daily"\n'
)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (job(retain='"forever"'), "job 'sessions': retain: 'forever' is not a PostgreSQL interval"),
        (job(retain='"-1 day"'), "job 'sessions': retain: '-1 day' is negative"),
        (job(max_age='"soon"'), "job 'sessions': max_age: 'soon' is not a PostgreSQL interval"),
        ('grace = "-5 minutes"\n' + job(), "grace: '-5 minutes' is negative"),
        (
            'history_retention = "a week"\n' + job(),
            "history_retention: 'a week' is not a PostgreSQL interval",
        ),
        (job(table='"no_such_table"'), "job 'sessions': table: relation 'no_such_table' does not exist"),
        (job(table='"a.b.c.d"'), "job 'sessions': table: 'a.b.c.d' is not a table name"),
        (job(table="'\"Sessions\"'"), "job 'sessions': table: relation '\"Sessions\"' does not exist"),
        (job(expires='["expired_at"]'), "job 'sessions': expires: column 'expired_at' does not exist"),
        (job(expires='["label"]'), "job 'sessions': expires: column 'label' is text, not timestamp"),
        (job(where='"revoked AND"'), "job 'sessions': where: 'revoked AND' is not a valid predicate"),
        (job(where='"no_such_column"'), "job 'sessions': where: 'no_such_column' is not a valid predicate"),
        (
            job(where='"revoked, true"'),
            "job 'sessions': where: 'revoked, true' must be one boolean expression",
        ),
        (job(where='"label"'), "must be one boolean expression"),
        # Would turn "rule AND (p)" into "rule AND (true) OR (true)": everything.
        (job(where='"true) OR (true"'), "job 'sessions': where: 'true) OR (true' is not a valid predicate"),
        (job(where='"true; DROP TABLE sessions"'), "job 'sessions': where:"),
        (job(where='"true FROM sessions UNION SELECT true"'), "job 'sessions': where:"),
        (job() + GOOD_SECOND_JOB.replace('"2 days"', '"2 dayz"'), "job 'other': retain"),
        (
            job(table='"by_month"', partitions='"archive"'),
            "job 'sessions': partitions must be one of 'drop', 'detach', 'delete', not 'archive'",
        ),
        ('schema = "public"\n' + job(), "schema: 'public' is not dbjobs' own"),
        ('schema = "pg_dbjobs"\n' + job(), "schema: 'pg_dbjobs' is not dbjobs' own"),
        ('schema = "x$$ y"\n' + job(), "schema: 'x$$ y' must be at most 63 bytes, without '$'"),
    ],
)
def test_bad_values_change_nothing(app: AppDb, dbjobs_cli, write_config, config: str, message: str) -> None:
    app.execute(TABLE)
    path = write_config(config)
    for argv in (["install"], ["install", "--dry-run"]):
        result = dbjobs_cli("--dsn", app.dsn, "--config", path, *argv)
        assert result.code == 2, result
        assert result.out == ""
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dbjobs: error: "), result.err
        assert message in lines[0]
    assert "dbjobs" not in app.schemas()
    assert app.cron_jobs() == []
    assert app.count("sessions") == 1


def test_a_bad_update_leaves_the_previous_install_whole(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE)
    good = write_config(job() + GOOD_SECOND_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", good, "install").code == 0
    before = (app.cron_jobs(), app.execute("SELECT * FROM dbjobs.job ORDER BY name"))

    bad = write_config(job(retain='"2 days"') + GOOD_SECOND_JOB.replace('"sessions"', '"gone"'))
    result = dbjobs_cli("--dsn", app.dsn, "--config", bad, "install")
    assert result.code == 2
    assert "job 'other': table" in result.err
    assert (app.cron_jobs(), app.execute("SELECT * FROM dbjobs.job ORDER BY name")) == before


def test_schema_that_is_not_dbjobs_is_refused(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE + "CREATE SCHEMA reporting; CREATE TABLE reporting.kpi (id int);")
    result = dbjobs_cli(
        "--dsn", app.dsn, "--config", write_config('schema = "reporting"\n' + job()), "install"
    )
    assert result.code == 2
    assert "schema: 'reporting' already exists and holds objects that are not dbjobs'" in result.err
    assert app.execute("SELECT count(*) FROM reporting.kpi") == [(0,)]
    app.execute("DROP SCHEMA reporting CASCADE")


def test_a_schema_that_only_looks_like_dbjobs_is_never_dropped(app: AppDb, dbjobs_cli, write_config) -> None:
    """An application schema with a table called meta is not dbjobs': install refuses, uninstall keeps it."""
    app.execute(TABLE + "CREATE SCHEMA billing; CREATE TABLE billing.meta (key text, value text);")
    config = write_config('schema = "billing"\n' + job())
    refused = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert refused.code == 2 and "holds objects that are not dbjobs'" in refused.err
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall").code == 0
    assert app.execute("SELECT count(*) FROM billing.meta") == [(0,)]
    app.execute("DROP SCHEMA billing CASCADE")


def test_uninstall_keeps_a_dbjobs_schema_holding_other_objects(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE)
    config = write_config(job())
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    app.execute("CREATE TABLE dbjobs.audit_copy (id int); INSERT INTO dbjobs.audit_copy VALUES (1)")
    refused = dbjobs_cli("--dsn", app.dsn, "--config", config, "uninstall")
    assert refused.code == 1
    assert "also holds audit_copy, which dbjobs did not create" in refused.err
    assert app.execute("SELECT count(*) FROM dbjobs.audit_copy") == [(1,)]
    assert len(app.cron_jobs()) == 1  # all or nothing: the jobs are still there too


def test_the_cleanup_needs_update_for_its_row_locks(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute(TABLE)
    role = f"deleter_{app.database}"
    app.execute(
        f'CREATE ROLE "{role}" LOGIN; GRANT USAGE ON SCHEMA "{app.schema}" TO "{role}";'
        f'GRANT SELECT, DELETE ON sessions TO "{role}"'
    )
    try:
        dsn = psycopg.conninfo.make_conninfo(app.dsn, user=role)
        result = dbjobs_cli("--dsn", dsn, "--config", write_config(job()), "install", "--dry-run")
        assert result.code == 2
        assert "needs SELECT, UPDATE and DELETE on 'sessions'" in result.err
    finally:
        app.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
