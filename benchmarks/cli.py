"""How long `dbjobs status` takes as a whole process, next to `python -c "import psycopg"`.

A monitor or a probe may run the command every few seconds: most of its time
is Python starting and importing, so the baseline is the least any psycopg
program pays. Starts a throwaway PostgreSQL with pg_cron, installs the four
default jobs, then times both commands alternately, in the same run.

    .venv/bin/python benchmarks/cli.py              # 20 runs of each
    .venv/bin/python benchmarks/cli.py --repeat 3   # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.devserver
from tests.devserver import ThrowawayServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DBJOBS = str(Path(sys.executable).parent / "dbjobs")


def elapsed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each command")
    args = parser.parse_args()

    with ThrowawayServer(cron_database="app") as pg:
        pg.create_pg_cron()
        dsn = pg.dsn("app")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "backend_tables.sql").read_text())
        env = {**os.environ, "DBJOBS_DSN": dsn}
        subprocess.run([DBJOBS, "install"], env=env, check=True, stdout=subprocess.DEVNULL)
        commands = {
            "python -c 'import psycopg'": [sys.executable, "-c", "import psycopg"],
            "dbjobs status": [DBJOBS, "status"],
            "dbjobs status --format prometheus": [DBJOBS, "status", "--format", "prometheus"],
        }
        for argv in commands.values():
            elapsed(argv, env)  # warm the file cache
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                samples[name].append(elapsed(argv, env))
    medians = {name: statistics.median(times) * 1000 for name, times in samples.items()}
    baseline = medians["python -c 'import psycopg'"]
    print(f"{args.repeat} runs of each, alternating; medians:")
    for name, median in medians.items():
        print(f"{name:<36} {median:7.1f} ms   {median / baseline:4.2f}x")
    ratio = medians["dbjobs status"] / baseline
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"ratio: dbjobs status / import psycopg = {ratio:.2f}x (target: within 1.5x: {verdict})")


if __name__ == "__main__":
    main()
