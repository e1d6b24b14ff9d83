"""ON DELETE CASCADE and triggers: rows deleted by cascade are counted per child table, a lock the
application holds on a cascaded (or trigger-touched) row skips only the rows that need it, and
doctor finds the foreign keys down the cascade that have no index.

GoTrue-like tables: auth.sessions cascades into auth.refresh_tokens and auth.mfa_amr_claims.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.conftest import AppDb
from tests.real_schemas import EXPIRED_SESSIONS, GOTRUE, PRISMA, SESSIONS_JOB, gotrue_rows

# (sessions per user, every how many one expired): half of the table, or under 5 % of it.
SHAPES = {"sweep": (10, 2), "index": (30, 30)}


def gotrue(app: AppDb, strategy: str) -> int:
    """The tables and rows, RLS left off (the superuser cleans here); the expired sessions' count."""
    per_user, every = SHAPES[strategy]
    app.execute(GOTRUE + gotrue_rows(sessions_per_user=per_user, expired_every=every))
    return app.count("auth.sessions", EXPIRED_SESSIONS)


def last_run(app: AppDb) -> tuple:
    [row] = app.execute(
        "SELECT status, strategy, rows_deleted, rows_skipped, cascaded_rows, error"
        " FROM dbjobs.run ORDER BY id DESC LIMIT 1"
    )
    return row


@pytest.mark.parametrize("strategy", ["sweep", "index"])
def test_rows_deleted_by_cascade_are_counted_per_child_table(
    app_separate: AppDb, dbjobs_cli, write_config, strategy: str
) -> None:
    app = app_separate
    expired = gotrue(app, strategy)
    config = write_config(SESSIONS_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert result.code == 0 and f"sessions: deleted {expired} rows" in result.out, result
    assert last_run(app) == (
        "succeeded",
        strategy,
        expired,
        0,
        {"auth.mfa_amr_claims": 2 * expired, "auth.refresh_tokens": 5 * expired},
        None,
    )
    assert app.count("auth.refresh_tokens") == 5 * app.count("auth.sessions")
    cascaded = f"(cascaded: auth.mfa_amr_claims {2 * expired}, auth.refresh_tokens {5 * expired})"
    assert result.out.rstrip().endswith(cascaded), result.out
    # What status reports of it, from a directory without the configuration.
    report = json.loads(dbjobs_cli("--dsn", app.dsn, "status", "--format", "json").out)
    job = next(job for job in report["jobs"] if job["name"] == "sessions")
    assert job["cascaded_rows"] == {"auth.mfa_amr_claims": 2 * expired, "auth.refresh_tokens": 5 * expired}
    assert job["last_rows_skipped"] == 0


@pytest.mark.parametrize("strategy", ["sweep", "index"])
def test_a_lock_on_a_cascaded_row_skips_only_its_parent(
    app_separate: AppDb, dbjobs_cli, write_config, strategy: str
) -> None:
    """The application holds one refresh token of an expired session: that session (and its
    tokens) wait for a later run, every other expired session goes, and the run succeeds."""
    app = app_separate
    expired = gotrue(app, strategy)
    config = write_config(SESSIONS_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    [(victim,)] = app.execute(f"SELECT id FROM auth.sessions WHERE {EXPIRED_SESSIONS} ORDER BY id LIMIT 1")
    with psycopg.connect(app.dsn) as holder:
        holder.execute(
            "SELECT 1 FROM auth.refresh_tokens WHERE session_id = %s ORDER BY id LIMIT 1 FOR UPDATE", [victim]
        )
        started = time.monotonic()
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
        took = time.monotonic() - started
    assert result.code == 0, result
    assert f"sessions: deleted {expired - 1} rows" in result.out
    assert "(1 skipped: locked, left for a later run; cascaded: " in result.out
    # Two 200 ms waits (the batch, then its SKIP LOCKED retry), then 50 ms ones, row by row.
    assert took < 5, took
    assert app.execute(f"SELECT id FROM auth.sessions WHERE {EXPIRED_SESSIONS}") == [(victim,)]
    assert app.count("auth.refresh_tokens", f"session_id = '{victim}'") == 5
    assert last_run(app) == (
        "succeeded",
        strategy,
        expired - 1,
        1,
        {"auth.mfa_amr_claims": 2 * (expired - 1), "auth.refresh_tokens": 5 * (expired - 1)},
        None,
    )

    again = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert "sessions: deleted 1 row" in again.out
    assert app.count("auth.sessions", EXPIRED_SESSIONS) == 0
    assert last_run(app)[3:5] == (0, {"auth.mfa_amr_claims": 2, "auth.refresh_tokens": 5})


def test_a_lock_on_a_row_a_trigger_updates_skips_the_rows_that_need_it(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """A trigger on the job's table touches another table's row that the application holds."""
    app = app_separate
    expired = gotrue(app, "sweep")
    app.execute(
        """
        CREATE FUNCTION auth.touch_user() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE auth.users SET updated_at = now() WHERE id = OLD.user_id;
            RETURN OLD;
        END $$;
        CREATE TRIGGER sessions_touch_user AFTER DELETE ON auth.sessions
            FOR EACH ROW EXECUTE FUNCTION auth.touch_user();
        """
    )
    config = write_config(SESSIONS_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    [(user, held)] = app.execute(
        f"SELECT user_id, count(*) FROM auth.sessions WHERE {EXPIRED_SESSIONS}"
        " GROUP BY user_id ORDER BY user_id LIMIT 1"
    )
    with psycopg.connect(app.dsn) as holder:
        holder.execute("SELECT 1 FROM auth.users WHERE id = %s FOR UPDATE", [user])
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
    assert result.code == 0 and f"sessions: deleted {expired - held} rows" in result.out, result
    assert app.count("auth.sessions", f"{EXPIRED_SESSIONS} AND user_id <> '{user}'") == 0
    assert last_run(app)[3] == held


def test_doctor_finds_foreign_keys_without_an_index_down_the_cascade(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    gotrue(app, "sweep")
    config = write_config(SESSIONS_JOB)
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", config, "doctor")
    # refresh_tokens (session_id, revoked) and mfa_amr_claims' unique (session_id, ...) lead with it.
    assert (
        'PASS  foreign keys to sessions: 2 foreign keys to "auth"."sessions" or its cascades, each indexed'
        in doctor.out
    )

    # A grandchild, through refresh_tokens, with no index; and a key that only checks (NO ACTION).
    app.execute(
        """
        CREATE TABLE auth.token_uses (id bigserial PRIMARY KEY,
            refresh_token_id bigint NOT NULL REFERENCES auth.refresh_tokens ON DELETE CASCADE);
        CREATE TABLE auth."Audit Log" (id bigserial PRIMARY KEY, "Session Id" uuid REFERENCES auth.sessions);
        """
    )
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", config, "doctor")
    assert doctor.code == 1
    lines = doctor.out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("WARN  foreign keys to sessions"))
    assert lines[i] == (
        'WARN  foreign keys to sessions: no index leads with "auth"."Audit Log" (Session Id) of key '
        'Audit Log_Session Id_fkey to "auth"."sessions"; "auth"."token_uses" (refresh_token_id) of key '
        'token_uses_refresh_token_id_fkey to "auth"."refresh_tokens": '
        "each row deleted there scans the referencing table"
    )
    assert lines[i + 1] == (
        '      fix: CREATE INDEX CONCURRENTLY ON "auth"."Audit Log" ("Session Id"); '
        'CREATE INDEX CONCURRENTLY ON "auth"."token_uses" ("refresh_token_id")'
    )
    for statement in lines[i + 1].removeprefix("      fix: ").split("; "):
        app.execute(statement)
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", config, "doctor")
    assert "PASS  foreign keys to sessions: 4 foreign keys" in doctor.out


def test_prisma_cascade_names_are_quoted(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    """Mixed-case names: the child table's key in cascaded_rows and the index doctor asks for."""
    app = app_separate
    app.execute(PRISMA)
    config = write_config(
        "[jobs.unverified_users]\n"
        "table = '\"User\"'\n"
        'expires = ["createdAt"]\n'
        'retain = "30 days"\n'
        'schedule = "@daily"\n'
        "where = '\"emailVerified\" IS NULL'\n"
    )
    doctor = dbjobs_cli("--dsn", app.dsn, "--config", config, "doctor")
    assert '      fix: CREATE INDEX CONCURRENTLY ON "public"."Session" ("userId")' in doctor.out
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "unverified_users")
    assert "unverified_users: deleted 5 rows" in result.out, result
    assert app.execute("SELECT cascaded_rows FROM dbjobs.run") == [({'public."Session"': 15},)]


def test_a_lock_on_a_whole_cascaded_table_fails_the_run_within_bounds(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """Nothing of a batch can be deleted: the run fails saying why (it would otherwise "succeed",
    skipping every row), after a bounded wait."""
    app = app_separate
    expired = gotrue(app, "sweep")
    config = write_config(SESSIONS_JOB)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    with psycopg.connect(app.dsn) as holder:
        holder.execute("LOCK TABLE auth.refresh_tokens IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "sessions")
        took = time.monotonic() - started
    assert result.code == 1
    assert result.out.startswith("sessions: failed after deleting 0 rows: could not delete any of a batch's")
    assert result.out.rstrip().endswith(
        "rows: each waited for a lock held by another session (On a row or table that deleting them "
        "cascades to or that a trigger touches.) hint: pg_locks shows who holds it; the next run tries again."
    )
    assert took < 3, took  # 2 x 200 ms, then 20 x 50 ms
    assert app.count("auth.sessions", EXPIRED_SESSIONS) == expired
