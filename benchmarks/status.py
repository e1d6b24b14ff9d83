"""How much dbjobs.status() costs when pg_cron's history is large, with and without the backlog.

Starts a throwaway PostgreSQL with pg_cron, installs the four default jobs
(never run, the worst case for a per-job "latest run" lookup), fills
cron.job_run_details with --rows runs of another application's job, then times
dbjobs.status() in-process on an open connection, next to the naive
`GROUP BY jobid` over the history, in the same run.

Then the backlog: refresh_tokens gets --table-rows rows, half of them expired
(past the exact threshold: counted to it, then estimated), email_verifications a
tenth of that with 1,000 expired (counted exactly), and dbjobs.status(backlog=True)
is timed against dbjobs.status() again, alternating. Last, what a run pays to
record what it left (backlog_left, as finish_run calls it), against the run.

    .venv/bin/python benchmarks/status.py                 # 1,000,000 rows of history and of table
    .venv/bin/python benchmarks/status.py --rows 10000 --table-rows 20000    # a quick smoke run
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
from benchmarks.timing import summary, timings
from tests.devserver import ThrowawayServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAIVE = """
SELECT jobid, max(end_time) FILTER (WHERE status = 'succeeded'), max(end_time)
  FROM cron.job_run_details GROUP BY jobid
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of foreign history")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls of dbjobs.status()")
    parser.add_argument(
        "--table-rows", type=int, default=1_000_000, help="rows of refresh_tokens, half expired (backlog)"
    )
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
            backlog(conn, config, args)


def alternating(
    first: Callable[[], object], second: Callable[[], object], repeat: int
) -> tuple[list[float], list[float]]:
    """Timings of two calls taken in turn, so that both see the same server and caches."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat):
        a += timings(first, 1)
        b += timings(second, 1)
    return a, b


def backlog(conn: psycopg.Connection[object], config: dbjobs.Config, args: argparse.Namespace) -> None:
    rows = args.table_rows
    conn.execute(
        """
        INSERT INTO refresh_tokens (expires_at)
        SELECT now() - CASE WHEN i %% 2 = 0 THEN interval '60 days' ELSE interval '0' END
                     + (i %% 1000) * interval '1 second'
          FROM generate_series(1, %s) i
        """,
        [rows],
    )
    conn.execute(
        """
        INSERT INTO email_verifications (expires_at)
        SELECT now() + CASE WHEN i <= 1000 THEN - interval '2 days' ELSE interval '1 day' END
          FROM generate_series(1, %s) i
        """,
        [max(rows // 10, 1000)],
    )
    conn.execute("VACUUM ANALYZE refresh_tokens, email_verifications")
    report = dbjobs.status(conn, config, backlog=True)
    counted = ", ".join(
        f"{job.name} {job.backlog_rows} ({'exact' if job.backlog_exact else 'estimated'})"
        for job in report.jobs
        if job.backlog_rows
    )
    print(f"backlog: refresh_tokens {rows:,} rows, half expired; {counted}")
    plain, with_backlog = alternating(
        lambda: dbjobs.status(conn, config), lambda: dbjobs.status(conn, config, backlog=True), args.repeat
    )
    _, plain_p95 = summary("dbjobs.status()", plain)
    _, backlog_p95 = summary("status(backlog=True)", with_backlog)
    print(
        f"ratio: backlog p95 / status p95 = {backlog_p95 / plain_p95:.1f}x "
        f"(median {statistics.median(with_backlog) / statistics.median(plain):.1f}x)"
    )

    # What a run pays at its end to record what it left (finish_run calls
    # backlog_left), against the run, and against counting the rule's rows
    # below the cutoff instead (it walks the rows the run just deleted).
    started = time.perf_counter()
    conn.execute("CALL dbjobs.run_job('refresh_tokens', 'manual')")
    run_ms = (time.perf_counter() - started) * 1000
    [(recorded, cutoff)] = conn.execute(
        "SELECT backlog_after, cutoff FROM dbjobs.run WHERE job = 'refresh_tokens' ORDER BY id DESC LIMIT 1"
    ).fetchall()
    closing = statistics.median(
        timings(
            lambda: conn.execute("SELECT dbjobs.backlog_left('refresh_tokens', %s)", [cutoff]).fetchone(), 20
        )
    )
    full = statistics.median(
        timings(
            lambda: conn.execute(
                "SELECT (dbjobs.count_expired(j, now() - j.retain)).total FROM dbjobs.job j"
                " WHERE j.name = 'refresh_tokens'"
            ).fetchone(),
            5,
        )
    )
    print(
        f"backlog_left: median {closing:.2f} ms after a run that deleted {rows // 2:,} rows in "
        f"{run_ms:.0f} ms ({closing / run_ms:.2%} of it; recorded backlog_after {recorded}); "
        f"counting below the cutoff instead: {full:.2f} ms"
    )


if __name__ == "__main__":
    main()
