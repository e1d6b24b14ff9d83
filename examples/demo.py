"""The README's demo: dbjobs on a throwaway local PostgreSQL with pg_cron.

Creates the four tables of the default jobs with sample rows, then runs
`dbjobs install`, `dbjobs run --all` and `dbjobs status`, printing each command
and its output. With --keep, the server stays up so that you can watch pg_cron
run the jobs on schedule (`dbjobs status` again in a few minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import psycopg

from dbjobs.devserver import ThrowawayServer

HERE = Path(__file__).resolve().parent


def dbjobs(dsn: str, *argv: str) -> None:
    print(f"\n$ dbjobs {' '.join(argv)}", flush=True)
    env = {**os.environ, "DBJOBS_DSN": dsn}
    result = subprocess.run([sys.executable, "-m", "dbjobs", *argv], env=env, check=False)
    if result.returncode not in (0, 1):
        raise SystemExit(f"dbjobs {argv[0]} exited with {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the server running afterwards")
    args = parser.parse_args()

    server = ThrowawayServer(cron_database="app").start()
    try:
        server.create_pg_cron()
        dsn = server.dsn("app")
        print(f"A throwaway {server.version()} is listening: {dsn}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((HERE / "backend_tables.sql").read_text())
            conn.execute((HERE / "backend_sample_rows.sql").read_text())
            counts = {
                table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for table in ("refresh_tokens", "email_verifications", "password_resets", "login_attempts")
            }
        print("Sample rows: " + ", ".join(f"{t} {n}" for t, n in counts.items()))

        dbjobs(dsn, "doctor")
        dbjobs(dsn, "install")
        dbjobs(dsn, "install")  # idempotent: nothing to change
        dbjobs(dsn, "run", "--all")
        dbjobs(dsn, "status")
        print("\n$ psql -c 'SELECT jobid, jobname, schedule, command FROM cron.job'")
        with psycopg.connect(dsn) as conn:
            for row in conn.execute("SELECT jobid, jobname, schedule, command FROM cron.job ORDER BY jobid"):
                print("  ", *row)
    finally:
        if args.keep:
            print(
                f"\nThe server keeps running. Try: DBJOBS_DSN='{server.dsn('app')}' .venv/bin/dbjobs status"
            )
            print(f"Stop it with: {server.stop_command()}")
        else:
            server.stop()
            print("\nThe throwaway server is stopped and removed.")


if __name__ == "__main__":
    main()
