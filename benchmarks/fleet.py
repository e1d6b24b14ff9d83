"""How long status takes over many databases of one server, read in parallel, against one by one.

Starts a throwaway PostgreSQL with pg_cron, creates --databases application
databases with the default tables and installs dbjobs in each (its jobs
registered in pg_cron), then times, in the same run and in alternating order:
dbjobs.fleet.read_all() over all of them (a thread and a connection each, one
deadline), and dbjobs.health.read_status() called once per database, one after
another (what a loop over `dbjobs status` does, minus starting Python). Both
connect, read and disconnect every time, as `dbjobs status` does.

    .venv/bin/python benchmarks/fleet.py                       # 50 databases, 5 rounds
    .venv/bin/python benchmarks/fleet.py --databases 3 --rounds 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from dbjobs import fleet
from dbjobs.config import Config, Database, parse_config
from dbjobs.health import read_status
from dbjobs.install import install
from tests.devserver import ThrowawayServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=50, help="application databases on the server")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each way")
    args = parser.parse_args()
    n = args.databases

    # Each status opens a connection (two where pg_cron lives in another database).
    with ThrowawayServer(settings={"max_connections": str(2 * n + 20)}) as pg:
        pg.create_pg_cron()
        pg.create_database("template_app")
        with psycopg.connect(pg.dsn("template_app"), autocommit=True) as conn:
            conn.execute((EXAMPLES / "backend_tables.sql").read_text())
            conn.execute((EXAMPLES / "backend_sample_rows.sql").read_text())
        config = parse_config({})  # the four default jobs
        databases = []
        for i in range(n):
            name = f"app{i:02d}"
            pg.create_database(name, template="template_app")
            with psycopg.connect(pg.dsn(name)) as conn:
                install(conn, config)
            databases.append(Database(name, pg.dsn(name)))
        print(f"{n} databases on one local server (PostgreSQL + pg_cron), 4 jobs each; {args.rounds} rounds")

        def parallel() -> float:
            started = time.perf_counter()
            readings = fleet.read_all(databases, Config(jobs=()), deadline=60)
            took = time.perf_counter() - started
            assert all(r.report is not None for r in readings), [r.error for r in readings if r.error]
            return took

        def sequential() -> float:
            started = time.perf_counter()
            for database in databases:
                read_status(database.dsn, Config(jobs=()), deadline=60)
            return time.perf_counter() - started

        parallel(), sequential()  # warm up: the first connection to each database loads its catalog
        times: dict[str, list[float]] = {"parallel": [], "sequential": []}
        for i in range(args.rounds):
            order = ("parallel", "sequential") if i % 2 == 0 else ("sequential", "parallel")
            for way in order:
                times[way].append(parallel() if way == "parallel" else sequential())
        for way, label in (
            ("parallel", "fleet.read_all (parallel)"),
            ("sequential", f"{n} sequential calls"),
        ):
            median = statistics.median(times[way])
            print(
                f"{label:<28} total median {median * 1000:8.1f} ms  "
                f"(min {min(times[way]) * 1000:.1f}, max {max(times[way]) * 1000:.1f})  "
                f"per database {median * 1000 / n:6.1f} ms"
            )
        ratio = statistics.median(times["sequential"]) / statistics.median(times["parallel"])
        print(f"ratio: sequential / parallel = {ratio:.2f}x")


if __name__ == "__main__":
    main()
