"""A range-partitioned table: dropping partitions past retention against deleting their rows.

Builds identical tables range-partitioned on expires_at (10-day partitions from 130
days ago to 70 days ahead, plus a default one; uuid primary key, an index on
expires_at, expiry spread evenly over [-120, +60) days), keeps 35 days: nine
partitions lie wholly past the cutoff and one holds it. Then, in one run, on a fresh
table each:

* baseline: one `DELETE FROM t WHERE expires_at < cutoff` (one long transaction);
* dbjobs, `partitions = "delete"`: every expired row deleted in batches;
* dbjobs, `partitions = "drop"` (the default): the nine partitions dropped, the
  boundary partition cleaned in batches.

Prints each one's time, its throughput relative to the single DELETE, its longest
transaction, and the WAL it wrote.

    .venv/bin/python benchmarks/partitions.py                 # 2,000,000 rows
    .venv/bin/python benchmarks/partitions.py --rows 20000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg
from cleanup import longest_transaction

import dbjobs
from dbjobs.config import parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from tests.devserver import ThrowawayServer

TABLE = """
CREATE TABLE {t} (
    id uuid NOT NULL DEFAULT gen_random_uuid(), expires_at timestamptz NOT NULL, payload text,
    PRIMARY KEY (id, expires_at)
) PARTITION BY RANGE (expires_at);
CREATE TABLE {t}_default PARTITION OF {t} DEFAULT;
DO $$
BEGIN
    FOR d IN -130..60 BY 10 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF {t} FOR VALUES FROM (%L) TO (%L)',
                       '{t}_' || (d + 130) / 10, {ref}::timestamptz + d * interval '1 day',
                       {ref}::timestamptz + (d + 10) * interval '1 day');
    END LOOP;
END $$;
INSERT INTO {t} (expires_at, payload)
-- Half a day off whole days: the cutoff does not meet any row while the benchmark runs.
SELECT {ref}::timestamptz - interval '120 days' + (i % 180) * interval '1 day' + interval '12 hours'
       + (i % 1000) * interval '1 second',
       repeat('x', 60)
  FROM generate_series(1, {rows}) i;
CREATE INDEX ON {t} (expires_at);
"""
RULE = "expires_at < now() - interval '35 days'"
TABLES = ("t_single", "t_rows", "t_drop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per table")
    args = parser.parse_args()
    job = {"expires": "expires_at", "retain": "35 days", "schedule": "@hourly"}
    config = parse_config(
        {
            "jobs": {
                "rows": {**job, "table": "t_rows", "partitions": "delete"},
                "drop": {**job, "table": "t_drop"},
            }
        }
    )

    with ThrowawayServer(cron_database="app") as pg:
        pg.create_pg_cron()
        dsn = pg.dsn("app")
        with psycopg.connect(dsn, autocommit=True) as conn:
            ref = conn.execute("SELECT quote_literal(now())").fetchone()[0]  # type: ignore[index]
            for table in TABLES:
                conn.execute(TABLE.format(t=table, rows=args.rows, ref=ref))
                conn.execute(f"VACUUM ANALYZE {table}")
            dbjobs.install(conn, config)
            expired = conn.execute(f"SELECT count(*) FROM t_single WHERE {RULE}").fetchone()[0]  # type: ignore[index]
        print(f"{pg.version()}; {args.rows:,} rows per table in 20 partitions + default, "
              f"{expired:,} expired (9 partitions wholly); fsync off")  # fmt: skip

        contenders = {
            "single DELETE": f"DELETE FROM t_single WHERE {RULE}",
            'dbjobs, partitions "delete"': "CALL dbjobs.run_job('rows', 'manual')",
            'dbjobs, partitions "drop"': "CALL dbjobs.run_job('drop', 'manual')",
        }
        baseline = None
        for name, command in contenders.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            elapsed, longest = longest_transaction(dsn, lambda c, command=command: c.execute(command))
            with psycopg.connect(dsn, autocommit=True) as conn:
                wal = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [wal_before]
                ).fetchone()[0]  # type: ignore[index]
            baseline = baseline or elapsed
            print(f"  {name:<28} {elapsed:7.2f} s   throughput vs single DELETE {baseline / elapsed:6.2f}x   "
                  f"longest transaction {longest:6.3f} s   WAL {wal / 2**20:7.1f} MB")  # fmt: skip

        with psycopg.connect(dsn) as conn:
            left = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]  # type: ignore[index]
            runs = conn.execute(
                "SELECT job, rows_deleted, partitions_removed, partition_rows FROM dbjobs.run ORDER BY id"
            ).fetchall()
        assert len(set(left)) == 1, f"the cleanups left different row counts: {left}"
        # Rows deleted, plus the rows of the removed partitions as the statistics know them.
        assert all(abs(rows + estimated - expired) <= 0.01 * expired for _, rows, _, estimated in runs), runs
        summary = ", ".join(
            f"dbjobs {job}: {rows:,} rows deleted, {removed} partitions of about {estimated:,} rows removed"
            for job, rows, removed, estimated in runs
        )
        print(f"rows left in each table: {left[0]:,}; {summary}")


if __name__ == "__main__":
    main()
