"""The README's demo: dbjobs on a throwaway local PostgreSQL with pg_cron.

Creates the four tables of the default jobs with sample rows, then runs
`dbjobs install`, `dbjobs run --all` and `dbjobs status`, printing each command
and its output. The demo's configuration (demo.toml) cleans login_attempts
every minute: with --keep, the demo waits for pg_cron's first scheduled run of
it (about a minute), shows it in `dbjobs status`, and leaves the server up so
that you can watch pg_cron run the jobs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from tests.devserver import ThrowawayServer

HERE = Path(__file__).resolve().parent


def dbjobs(dsn: str, *argv: str, cwd: Path | None = None) -> None:
    print(f"\n$ dbjobs {' '.join(argv)}", flush=True)
    env = {**os.environ, "DBJOBS_DSN": dsn}
    result = subprocess.run([sys.executable, "-m", "dbjobs", *argv], env=env, cwd=cwd, check=False)
    if result.returncode not in (0, 1):
        raise SystemExit(f"dbjobs {argv[0]} exited with {result.returncode}")


def wait_for_scheduled_run(dsn: str, job: str, timeout: float = 90) -> bool:
    """Until pg_cron has run ``job`` on its own (dbjobs records it as trigger 'scheduled')."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM dbjobs.run WHERE job = %s AND trigger = 'scheduled'"
                " AND status <> 'running'",
                [job],
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(1)
    return False


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

        config = str(HERE / "demo.toml")
        dbjobs(dsn, "doctor", "--config", config)
        dbjobs(dsn, "install", "--config", config)
        dbjobs(dsn, "install", "--config", config)  # idempotent: nothing to change
        dbjobs(dsn, "run", "--all")
        # Status reads the jobs installed in the database: no configuration is needed where it runs.
        dbjobs(dsn, "status", cwd=Path(tempfile.gettempdir()))
        print("\n$ psql -c 'SELECT jobid, jobname, schedule, command FROM cron.job'")
        with psycopg.connect(dsn) as conn:
            for jobid, jobname, schedule, command in conn.execute(
                "SELECT jobid, jobname, schedule, command FROM cron.job ORDER BY jobid"
            ):
                first = command.splitlines()[0]  # the maintenance job's SQL spans many lines
                print(f"   {jobid} {jobname} '{schedule}' {first}{' ...' if first != command else ''}")
        if args.keep:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO login_attempts (created_at)"
                    " SELECT now() - interval '8 days' FROM generate_series(1, 250)"
                )
            print(
                "\n250 more login attempts expired 8 days ago. pg_cron runs login_attempts every minute "
                "(schedule '* * * * *'): waiting for its first scheduled run...",
                flush=True,
            )
            if wait_for_scheduled_run(dsn, "login_attempts"):
                dbjobs(dsn, "status", cwd=Path(tempfile.gettempdir()))
            else:
                print("pg_cron has not run it within 90 s: see `dbjobs doctor`")
    finally:
        if args.keep:
            print(
                f"\nThe server keeps running. Watch pg_cron at work:\n"
                f"  watch -n 10 \"DBJOBS_DSN='{server.dsn('app')}' .venv/bin/dbjobs status\""
            )
            print(f"Stop it with: {server.stop_command()}")
        else:
            server.stop()
            print("\nThe throwaway server is stopped and removed.")


if __name__ == "__main__":
    main()
