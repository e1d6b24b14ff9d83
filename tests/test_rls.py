"""Row-level security: a role it would filter is refused at install and by doctor, and a run that
meets it anyway fails saying so, instead of "deleting 0 rows" while expired rows pile up.

GoTrue-like tables (RLS enabled on every table, no policy), cleaned by a role that is not a
superuser, does not own them and has the README's grants.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from psycopg import sql

from tests.conftest import AppDb
from tests.real_schemas import (
    EXPIRED_SESSIONS,
    GOTRUE,
    SESSIONS_JOB,
    application_role,
    gotrue_rows,
    grant_tables,
)


@pytest.fixture
def gotrue(app_separate: AppDb, write_config) -> Iterator[tuple[AppDb, str, str, str]]:
    """(app, cleaning role, its DSN, config path): the tables owned by the superuser, not the role."""
    app = app_separate
    app.execute(GOTRUE + gotrue_rows())
    with application_role(app) as (role, dsn):
        grant_tables(app, "auth", role)
        yield app, role, dsn, write_config(SESSIONS_JOB)


def policy(app: AppDb, role: str, clause: str, name: str = "dbjobs_cleanup") -> None:
    app.execute(
        sql.SQL("CREATE POLICY {} ON auth.sessions " + clause).format(
            sql.Identifier(name), role=sql.Identifier(role)
        )
    )


@pytest.mark.parametrize(
    ("policies", "hidden"),
    [
        ([], "SELECT, UPDATE, DELETE"),
        # FOR UPDATE SKIP LOCKED needs an UPDATE policy too: without one it locks no row.
        (["FOR SELECT TO {role} USING (true)", "FOR DELETE TO {role} USING (true)"], "UPDATE"),
        # A policy for another role, or without USING, grants this one nothing.
        (["TO postgres USING (true)"], "SELECT, UPDATE, DELETE"),
        (["FOR SELECT TO {role}"], "SELECT, UPDATE, DELETE"),
    ],
)
def test_rls_that_hides_every_row_is_refused_with_the_fix(
    gotrue, dbjobs_cli, policies: list[str], hidden: str
) -> None:
    app, role, dsn, config = gotrue
    for i, clause in enumerate(policies):
        policy(app, role, clause, name=f"p{i}")
    refused = dbjobs_cli("--dsn", dsn, "--config", config, "install")
    assert refused.code == 2
    [line] = refused.err.splitlines()
    assert line == (
        f"dbjobs: error: job 'sessions': table: row-level security on auth.sessions hides every row "
        f"from role {role} (no policy lets it {hidden}): every run would delete nothing; "
        f"CREATE POLICY dbjobs_cleanup ON auth.sessions TO {role} USING (true), "
        f"or ALTER ROLE {role} BYPASSRLS, or install as the table's owner"
    )
    assert "dbjobs" not in app.schemas()

    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert doctor.code == 2
    assert (
        "FAIL  configuration: job 'sessions': table: row-level security on auth.sessions "
        f"hides every row from role {role}" in doctor.out
    )


def test_a_policy_for_the_role_lets_it_clean_and_a_dropped_policy_fails_the_run(gotrue, dbjobs_cli) -> None:
    app, role, dsn, config = gotrue
    expired = app.count("auth.sessions", EXPIRED_SESSIONS)
    policy(app, role, "TO {role} USING (true)")
    installed = dbjobs_cli("--dsn", dsn, "--config", config, "install")
    assert installed.code == 0, installed.err
    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert (
        f"PASS  row-level security for sessions: applies to role {role} on auth.sessions; "
        "its policies let it see and delete every row"
    ) in doctor.out
    ran = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
    assert ran.code == 0 and f"sessions: deleted {expired} rows" in ran.out, ran
    assert app.count("auth.sessions", EXPIRED_SESSIONS) == 0

    # The policy goes after install: the run fails and says why, rather than "deleting 0 rows".
    app.execute(gotrue_rows(users=2))
    left = app.count("auth.sessions", EXPIRED_SESSIONS)
    app.execute("DROP POLICY dbjobs_cleanup ON auth.sessions")
    failed = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
    assert failed.code == 1
    message = (
        f"row-level security on auth.sessions hides every row from role {role}: "
        "no policy lets it SELECT, UPDATE, DELETE"
    )
    assert f"sessions: failed after deleting 0 rows: {message}" in failed.out
    assert f"hint: CREATE POLICY dbjobs_cleanup ON auth.sessions TO {role} USING (true)" in failed.out
    assert app.count("auth.sessions", EXPIRED_SESSIONS) == left
    status = json.loads(dbjobs_cli("--dsn", dsn, "--config", config, "status", "--format", "json").out)
    [job] = [j for j in status["jobs"] if j["name"] == "sessions"]
    assert job["state"] == "failing" and message in job["last_error"]


def test_a_policy_that_filters_rows_is_a_doctor_warning(gotrue, dbjobs_cli) -> None:
    app, role, dsn, config = gotrue
    policy(app, role, "TO {role} USING (aal = 'aal1')", name="aal1_only")
    policy(app, role, "AS RESTRICTIVE TO {role} USING (true)", name="harmless")
    assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert doctor.code == 1
    assert (
        f"WARN  row-level security for sessions: policies aal1_only on auth.sessions may hide rows "
        f"from role {role}: expired rows they hide are never deleted"
    ) in doctor.out


def test_bypassrls_needs_no_policy(gotrue, dbjobs_cli) -> None:
    app, role, dsn, config = gotrue
    app.cron(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)))
    assert dbjobs_cli("--dsn", dsn, "--config", config, "install").code == 0
    doctor = dbjobs_cli("--dsn", dsn, "--config", config, "doctor")
    assert "row-level security" not in doctor.out
    ran = dbjobs_cli("--dsn", dsn, "--config", config, "run", "sessions")
    assert ran.code == 0 and "deleted 100 rows" in ran.out


def test_force_row_level_security_applies_to_the_owner(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    with application_role(app) as (role, dsn):
        app.execute(GOTRUE + gotrue_rows())
        app.execute(sql.SQL("ALTER TABLE auth.sessions OWNER TO {}").format(sql.Identifier(role)))
        grant_tables(app, "auth", role)
        config = write_config(SESSIONS_JOB)
        # The owner is not filtered: RLS is enabled, not forced.
        assert dbjobs_cli("--dsn", dsn, "--config", config, "install", "--dry-run").code == 0

        app.execute("ALTER TABLE auth.sessions FORCE ROW LEVEL SECURITY")
        refused = dbjobs_cli("--dsn", dsn, "--config", config, "install")
        assert refused.code == 2
        assert refused.err.rstrip().endswith(
            f"or ALTER ROLE {role} BYPASSRLS, or ALTER TABLE auth.sessions NO FORCE ROW LEVEL SECURITY"
        )
