"""Range-partitioned tables: partitions wholly past retention go whole, the rest in batches."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import AppDb

# Partitions by expiry, in days from now (retain 30 days: the cutoff is at -30):
# three lie wholly past it, one holds it, two are in the future; the default
# partition holds the rows no bound covers, NULL expiry included.
BOUNDS = {"p_old1": (-400, -300), "p_old2": (-300, -200), "p_old3": (-200, -100),
          "p_now": (-100, 100), "p_next": (100, 200), "p_later": (200, 300)}  # fmt: skip
OLD = ["p_old1", "p_old2", "p_old3"]


def make_table(app: AppDb, key_type: str = "timestamptz") -> None:
    """sessions, range-partitioned on expires_at, with a row every 5 days from -500 to +300, and NULLs."""
    app.execute(
        f"""
        CREATE TABLE sessions (id int, expires_at {key_type}, revoked boolean NOT NULL)
            PARTITION BY RANGE (expires_at);
        CREATE TABLE p_default PARTITION OF sessions DEFAULT;
        CREATE INDEX ON sessions (expires_at);
        """
    )
    # The bounds: days from now, as literals of the key's type.
    days = sorted({d for bound in BOUNDS.values() for d in bound})
    literal = dict(
        app.execute(
            f"SELECT d, (now() + d * interval '1 day')::{key_type}::text FROM unnest(%s::int[]) d", [days]
        )
    )
    for name, (lo, hi) in BOUNDS.items():
        app.execute(
            f"CREATE TABLE {name} PARTITION OF sessions"
            f" FOR VALUES FROM ('{literal[lo]}') TO ('{literal[hi]}')"
        )
    app.execute(
        """
        INSERT INTO sessions
        SELECT i, now() + (i * 5 - 500) * interval '1 day' + interval '1 hour', i % 4 = 0
          FROM generate_series(0, 160) i;
        INSERT INTO sessions SELECT 1000 + i, NULL, false FROM generate_series(1, 5) i;
        ANALYZE sessions;
        """
    )


def config(**extra: str) -> str:
    keys = {"table": '"sessions"', "expires": '["expires_at"]', "retain": '"30 days"', "schedule": '"@daily"'}
    keys.update(extra)
    return "[jobs.sessions]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


RULE = "expires_at < now() - interval '30 days'"


def partitions(app: AppDb) -> set[str]:
    return {
        r[0] for r in app.execute("SELECT relid::text FROM pg_partition_tree('sessions') WHERE level > 0")
    }


def last_run(app: AppDb) -> tuple[str, int, int]:
    [row] = app.execute(
        "SELECT status, rows_deleted, partitions_removed FROM dbjobs.run ORDER BY id DESC LIMIT 1"
    )
    return row


@pytest.mark.parametrize("key_type", ["timestamptz", "timestamp", "date"])
def test_old_partitions_are_dropped_and_the_rest_deleted_in_batches(
    app_separate: AppDb, dbjobs_cli, write_config, key_type: str
) -> None:
    app = app_separate
    make_table(app, key_type)
    expected = app.count("sessions", RULE)
    in_old = app.count("sessions", f"tableoid::regclass::text = ANY(ARRAY{OLD})")
    total = app.count("sessions")
    assert 0 < in_old < expected  # the boundary and default partitions hold expired rows too

    path = write_config(config(batch_size="7"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert result.code == 0, result
    assert f"sessions: deleted {expected - in_old} rows" in result.out
    assert f"and dropped 3 partitions (about {in_old} rows)" in result.out  # ANALYZEd: exact here

    assert partitions(app) == {"p_now", "p_next", "p_later", "p_default"}
    assert app.count("sessions", RULE) == 0
    assert app.count("sessions") == total - expected
    assert app.count("sessions", "expires_at IS NULL") == 5  # NULL never expires
    assert last_run(app) == ("succeeded", expected - in_old, 3)

    # Nothing is left to do, and nothing else goes.
    again = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert "sessions: deleted 0 rows" in again.out
    assert partitions(app) == {"p_now", "p_next", "p_later", "p_default"}


def test_detached_partitions_keep_their_rows(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    make_table(app)
    in_old = {name: app.count(name) for name in OLD}
    path = write_config(config(partitions='"detach"'))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert f"and detached 3 partitions (about {sum(in_old.values())} rows)" in result.out, result
    assert partitions(app) == {"p_now", "p_next", "p_later", "p_default"}
    assert {name: app.count(name) for name in OLD} == in_old  # tables of their own now
    assert app.count("sessions", RULE) == 0


def test_delete_mode_and_predicates_keep_every_partition(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """Rows only: by choice, and when a `where` predicate means bounds cannot prove a partition dead."""
    app = app_separate
    make_table(app)
    every = partitions(app)
    rule = f"{RULE} AND revoked"
    expected, total = app.count("sessions", rule), app.count("sessions")
    path = write_config(config(where='"revoked"'))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert f"sessions: deleted {expected} rows" in result.out, result
    assert partitions(app) == every
    assert app.count("sessions", rule) == 0 and app.count("sessions") == total - expected

    expected = app.count("sessions", RULE)
    path = write_config(config(partitions='"delete"'))
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert f"sessions: deleted {expected} rows" in result.out, result
    assert partitions(app) == every
    assert app.count("sessions", RULE) == 0


def test_a_partition_in_use_is_emptied_now_and_dropped_later(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    """DROP waits at most lock_timeout behind the application, then the rows go in batches instead."""
    app = app_separate
    make_table(app)
    expected = app.count("sessions", RULE)
    dropped = app.count("p_old1") + app.count("p_old3")
    path = write_config(config())
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    with psycopg.connect(app.dsn) as reader:
        reader.execute("SELECT count(*) FROM p_old2")  # holds ACCESS SHARE until it ends
        result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
        assert result.code == 0, result
        assert f"sessions: deleted {expected - dropped} rows" in result.out
        assert f"and dropped 2 partitions (about {dropped} rows)" in result.out
        assert reader.execute("SELECT count(*) FROM p_old2").fetchone() == (0,)  # still usable
    assert partitions(app) == {"p_old2", "p_now", "p_next", "p_later", "p_default"}

    again = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert "sessions: deleted 0 rows" in again.out and "and dropped 1 partition " in again.out
    assert partitions(app) == {"p_now", "p_next", "p_later", "p_default"}


def test_sub_partitions_go_with_their_parent(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    app.execute(
        """
        CREATE TABLE sessions (tenant int, expires_at timestamptz) PARTITION BY LIST (tenant);
        CREATE TABLE t1 PARTITION OF sessions FOR VALUES IN (1) PARTITION BY RANGE (expires_at);
        CREATE TABLE t1_old PARTITION OF t1 FOR VALUES FROM (MINVALUE) TO (now() - interval '60 days');
        CREATE TABLE t1_new PARTITION OF t1 FOR VALUES FROM (now() - interval '60 days') TO (MAXVALUE);
        CREATE TABLE t2 PARTITION OF sessions FOR VALUES IN (2);
        INSERT INTO sessions SELECT t, now() - d * interval '1 day'
          FROM generate_series(1, 2) t, generate_series(0, 99) d;
        """
    )
    expected, in_old = app.count("sessions", RULE), app.count("t1_old")
    path = write_config(config())
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert f"sessions: deleted {expected - in_old} rows" in result.out, result
    # Never analyzed: its rows are counted.
    assert f"and dropped 1 partition (about {in_old} rows)" in result.out
    assert partitions(app) == {"t1", "t1_new", "t2"}
    assert app.count("sessions", RULE) == 0
    assert app.count("sessions") == 200 - expected


def test_removing_partitions_needs_to_own_them(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    make_table(app)
    role = f"cleaner_{app.database}"
    app.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        app.execute(
            f'GRANT CREATE ON DATABASE "{app.database}" TO "{role}";'
            f'GRANT SELECT, UPDATE, DELETE ON sessions, {", ".join([*BOUNDS, "p_default"])} TO "{role}"'
        )
        dsn = psycopg.conninfo.make_conninfo(app.dsn, user=role)
        refused = dbjobs_cli("--dsn", dsn, "--config", write_config(config()), "install", "--dry-run")
        assert refused.code == 2
        assert "job 'sessions': partitions: drop needs the connected role to own" in refused.err
        assert 'set partitions = "delete"' in refused.err
        # Rows only: the table passes, and install goes on to the next check (pg_cron's grants).
        rows_only = write_config(config(partitions='"delete"'))
        passed = dbjobs_cli("--dsn", dsn, "--config", rows_only, "install", "--dry-run")
        assert passed.code == 3 and "may not use pg_cron's schema" in passed.err, passed
    finally:
        app.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_doctor_checks_the_partitioned_index(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    make_table(app)
    path = write_config(config())
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    assert (
        "PASS  index for sessions: expires_at indexed"
        in dbjobs_cli("--dsn", app.dsn, "--config", path, "doctor").out
    )

    app.execute("DROP INDEX sessions_expires_at_idx")
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "doctor")
    assert result.code == 1
    assert (
        'fix: CREATE INDEX ON ONLY "public"."sessions" ("expires_at"), then on each partition' in result.out
    )


def test_only_bounds_prove_a_partition_dead(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    """An empty partitioned partition plans as empty whatever the query: it is not taken as expired."""
    app = app_separate
    make_table(app)
    app.execute(
        "CREATE TABLE p_ahead PARTITION OF sessions FOR VALUES FROM (now() + interval '400 days')"
        " TO (now() + interval '500 days') PARTITION BY RANGE (expires_at)"
    )
    path = write_config(config())
    assert dbjobs_cli("--dsn", app.dsn, "--config", path, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", path, "run", "sessions")
    assert "and dropped 3 partitions" in result.out, result
    assert partitions(app) == {"p_now", "p_next", "p_later", "p_ahead", "p_default"}


def test_foreign_partitions_are_refused(app_separate: AppDb, dbjobs_cli, write_config) -> None:
    app = app_separate
    make_table(app)
    app.execute(
        f"""
        CREATE EXTENSION postgres_fdw;
        CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname '{app.database}');
        CREATE FOREIGN TABLE p_remote PARTITION OF sessions
            FOR VALUES FROM (now() + interval '400 days') TO (now() + interval '500 days') SERVER elsewhere;
        """
    )
    result = dbjobs_cli("--dsn", app.dsn, "--config", write_config(config()), "install")
    assert result.code == 2
    assert "job 'sessions': table: partition p_remote of 'sessions' is a foreign table" in result.err
    assert "dbjobs" not in app.schemas()
