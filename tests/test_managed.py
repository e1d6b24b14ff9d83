"""Managed PostgreSQL: pg_cron in 'postgres', the application's role not a superuser."""

from __future__ import annotations

import psycopg
from psycopg import sql

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb

GRANTS = """
GRANT USAGE ON SCHEMA cron TO {role};
GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),
                          cron.alter_job(bigint,text,text,text,text,boolean) TO {role};
"""


def test_application_role_without_superuser(app_separate: AppDb, dbjobs_cli) -> None:
    app = app_separate
    role = f"owner_{app.database}"
    app.cron(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    app.cron(
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(app.database), sql.Identifier(role))
    )
    try:
        owner_dsn = psycopg.conninfo.make_conninfo(app.dsn, user=role)
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(DEFAULT_TABLES)
            conn.execute(SAMPLE_ROWS)

        # Without the grants: one line naming them, nothing changed.
        refused = dbjobs_cli("--dsn", owner_dsn, "install")
        assert refused.code == 3
        assert "GRANT EXECUTE ON FUNCTION cron.schedule_in_database" in refused.err
        assert app.cron_jobs() == []

        app.cron(sql.SQL(GRANTS).format(role=sql.Identifier(role)))
        installed = dbjobs_cli("--dsn", owner_dsn, "install")
        assert installed.code == 0, installed.err
        jobs = app.cron("SELECT username, database, active FROM cron.job WHERE database = %s", [app.database])
        assert jobs == [(role, app.database, True)] * 4

        ran = dbjobs_cli("--dsn", owner_dsn, "run", "--all")
        assert ran.code == 0 and "refresh_tokens: deleted 2 rows" in ran.out
        # The monitoring side: status works for the same role (scheduler visibility may be limited).
        status = dbjobs_cli("--dsn", owner_dsn, "status", "--format", "json")
        assert '"state": "ok"' in status.out

        # Disabling needs alter_job, granted above; the job ids stay.
        ids = [j[0] for j in app.cron_jobs()]
        off = dbjobs_cli("--dsn", owner_dsn, "install", env={"DBJOBS_ENABLED": "false"})
        assert off.code == 0, off.err
        assert [(j[0], j[4]) for j in app.cron_jobs()] == [(i, False) for i in ids]

        assert dbjobs_cli("--dsn", owner_dsn, "uninstall").code == 0
        assert app.cron_jobs() == []
    finally:
        app.cron("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        app.cron(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(app.database)))
        app.cron(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        app.cron(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_that_may_not_create_the_schema_is_told_which_grant(app_separate: AppDb, dbjobs_cli) -> None:
    """A role with pg_cron's grants and its tables, but no CREATE on the database: install names
    the grant and changes nothing; doctor gives the same fix; with it, install goes through."""
    app = app_separate
    role = f"cleaner_{app.database}"
    ident, database = sql.Identifier(role), sql.Identifier(app.database)
    app.execute(DEFAULT_TABLES)
    app.cron(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        app.cron(sql.SQL(GRANTS).format(role=ident))
        app.execute(
            sql.SQL("GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(ident)
        )
        app.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        dsn = psycopg.conninfo.make_conninfo(app.dsn, user=role)
        grant = f"GRANT CREATE ON DATABASE {database.as_string(None)} TO {ident.as_string(None)}"

        refused = dbjobs_cli("--dsn", dsn, "install")
        assert (refused.code, refused.err) == (
            3,
            f'dbjobs: error: role {role!r} may not create schema "dbjobs" in database {app.database!r}: '
            f"{grant} (or create the schema beforehand, owned by it)\n",
        )
        assert app.cron_jobs() == [] and app.execute("SELECT to_regnamespace('dbjobs')") == [(None,)]
        doctor = dbjobs_cli("--dsn", dsn, "doctor")
        assert f"fix: {grant} (dbjobs creates its schema), then `dbjobs install`" in doctor.out, doctor.out

        app.execute(grant)
        installed = dbjobs_cli("--dsn", dsn, "install")
        assert installed.code == 0, installed.err
        assert dbjobs_cli("--dsn", dsn, "uninstall").code == 0
    finally:
        app.cron("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        app.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        app.cron(sql.SQL("DROP OWNED BY {}").format(ident))
        app.cron(sql.SQL("DROP ROLE {}").format(ident))
