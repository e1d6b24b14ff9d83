"""Small schemas shaped like three real applications' (from their migrations), and a role that is
not a superuser, for the tests of row-level security, cascades, names in `where` and deferred keys.

* GoTrue (Supabase Auth): schema `auth`, RLS enabled on every table with no policy, sessions with
  ON DELETE CASCADE into refresh_tokens and mfa_amr_claims, enum types such as factor_status.
* Django 5.2 contrib.auth and sessions: DEFERRABLE INITIALLY DEFERRED foreign keys, no cascade.
* Prisma (Documenso): mixed-case names, timestamp(3) columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests.conftest import AppDb

GOTRUE = """
CREATE SCHEMA auth;
CREATE TYPE auth.factor_status AS ENUM ('unverified', 'verified');
CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3');
CREATE TABLE auth.users (
    instance_id uuid, id uuid PRIMARY KEY, email varchar(255),
    created_at timestamptz, updated_at timestamptz);
CREATE TABLE auth.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at timestamptz, updated_at timestamptz, factor_id uuid, aal auth.aal_level,
    not_after timestamptz);
CREATE INDEX sessions_user_id_idx ON auth.sessions (user_id);
CREATE INDEX sessions_not_after_idx ON auth.sessions (not_after DESC);
CREATE TABLE auth.refresh_tokens (
    instance_id uuid, id bigserial PRIMARY KEY, token varchar(255) UNIQUE, user_id varchar(255),
    revoked boolean, created_at timestamptz, updated_at timestamptz, parent varchar(255),
    session_id uuid REFERENCES auth.sessions (id) ON DELETE CASCADE);
CREATE INDEX refresh_tokens_session_id_revoked_idx ON auth.refresh_tokens (session_id, revoked);
CREATE INDEX refresh_tokens_updated_at_idx ON auth.refresh_tokens (updated_at DESC);
CREATE TABLE auth.mfa_factors (
    id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    friendly_name text, factor_type text, status auth.factor_status NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE INDEX mfa_factors_user_id_idx ON auth.mfa_factors (user_id);
CREATE INDEX mfa_factors_updated_at_idx ON auth.mfa_factors (updated_at);
CREATE TABLE auth.mfa_amr_claims (
    session_id uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
    authentication_method text NOT NULL, id uuid PRIMARY KEY,
    CONSTRAINT mfa_amr_claims_session_id_authentication_method_pkey
        UNIQUE (session_id, authentication_method));
ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.mfa_factors ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.mfa_amr_claims ENABLE ROW LEVEL SECURITY;
"""


def gotrue_rows(users: int = 20, sessions_per_user: int = 10, expired_every: int = 2) -> str:
    """Sessions whose number within their user is a multiple of expired_every expired 30 days ago;
    5 refresh tokens and 2 MFA claims per session; one unverified and one verified factor per user."""
    return f"""
    INSERT INTO auth.users (id, email, created_at, updated_at)
    SELECT gen_random_uuid(), 'user' || i || '@example.com', now(), now() FROM generate_series(1, {users}) i;
    INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal, not_after)
    SELECT gen_random_uuid(), u.id, now() - interval '40 days', now() - interval '40 days', 'aal1',
           CASE WHEN s % {expired_every} = 0 THEN now() - interval '30 days' ELSE now() + interval '1 day' END
      FROM auth.users u, generate_series(1, {sessions_per_user}) s
     WHERE NOT EXISTS (SELECT FROM auth.sessions o WHERE o.user_id = u.id);
    INSERT INTO auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, session_id)
    SELECT md5(s.id::text || t), s.user_id::text, false, s.created_at, s.updated_at, s.id
      FROM auth.sessions s, generate_series(1, 5) t
     WHERE NOT EXISTS (SELECT FROM auth.refresh_tokens r WHERE r.session_id = s.id);
    INSERT INTO auth.mfa_amr_claims (session_id, created_at, updated_at, authentication_method, id)
    SELECT s.id, now(), now(), m, gen_random_uuid() FROM auth.sessions s, unnest(ARRAY['password', 'totp']) m
     WHERE NOT EXISTS (SELECT FROM auth.mfa_amr_claims c WHERE c.session_id = s.id);
    INSERT INTO auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at)
    SELECT gen_random_uuid(), u.id, 'phone', 'totp', f.status::auth.factor_status,
           now() - interval '10 days', now() - interval '10 days'
      FROM auth.users u, unnest(ARRAY['unverified', 'verified']) f(status)
     WHERE NOT EXISTS (SELECT FROM auth.mfa_factors m WHERE m.user_id = u.id);
    ANALYZE auth.users, auth.sessions, auth.refresh_tokens, auth.mfa_amr_claims, auth.mfa_factors;
    """


SESSIONS_JOB = """
[jobs.sessions]
table = "auth.sessions"
expires = ["not_after"]
retain = "1 day"
schedule = "0 * * * *"
batch_size = 30
"""

EXPIRED_SESSIONS = "not_after < now() - interval '1 day'"

DJANGO = """
CREATE TABLE auth_group (id serial PRIMARY KEY, name varchar(150) NOT NULL UNIQUE);
CREATE TABLE auth_user (
    id serial PRIMARY KEY, password varchar(128) NOT NULL, last_login timestamptz,
    is_superuser boolean NOT NULL, username varchar(150) NOT NULL UNIQUE,
    first_name varchar(150) NOT NULL DEFAULT '', last_name varchar(150) NOT NULL DEFAULT '',
    email varchar(254) NOT NULL DEFAULT '', is_staff boolean NOT NULL, is_active boolean NOT NULL,
    date_joined timestamptz NOT NULL);
CREATE TABLE auth_user_groups (
    id bigserial PRIMARY KEY, user_id integer NOT NULL, group_id integer NOT NULL,
    CONSTRAINT auth_user_groups_user_id_group_id_94350c0c_uniq UNIQUE (user_id, group_id));
ALTER TABLE auth_user_groups ADD CONSTRAINT auth_user_groups_user_id_6a12ed8b_fk_auth_user_id
    FOREIGN KEY (user_id) REFERENCES auth_user (id) DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE auth_user_groups ADD CONSTRAINT auth_user_groups_group_id_97559544_fk_auth_group_id
    FOREIGN KEY (group_id) REFERENCES auth_group (id) DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX auth_user_groups_user_id_6a12ed8b ON auth_user_groups (user_id);
CREATE INDEX auth_user_groups_group_id_97559544 ON auth_user_groups (group_id);
CREATE TABLE django_session (
    session_key varchar(40) PRIMARY KEY, session_data text NOT NULL, expire_date timestamptz NOT NULL);
CREATE INDEX django_session_expire_date_a5c62663 ON django_session (expire_date);

-- 40 users: every 4th joined two years ago, inactive and never logged in; of those, every
-- other one is still in a group (user ids 4, 12, 20, 28, 36 are stale without a group).
INSERT INTO auth_group (name) VALUES ('staff');
INSERT INTO auth_user (password, last_login, is_superuser, username, is_staff, is_active, date_joined)
SELECT '!', CASE WHEN i % 4 = 0 THEN NULL ELSE now() END, false, 'user' || i, false, i % 4 <> 0,
       CASE WHEN i % 4 = 0 THEN now() - interval '2 years' ELSE now() - interval '1 day' END
  FROM generate_series(1, 40) i;
INSERT INTO auth_user_groups (user_id, group_id) SELECT i, 1 FROM generate_series(8, 40, 8) i;
INSERT INTO django_session
SELECT md5(i::text), 'e30:', now() + CASE WHEN i <= 6 THEN interval '-3 days' ELSE interval '1 day' END
  FROM generate_series(1, 10) i;
"""

STALE_USERS_JOB = """
[jobs.stale_users]
table = "auth_user"
expires = ["date_joined"]
retain = "365 days"
schedule = "0 3 * * *"
where = "NOT is_active AND last_login IS NULL"
"""

PRISMA = """
CREATE TABLE "User" (
    "id" text PRIMARY KEY, "email" text NOT NULL,
    "emailVerified" timestamp(3), "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE "Session" (
    "id" text PRIMARY KEY, "sessionToken" text NOT NULL, "userId" text NOT NULL,
    "expiresAt" timestamp(3) NOT NULL, "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE UNIQUE INDEX "Session_sessionToken_key" ON "Session" ("sessionToken");
CREATE INDEX "Session_expiresAt_idx" ON "Session" ("expiresAt");
ALTER TABLE "Session" ADD CONSTRAINT "Session_userId_fkey"
    FOREIGN KEY ("userId") REFERENCES "User" ("id") ON DELETE CASCADE ON UPDATE CASCADE;
INSERT INTO "User" SELECT 'u' || i, 'u' || i || '@example.com',
       CASE WHEN i % 2 = 0 THEN now() END, now() - interval '90 days'
  FROM generate_series(1, 10) i;
INSERT INTO "Session" SELECT 's' || u || '-' || s, md5(u || '-' || s), 'u' || u,
       now() + CASE WHEN s <= 2 THEN interval '-2 days' ELSE interval '2 days' END, now()
  FROM generate_series(1, 10) u, generate_series(1, 3) s;
"""


@contextmanager
def application_role(app: AppDb) -> Iterator[tuple[str, str]]:
    """A LOGIN role that is not a superuser and owns nothing, with the README's grants: CREATE on
    the database (for dbjobs' schema) and pg_cron's functions. Yields it and a DSN connecting as it."""
    role = f"cleaner_{app.database}"[:63]
    ident = sql.Identifier(role)
    app.cron(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        app.cron(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(app.database), ident))
        app.cron(
            sql.SQL(
                "GRANT USAGE ON SCHEMA cron TO {role};"
                "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,text,text,boolean),"
                " cron.alter_job(bigint,text,text,text,text,boolean) TO {role}"
            ).format(role=ident)
        )
        yield role, psycopg.conninfo.make_conninfo(app.dsn, user=role)
    finally:
        app.cron("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", [role])
        # Tables the test gave it go back to the superuser; the rest (dbjobs' schema, grants) goes.
        app.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER; DROP OWNED BY {}").format(ident, ident))
        app.cron(sql.SQL("DROP OWNED BY {}").format(ident))
        app.cron(sql.SQL("DROP ROLE {}").format(ident))


def grant_tables(app: AppDb, schema: str, role: str) -> None:
    """The README's grants on the tables a role cleans: SELECT, UPDATE (row locks) and DELETE."""
    app.execute(
        sql.SQL(
            "GRANT USAGE ON SCHEMA {schema} TO {role};"
            "GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
        ).format(schema=sql.Identifier(schema), role=sql.Identifier(role))
    )
