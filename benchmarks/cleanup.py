"""Deleting a large backlog: dbjobs' batched cleanup against one DELETE and a naive batch loop.

Builds three identical tables (uuid primary key, ~100-byte rows, a btree index on
expires_at, every other row expired, 1,000 distinct expiry values), then deletes the
expired half of each, in one run:

* baseline: one `DELETE FROM t WHERE expires_at < cutoff` (one long transaction);
* dbjobs: `CALL dbjobs.run_job(...)` at the default batch size, committing per batch;
* naive: a procedure committing after each `DELETE ... WHERE id IN (SELECT id ... LIMIT n)`.

Prints each one's time, its throughput relative to the single DELETE, and its longest
transaction, sampled every 5 ms from pg_stat_activity by a second connection.

    .venv/bin/python benchmarks/cleanup.py                 # 2,000,000 rows
    .venv/bin/python benchmarks/cleanup.py --rows 20000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import psycopg

import dbjobs
from dbjobs.config import DEFAULT_BATCH_SIZE, parse_config
from dbjobs.devserver import ThrowawayServer

TABLE = """
CREATE TABLE {t} (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), expires_at timestamptz NOT NULL, payload text);
INSERT INTO {t} (expires_at, payload)
SELECT now() - CASE WHEN i % 2 = 0 THEN interval '60 days' ELSE interval '0' END
             + (i % 1000) * interval '1 second',
       repeat('x', 60)
  FROM generate_series(1, {rows}) i;
CREATE INDEX ON {t} (expires_at);
"""
NAIVE = """
CREATE PROCEDURE naive_cleanup(n int) LANGUAGE plpgsql AS $$
DECLARE deleted bigint;
BEGIN
    LOOP
        DELETE FROM t_naive WHERE id IN (
            SELECT id FROM t_naive WHERE expires_at < now() - interval '30 days' LIMIT n);
        GET DIAGNOSTICS deleted = ROW_COUNT;
        COMMIT;
        EXIT WHEN deleted = 0;
    END LOOP;
END $$;
"""


def longest_transaction(dsn: str, work: Callable[[psycopg.Connection], None]) -> tuple[float, float]:
    """(seconds the work took, longest transaction seen in its session, in seconds)."""
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as watcher:
        pid = conn.info.backend_pid
        longest = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal longest
            while not done.is_set():
                row = watcher.execute(
                    "SELECT extract(epoch FROM clock_timestamp() - xact_start)"
                    " FROM pg_stat_activity WHERE pid = %s",
                    [pid],
                ).fetchone()
                if row and row[0] is not None:
                    longest = max(longest, float(row[0]))
                time.sleep(0.005)

        conn.execute("CHECKPOINT")  # each contender starts without the previous one's dirty pages
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        try:
            work(conn)
        finally:
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
        return elapsed, longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per table; half of them expired")
    parser.add_argument("--naive-batch", type=int, default=10_000)
    args = parser.parse_args()

    with ThrowawayServer(cron_database="app") as pg:
        pg.create_pg_cron()
        dsn = pg.dsn("app")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in ("t_single", "t_dbjobs", "t_naive"):
                conn.execute(TABLE.format(t=table, rows=args.rows))
                conn.execute(f"VACUUM ANALYZE {table}")
            conn.execute(NAIVE)
            config = parse_config(
                {"jobs": {"bench": {"table": "t_dbjobs", "expires": "expires_at", "retain": "30 days",
                                    "schedule": "@hourly"}}}
            )  # fmt: skip
            dbjobs.install(conn, config)
        print(f"{pg.version()}; {args.rows:,} rows per table, half expired; "
              f"dbjobs batch_size {DEFAULT_BATCH_SIZE} (default); fsync off")  # fmt: skip

        results = {
            "single DELETE": longest_transaction(
                dsn, lambda c: c.execute("DELETE FROM t_single WHERE expires_at < now() - interval '30 days'")
            ),
            "dbjobs run_job": longest_transaction(
                dsn, lambda c: c.execute("CALL dbjobs.run_job('bench', 'manual')")
            ),
            f"naive IN batches of {args.naive_batch}": longest_transaction(
                dsn, lambda c: c.execute("CALL naive_cleanup(%s)", [args.naive_batch])
            ),
        }
        with psycopg.connect(dsn) as conn:
            tables = ("t_single", "t_dbjobs", "t_naive")
            left = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]  # type: ignore[index]
            strategy = conn.execute("SELECT strategy, pages_per_batch FROM dbjobs.run").fetchone()
        assert len(set(left)) == 1, f"the three cleanups left different row counts: {left}"
        baseline = results["single DELETE"][0]
        if strategy:
            print(f"dbjobs strategy: {strategy[0]}, {strategy[1]} pages per batch")
        for name, (elapsed, longest) in results.items():
            print(f"{name:<28} {elapsed:7.2f} s   throughput vs single DELETE {baseline / elapsed:5.2f}x   "
                  f"longest transaction {longest:6.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
