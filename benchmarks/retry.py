"""What dbjobs' retry job costs each minute when nothing is due.

Starts a throwaway PostgreSQL with pg_cron, installs four jobs with
retry_after, fills dbjobs' history with --rows runs (the latest run of one job
a failure whose retry is not due yet), then times `CALL retry_due()` (what
pg_cron runs every minute) on an open connection, next to a `CALL` of an empty
procedure (the cost of any call: the baseline) and to the same check with JIT
allowed (what retries() cost before it pinned jit = off), in the same run.

    .venv/bin/python benchmarks/retry.py                 # 1,000,000 runs
    .venv/bin/python benchmarks/retry.py --rows 10000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import psycopg

import dbjobs
from dbjobs.config import parse_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from benchmarks.timing import summary, timings
from tests.devserver import ThrowawayServer

JOB = '[jobs.{name}]\ntable = "sessions"\nexpires = "expires_at"\nretain = "1 day"\nschedule = "0 3 * * *"\n'
CONFIG = 'retry_after = "5 minutes"\n' + "".join(JOB.format(name=name) for name in "abcd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="runs of history, over the four jobs")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls")
    args = parser.parse_args()

    with ThrowawayServer(cron_database="app") as pg:
        pg.create_pg_cron()
        with psycopg.connect(pg.dsn("app"), autocommit=True) as conn:
            conn.execute("CREATE TABLE sessions (id int PRIMARY KEY, expires_at timestamptz)")
            config = parse_config(tomllib.loads(CONFIG), source="benchmark")
            dbjobs.install(conn, config)
            conn.execute(
                """
                INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at)
                SELECT j, 'scheduled', 'succeeded', now() - i * interval '1 minute',
                       now() - i * interval '1 minute' + interval '5 ms'
                  FROM unnest(ARRAY['a', 'b', 'c', 'd']) j, generate_series(%s, 1, -1) i
                """,
                [args.rows // 4],
            )
            conn.execute(
                "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at)"
                " VALUES ('d', 'scheduled', 'failed', now(), now())"
            )
            conn.execute("VACUUM ANALYZE dbjobs.run")
            conn.execute("CREATE PROCEDURE public.nothing() LANGUAGE plpgsql AS $$ BEGIN END $$")
            print(
                f"{pg.version()}; dbjobs.run: {args.rows // 4 * 4 + 1:,} runs of 4 jobs; "
                "one retry not yet due"
            )

            retry_ms = timings(lambda: conn.execute("CALL dbjobs.retry_due()"), args.repeat)
            empty_ms = timings(lambda: conn.execute("CALL public.nothing()"), args.repeat)
            # retries() without its jit = off: the same query, JIT allowed as the server's defaults say.
            query = conn.execute(
                "SELECT substring(prosrc FROM 'RETURN QUERY(.*);\\s*END')"
                " FROM pg_proc WHERE proname = 'retries'"
            ).fetchone()
            assert query is not None and query[0]
            conn.execute("SET jit = on")
            jit_ms = timings(lambda: conn.execute(query[0]).fetchall(), max(5, args.repeat // 10))
            _, retry_p95 = summary("CALL retry_due() (nothing due)", retry_ms, width=36)
            _, empty_p95 = summary("CALL of an empty procedure", empty_ms, width=36)
            _, jit_p95 = summary("the same check, JIT allowed", jit_ms, width=36)
            print(
                f"ratio: retry_due p95 / empty CALL p95 = {retry_p95 / empty_p95:.1f}x; "
                f"JIT allowed p95 / retry_due p95 = {jit_p95 / retry_p95:.1f}x"
            )


if __name__ == "__main__":
    main()
