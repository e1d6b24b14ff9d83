"""Names in `where` resolve the same way at install and in every run; deferred constraints fail a
run with their own error; mixed-case Prisma names; partial indexes in doctor.

Django-like tables (DEFERRABLE INITIALLY DEFERRED foreign keys, no cascade), GoTrue-like ones
(an enum type in the application's schema) and Prisma-like ones ("Session"."expiresAt" timestamp(3)).
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from tests.conftest import AppDb
from tests.real_schemas import DJANGO, GOTRUE, PRISMA, STALE_USERS_JOB, gotrue_rows

NO_GROUPS = " AND NOT EXISTS (SELECT 1 FROM auth_user_groups g WHERE g.user_id = auth_user.id)"
STALE = "NOT is_active AND last_login IS NULL AND date_joined < now() - interval '365 days'"


def with_where(job: str, where: str) -> str:
    return "\n".join(
        f"where = {json.dumps(where)}" if line.startswith("where =") else line for line in job.splitlines()
    )


def as_pg_cron_would(app: AppDb, job: str) -> psycopg.Error | None:
    """CALL the procedure over a session of its own with nothing on its search_path, as pg_cron does."""
    dsn = psycopg.conninfo.make_conninfo(app.dsn, options="-c search_path=pg_catalog")
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CALL dbjobs.run_job({})").format(sql.Literal(job)))
        except psycopg.Error as exc:
            return exc
    return None


def test_where_names_a_table_of_the_same_schema_unqualified(app: AppDb, dbjobs_cli, write_config) -> None:
    """In both layouts: in 'same', the tables live in a schema only the test's search_path names."""
    app.execute(DJANGO)
    config = write_config(with_where(STALE_USERS_JOB, "NOT is_active AND last_login IS NULL" + NO_GROUPS))
    installed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert installed.code == 0, installed.err
    assert as_pg_cron_would(app, "stale_users") is None
    [(status, deleted, error)] = app.execute("SELECT status, rows_deleted, error FROM dbjobs.run")
    assert (status, deleted, error) == ("succeeded", 5, None)
    assert app.execute(f"SELECT id FROM auth_user WHERE {STALE} ORDER BY id") == [
        (i,) for i in range(8, 41, 8)
    ]


def test_where_casts_to_an_enum_of_the_tables_schema(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    app.execute(GOTRUE + gotrue_rows())
    config = write_config(
        "[jobs.unverified_factors]\n"
        'table = "auth.mfa_factors"\n'
        'expires = ["updated_at"]\n'
        'retain = "1 day"\n'
        'schedule = "@hourly"\n'
        "where = \"status = 'unverified'::factor_status\"\n"
    )
    installed = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert installed.code == 0, installed.err
    assert as_pg_cron_would(app, "unverified_factors") is None
    assert app.execute("SELECT status, rows_deleted FROM dbjobs.run") == [("succeeded", 20)]
    assert app.execute("SELECT DISTINCT status::text FROM auth.mfa_factors") == [("verified",)]


def test_a_name_only_the_connections_search_path_finds_is_refused(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    app.execute(
        DJANGO
        + "CREATE SCHEMA extras; CREATE TABLE extras.banned (user_id int);"
        + "INSERT INTO extras.banned VALUES (4);"
    )
    dsn = psycopg.conninfo.make_conninfo(app.dsn, options="-c search_path=extras,public")
    where = "NOT is_active AND EXISTS (SELECT 1 FROM banned b WHERE b.user_id = auth_user.id)"
    refused = dbjobs_cli(
        "--dsn", dsn, "--config", write_config(with_where(STALE_USERS_JOB, where)), "install"
    )
    assert refused.code == 2
    assert refused.err.splitlines() == [
        f"dbjobs: error: job 'stale_users': where: {where!r} is not a valid predicate: "
        'relation "banned" does not exist (names in `where` resolve with search_path '
        'pg_catalog, "public", pg_temp, in every run; only this connection\'s search_path finds it: '
        "qualify the name with its schema)"
    ]
    qualified = write_config(with_where(STALE_USERS_JOB, where.replace("FROM banned", "FROM extras.banned")))
    assert dbjobs_cli("--dsn", dsn, "--config", qualified, "install").code == 0
    assert as_pg_cron_would(app, "stale_users") is None
    assert app.execute("SELECT rows_deleted FROM dbjobs.run") == [(1,)]


def test_the_tables_schema_cannot_shadow_built_in_functions(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """pg_catalog comes first: a function planted in the (writable) table's schema with a built-in's
    signature is not the one a predicate calls."""
    app = app_separate
    app.execute(
        DJANGO + "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'user4' $$;"
    )
    config = write_config(with_where(STALE_USERS_JOB, "lower(username) = 'user4'"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    assert as_pg_cron_would(app, "stale_users") is None
    assert app.execute("SELECT rows_deleted FROM dbjobs.run") == [(1,)]
    assert app.count("auth_user") == 39


def test_a_deferred_foreign_key_violation_is_the_runs_error(app: AppDb, dbjobs_cli, write_config) -> None:
    """Django's foreign keys are checked at COMMIT: the violation is recorded on the run, the run
    ends (not left running, then "interrupted"), and status shows it."""
    app.execute(DJANGO)
    config = write_config(STALE_USERS_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    violation = (
        'update or delete on table "auth_user" violates foreign key constraint '
        '"auth_user_groups_user_id_6a12ed8b_fk_auth_user_id" on table "auth_user_groups"'
    )

    error = as_pg_cron_would(app, "stale_users")
    assert isinstance(error, psycopg.errors.ForeignKeyViolation)
    [(trigger, status, error_text)] = app.execute("SELECT trigger, status, error FROM dbjobs.run")
    assert (trigger, status) == ("scheduled", "failed")
    assert error_text.startswith(violation) and "is still referenced from table" in error_text

    manual = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "stale_users")
    assert manual.code == 1
    assert f"stale_users: failed after deleting 0 rows: {violation}" in manual.out
    assert app.execute("SELECT status, error LIKE 'interrupted%%' FROM dbjobs.run ORDER BY id") == [
        ("failed", False),
        ("failed", False),
    ]
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "json").out)
    [job] = [j for j in report["jobs"] if j["name"] == "stale_users"]
    assert job["state"] == "failing" and job["last_error"].startswith(violation)
    assert app.count("auth_user") == 40  # nothing deleted, nothing half-deleted

    # The fix names the other table in `where`, unqualified (see the search_path tests above).
    fixed = write_config(with_where(STALE_USERS_JOB, "NOT is_active AND last_login IS NULL" + NO_GROUPS))
    assert dbjobs_cli("--dsn", app.dsn, "--config", fixed, "install").code == 0
    assert as_pg_cron_would(app, "stale_users") is None
    assert app.count("auth_user") == 35


def test_a_deferred_constraint_trigger_failure_is_the_runs_error(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    app.execute(
        DJANGO
        + """
        CREATE FUNCTION keep_live_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.session_data = 'keep' THEN
                RAISE EXCEPTION 'session % is still in use', OLD.session_key
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER django_session_keep AFTER DELETE ON django_session
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION keep_live_sessions();
        UPDATE django_session SET session_data = 'keep' WHERE session_key = md5('3');
        """
    )
    config = write_config(
        '[jobs.django_sessions]\ntable = "django_session"\nexpires = ["expire_date"]\n'
        'retain = "0 seconds"\nschedule = "@daily"\nbatch_size = 2\n'
    )
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    error = as_pg_cron_would(app, "django_sessions")
    assert isinstance(error, psycopg.errors.CheckViolation)
    [(status, deleted, error_text)] = app.execute("SELECT status, rows_deleted, error FROM dbjobs.run")
    [(key,)] = app.execute("SELECT md5('3')")
    assert status == "failed" and error_text == f"session {key} is still in use"
    # The batches before the one holding that session committed; that batch rolled back whole.
    assert (
        deleted == 10 - app.count("django_session")
        and app.count("django_session", "session_data = 'keep'") == 1
    )


def test_expires_written_with_sql_quotes_gets_a_hint(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    app.execute(PRISMA)
    job = '[jobs.sessions]\ntable = \'"Session"\'\nexpires = [{}]\nretain = "1 day"\nschedule = "@hourly"\n'
    quoted = dbjobs_cli("--dsn", app.dsn, "--config", write_config(job.format("'\"expiresAt\"'")), "install")
    assert quoted.code == 2
    assert quoted.err.splitlines() == [
        "dbjobs: error: job 'sessions': expires: column '\"expiresAt\"' does not exist in '\"Session\"' "
        "(write it as the catalog spells it, without SQL quotes: 'expiresAt')"
    ]
    folded = dbjobs_cli("--dsn", app.dsn, "--config", write_config(job.format('"expiresat"')), "install")
    assert folded.err.splitlines() == [
        "dbjobs: error: job 'sessions': expires: column 'expiresat' does not exist in '\"Session\"' "
        "(the catalog spells it 'expiresAt': write that, quotes and case as they are there)"
    ]
    config = write_config(job.format('"expiresAt"'))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert "sessions: deleted 20 rows" in result.out, result
    assert app.count('"Session"', "\"expiresAt\" < now() - interval '1 day'") == 0


@pytest.mark.parametrize(
    ("where", "verdict"),
    [
        ("NOT is_active AND last_login IS NULL", "PASS  index for stale_users: date_joined indexed"),
        # Implies NOT is_active, not last_login IS NULL: the partial index cannot serve it.
        ("NOT is_active", "WARN  index for stale_users: no index leads with date_joined"),
    ],
)
def test_doctor_accepts_a_partial_index_the_rule_implies(
    app_separate: AppDb, dbjobs_cli, write_config, where: str, verdict: str
) -> None:
    app = app_separate
    app.execute(
        DJANGO
        + "CREATE INDEX auth_user_stale ON auth_user (date_joined) WHERE NOT is_active AND last_login IS NULL"
    )
    config = write_config(with_where(STALE_USERS_JOB, where))
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", config, "doctor")
    assert verdict in doctor.out, doctor.out
