"""Both ways of deleting (physical sweep, index-driven batches) delete exactly the rule's rows."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import AppDb

CONFIG = """
[jobs.events]
table = "events"
expires = ["expires_at", "consumed_at"]
retain = "1 day"
schedule = "@hourly"
batch_size = 50
where = "NOT keep"
"""


@pytest.mark.parametrize(("expired_every", "strategy"), [(2, "sweep"), (500, "index")])
def test_strategy_follows_the_expired_share(
    app_separate: AppDb, dbjobs_cli, write_config, expired_every: int, strategy: str
) -> None:
    app = app_separate
    app.execute(
        f"""
        CREATE TABLE events (id int PRIMARY KEY, expires_at timestamptz, consumed_at timestamptz,
                             keep boolean NOT NULL DEFAULT false, pad text DEFAULT repeat('x', 80));
        INSERT INTO events (id, expires_at, consumed_at, keep)
        SELECT i,
               CASE WHEN i % {expired_every} = 0 THEN now() - interval '3 days'
                    ELSE now() + interval '1 day' END,
               CASE WHEN i % {expired_every * 3} = 1 THEN now() - interval '2 days' END,
               i % 11 = 0
          FROM generate_series(1, 20000) i;
        CREATE INDEX ON events (expires_at);
        CREATE INDEX ON events (consumed_at);
        ANALYZE events;
        """
    )
    rule = "(expires_at < now() - interval '1 day' OR consumed_at < now() - interval '1 day') AND NOT keep"
    expected = app.count("events", rule)
    total = app.count("events")
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert result.code == 0, result.err
    assert f"events: deleted {expected} rows" in result.out
    assert app.count("events", rule) == 0
    assert app.count("events") == total - expected
    [(used, rows)] = app.execute("SELECT strategy, rows_deleted FROM dbjobs.run")
    assert (used, rows) == (strategy, expected)


@pytest.mark.parametrize("column_type", ["timestamptz", "timestamp", "date"])
def test_index_batches_walk_each_column_in_order(
    app_same: AppDb, dbjobs_cli, write_config, column_type: str
) -> None:
    """Keyset batches: equal expiry values straddling batches, two columns, a row the app holds."""
    app = app_same
    app.execute(
        f"""
        CREATE TABLE events (id int PRIMARY KEY, expires_at {column_type}, consumed_at {column_type},
                             keep boolean NOT NULL DEFAULT false);
        INSERT INTO events (id, expires_at, consumed_at, keep)
        SELECT i,
               -- every 40th row expired, ten rows per expiry value
               CASE WHEN i % 40 = 0 THEN now() - (10 + i / 400) * interval '1 day'
                    ELSE now() + interval '1 day' END,
               CASE WHEN i % 40 = 7 THEN now() - (10 + i / 400) * interval '1 day' END,
               i % 11 = 0
          FROM generate_series(1, 20000) i;
        CREATE INDEX ON events (expires_at);
        CREATE INDEX ON events (consumed_at);
        ANALYZE events;
        """
    )
    rule = "(expires_at < now() - interval '1 day' OR consumed_at < now() - interval '1 day') AND NOT keep"
    expected, total = app.count("events", rule), app.count("events")
    config = write_config(CONFIG.replace("batch_size = 50", "batch_size = 7"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    with psycopg.connect(app.dsn) as holder:
        holder.execute("SELECT 1 FROM events WHERE id = 800 FOR UPDATE")  # expired, and held
        result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert f"events: deleted {expected - 1} rows" in result.out, result
    assert app.execute("SELECT id FROM events WHERE " + rule) == [(800,)]
    assert app.count("events") == total - expected + 1
    [(used, rows)] = app.execute("SELECT strategy, rows_deleted FROM dbjobs.run")
    assert (used, rows) == ("index", expected - 1)

    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert "events: deleted 1 row" in result.out
    assert app.count("events", rule) == 0


@pytest.mark.parametrize(
    ("expired", "largest"),
    [
        ("i % 2 = 0", 2),  # spread evenly
        ("i <= 4000", 2),  # the oldest rows, packed in the first pages
        ("i > 16000", 10),  # after 80 % of pages with none: the bound is ten batches' worth
    ],
)
def test_sweep_batches_stay_near_batch_size_wherever_expired_rows_lie(
    app_same: AppDb, dbjobs_cli, write_config, expired: str, largest: int
) -> None:
    app = app_same
    app.execute(
        f"""
        CREATE TABLE events (id int PRIMARY KEY, expires_at timestamptz, consumed_at timestamptz,
                             keep boolean NOT NULL DEFAULT false, pad text DEFAULT repeat('x', 80));
        INSERT INTO events (id, expires_at)
        SELECT i, CASE WHEN {expired} THEN now() - interval '3 days' ELSE now() + interval '1 day' END
          FROM generate_series(1, 20000) i;
        """
    )
    app.execute("VACUUM ANALYZE events")
    expected = app.count("events", "expires_at < now() - interval '1 day'")
    config = write_config(CONFIG.replace("batch_size = 50", "batch_size = 100"))
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "events")
    assert f"events: deleted {expected} rows" in result.out, result
    [(strategy, biggest)] = app.execute("SELECT strategy, largest_batch FROM dbjobs.run")
    assert strategy == "sweep"
    assert biggest <= largest * 100
