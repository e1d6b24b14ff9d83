"""Deleting a large backlog: dbjobs' batched cleanup against one DELETE and a naive batch loop.

Builds three identical tables (uuid primary key, ~100-byte rows, a btree index on
expires_at, every other row expired, 1,000 distinct expiry values), then deletes the
expired half of each, in one run:

* baseline: one `DELETE FROM t WHERE expires_at < cutoff` (one long transaction);
* dbjobs: `CALL dbjobs.run_job(...)` at the default batch size, committing per batch;
* naive: a procedure committing after each `DELETE ... WHERE id IN (SELECT id ... LIMIT n)`.

Prints each one's time, its throughput relative to the single DELETE, and its longest
transaction, sampled every 5 ms from pg_stat_activity by a second connection. The single
DELETE and dbjobs run --rounds times on fresh tables (who goes first alternates) and the
median ratio (and the ratio of total times) is printed; the naive loop, much slower, runs once.

Then the cost of `archive`: dbjobs deleting against dbjobs moving the same rows into an
archive table (install creates it), --archive-rounds times, alternating, with the WAL each
wrote; the median ratio of their times is printed.

    .venv/bin/python benchmarks/cleanup.py                 # 2,000,000 rows
    .venv/bin/python benchmarks/cleanup.py --durable       # fsync on, as in production
    .venv/bin/python benchmarks/cleanup.py --rows 20000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

import dbjobs
from dbjobs.config import DEFAULT_BATCH_SIZE, parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from tests.devserver import ThrowawayServer

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
    parser.add_argument("--naive-batch", type=int, default=10_000, help="0: skip the naive loop")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="single DELETE vs dbjobs on fresh tables, alternating who goes first",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="dbjobs' batch_size")
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync, synchronous_commit and full_page_writes on (default: off, as in a scratch cluster)",
    )
    parser.add_argument("--archive-rounds", type=int, default=3, help="0: skip archiving vs deleting")
    args = parser.parse_args()
    config = parse_config(
        {"jobs": {"bench": {"table": "t_dbjobs", "expires": "expires_at", "retain": "30 days",
                            "schedule": "@hourly", "batch_size": args.batch_size}}}
    )  # fmt: skip
    single = "DELETE FROM t_single WHERE expires_at < now() - interval '30 days'"

    with ThrowawayServer(cron_database="app", durable=args.durable) as pg:
        pg.create_pg_cron()
        dsn = pg.dsn("app")

        def fresh(*tables: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for table in tables:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                    conn.execute(TABLE.format(t=table, rows=args.rows))
                    conn.execute(f"VACUUM ANALYZE {table}")
                dbjobs.install(conn, config)

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(NAIVE)
        fsync = "on" if args.durable else "off"
        print(f"{pg.version()}; {args.rows:,} rows per table, half expired; "
              f"dbjobs batch_size {args.batch_size}; fsync {fsync}")  # fmt: skip

        ratios = []
        totals = {"single DELETE": 0.0, "dbjobs run_job": 0.0}
        for round_ in range(args.rounds):
            fresh("t_single", "t_dbjobs")
            contenders = [
                ("single DELETE", lambda c: c.execute(single)),
                ("dbjobs run_job", lambda c: c.execute("CALL dbjobs.run_job('bench', 'manual')")),
            ]
            if round_ % 2:  # alternate, so that neither always meets the other's leftovers
                contenders.reverse()
            results = {name: longest_transaction(dsn, work) for name, work in contenders}
            with psycopg.connect(dsn) as conn:
                left = [
                    conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("t_single", "t_dbjobs")
                ]  # type: ignore[index]
                strategy = conn.execute(
                    "SELECT strategy, largest_batch FROM dbjobs.run ORDER BY id DESC LIMIT 1"
                ).fetchone()
            assert left[0] == left[1], f"the cleanups left different row counts: {left}"
            baseline = results["single DELETE"][0]
            ratios.append(baseline / results["dbjobs run_job"][0])
            for name in totals:
                totals[name] += results[name][0]
            print(f"round {round_ + 1} (dbjobs strategy: {strategy[0] if strategy else '?'}, "
                  f"largest batch {strategy[1] if strategy else '?'} rows)")  # fmt: skip
            for name, (elapsed, longest) in results.items():
                ratio = baseline / elapsed
                print(f"  {name:<26} {elapsed:7.2f} s   throughput vs single DELETE {ratio:5.2f}x   "
                      f"longest transaction {longest:6.3f} s")  # fmt: skip

        if args.naive_batch:
            fresh("t_naive")
            elapsed, longest = longest_transaction(
                dsn, lambda c: c.execute("CALL naive_cleanup(%s)", [args.naive_batch])
            )
            naive = f"naive IN batches of {args.naive_batch}"
            print(f"{naive}: {elapsed:.2f} s, longest transaction {longest:.3f} s")
        # On a shared 2-core VM one round's times vary by ±30 %: judge the median and the totals.
        print(f"dbjobs throughput vs single DELETE: median {statistics.median(ratios):.2f}x "
              f"over {len(ratios)} rounds ({', '.join(f'{r:.2f}' for r in ratios)}); "
              f"total time {totals['single DELETE'] / totals['dbjobs run_job']:.2f}x")  # fmt: skip
        if args.archive_rounds:
            archive_cost(dsn, args.rows, args.batch_size, args.archive_rounds)


def archive_cost(dsn: str, rows: int, batch_size: int, rounds: int) -> None:
    """dbjobs deleting vs dbjobs archiving the same rows, alternating; time and WAL of each."""
    job = {"expires": "expires_at", "retain": "30 days", "schedule": "@hourly", "batch_size": batch_size}
    config = parse_config(
        {"jobs": {"deleting": {**job, "table": "t_deleting"},
                  "archiving": {**job, "table": "t_archiving", "archive": "archive.t_archiving"}}}
    )  # fmt: skip
    ratios = []
    for round_ in range(rounds):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS archive CASCADE; CREATE SCHEMA archive")
            for table in ("t_deleting", "t_archiving"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(TABLE.format(t=table, rows=rows))
                conn.execute(f"VACUUM ANALYZE {table}")
            dbjobs.install(conn, config)
        order = ["deleting", "archiving"][:: -1 if round_ % 2 else 1]
        results = {}
        for name in order:
            with psycopg.connect(dsn, autocommit=True) as conn:
                before = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
                elapsed, _ = longest_transaction(
                    dsn, lambda c, n=name: c.execute(f"CALL dbjobs.run_job('{n}')")
                )
                wal = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [before[0] if before else None]
                ).fetchone()
            results[name] = (elapsed, float(wal[0]) if wal else 0.0)
        with psycopg.connect(dsn) as conn:
            moved = conn.execute("SELECT count(*) FROM archive.t_archiving").fetchone()
            left = conn.execute(
                "SELECT (SELECT count(*) FROM t_deleting), (SELECT count(*) FROM t_archiving)"
            ).fetchone()
        assert left and left[0] == left[1] and moved and moved[0] == rows - left[0], "archiving lost rows"
        ratios.append(results["archiving"][0] / results["deleting"][0])
        print(f"archive round {round_ + 1}: " + "   ".join(
            f"{name} {elapsed:6.2f} s, WAL {wal / 2**20:7.1f} MiB" for name, (elapsed, wal) in results.items()
        ))  # fmt: skip
    print(f"archiving vs deleting: time median {statistics.median(ratios):.2f}x "
          f"over {len(ratios)} rounds ({', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
