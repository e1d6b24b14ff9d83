"""How much dbjobs.status() costs when pg_cron's history is large.

Starts a throwaway PostgreSQL with pg_cron, installs the four default jobs
(never run, the worst case for a per-job "latest run" lookup), fills
cron.job_run_details with --rows runs of another application's job, then times
dbjobs.status() in-process on an open connection, next to the naive
`GROUP BY jobid` over the history, in the same run.

    .venv/bin/python benchmarks/status.py                 # 1,000,000 rows
    .venv/bin/python benchmarks/status.py --rows 10000    # a quick smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

import dbjobs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from tests.devserver import ThrowawayServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAIVE = """
SELECT jobid, max(end_time) FILTER (WHERE status = 'succeeded'), max(end_time)
  FROM cron.job_run_details GROUP BY jobid
"""


def timings(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm the caches and plans
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(name: str, samples: list[float]) -> tuple[float, float]:
    median = statistics.median(samples)
    p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) >= 20 else max(samples)
    print(f"{name:<28} median {median:8.2f} ms   p95 {p95:8.2f} ms   ({len(samples)} runs)")
    return median, p95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of foreign history")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls of dbjobs.status()")
    args = parser.parse_args()

    with ThrowawayServer(cron_database="app") as pg:
        pg.create_pg_cron()
        dsn = pg.dsn("app")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "backend_tables.sql").read_text())
            config = dbjobs.load_config(environ={})
            dbjobs.install(conn, config)
            conn.execute("SELECT cron.schedule('other-app-job', '* * * * *', 'SELECT 1')")
            conn.execute(
                """
                INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,
                                                  return_message, start_time, end_time)
                SELECT j.jobid, nextval('cron.runid_seq'), 1000 + i %% 30000, 'app', 'postgres', 'SELECT 1',
                       CASE WHEN i %% 50 = 0 THEN 'failed' ELSE 'succeeded' END, 'SELECT 1',
                       now() - (%s - i) * interval '1 minute',
                       now() - (%s - i) * interval '1 minute' + interval '5 ms'
                  FROM cron.job j, generate_series(1, %s) i
                 WHERE j.jobname = 'other-app-job'
                """,
                [args.rows, args.rows, args.rows],
            )
            conn.execute("VACUUM ANALYZE cron.job_run_details")
            print(
                f"{pg.version()}; cron.job_run_details: {args.rows:,} rows of another job; "
                f"{len(config.jobs)} dbjobs jobs that never ran"
            )

            status_ms = timings(lambda: dbjobs.status(conn, config), args.repeat)
            naive_ms = timings(lambda: conn.execute(NAIVE).fetchall(), max(5, args.repeat // 10))
            _, status_p95 = summary("dbjobs.status()", status_ms)
            _, naive_p95 = summary("naive GROUP BY jobid", naive_ms)
            print(
                f"ratio: naive p95 / status p95 = {naive_p95 / status_p95:.1f}x "
                f"(target: status p95 under 5 ms: {'met' if status_p95 < 5 else 'NOT met'})"
            )


if __name__ == "__main__":
    main()
