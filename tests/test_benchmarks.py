"""The benchmarks keep working: each runs at a small size (its timings are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(name: str, *args: str) -> list[str]:
    """The lines a benchmark prints, after checking it exited cleanly."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_status_benchmark_smoke() -> None:
    lines = bench("status.py", "--rows", "5000", "--repeat", "20", "--table-rows", "30000")
    assert "5,000 rows of another job" in lines[0]
    assert lines[1].startswith("dbjobs.status()") and "p95" in lines[1]
    assert lines[2].startswith("naive GROUP BY jobid")
    assert lines[3].startswith("ratio: naive p95 / status p95 = ")
    # With the backlog: 15,000 expired rows are past the exact threshold, 1,000 are not.
    assert lines[4].startswith("backlog: refresh_tokens 30,000 rows, half expired; ")
    assert "email_verifications 1000 (exact)" in lines[4] and "(estimated)" in lines[4]
    assert [line.split()[0] for line in lines[5:7]] == ["dbjobs.status()", "status(backlog=True)"]
    assert lines[7].startswith("ratio: backlog p95 / status p95 = ")
    assert lines[8].startswith("backlog_left: median ") and "recorded backlog_after 0);" in lines[8]


def test_cleanup_benchmark_smoke() -> None:
    lines = bench(
        "cleanup.py", "--rows", "20000", "--naive-batch", "2000", "--rounds", "2", "--archive-rounds", "2"
    )
    assert "20,000 rows per table, half expired" in lines[0]
    assert lines[1].startswith("round 1 (dbjobs strategy: sweep")
    assert [line.split()[0] for line in lines[2:4]] == ["single", "dbjobs"]
    assert lines[4].startswith("round 2")
    assert [line.split()[0] for line in lines[5:7]] == ["dbjobs", "single"]  # alternated
    assert all(
        "throughput vs single DELETE" in line and "longest transaction" in line
        for line in lines[2:7:1]
        if line.startswith("  ")
    )
    assert lines[-3].startswith("archive round 1: deleting ") and " archiving " in lines[-3]
    assert lines[-2].startswith("archive round 2: archiving ") and "MiB" in lines[-2]
    assert lines[-1].startswith("archiving vs deleting: time median ") and "over 2 rounds" in lines[-1]
    assert lines[7].startswith("naive IN batches of 2000: ")
    assert lines[8].startswith("dbjobs throughput vs single DELETE: median ") and "over 2 rounds" in lines[8]


def test_contention_benchmark_smoke() -> None:
    lines = bench("contention.py", "--rows", "20000", "--seconds", "2")
    assert "20,000 rows, half expired" in lines[0]
    assert [line[:16].strip() for line in lines[1:5]] == [
        "idle",
        "dbjobs cleanup",
        "dbjobs paced",
        "single DELETE",
    ]
    assert all(" p50 " in line for line in lines[1:5])
    assert all("cleanup took" in line and "x idle" in line for line in lines[2:5])
    assert lines[5].startswith("paced: batch_pause = '100 ms'; load average ")


def test_partitions_benchmark_smoke() -> None:
    lines = bench("partitions.py", "--rows", "20000")
    assert "20,000 rows per table in 20 partitions" in lines[0]
    assert [line[:30].strip() for line in lines[1:4]] == [
        "single DELETE",
        'dbjobs, partitions "delete"',
        'dbjobs, partitions "drop"',
    ]
    assert all("throughput vs single DELETE" in line and "WAL" in line for line in lines[1:4])
    assert "9 partitions of about" in lines[4]


def test_contention_benchmark_partitioned_smoke() -> None:
    lines = bench("contention.py", "--rows", "20000", "--seconds", "2", "--partitioned")
    assert "range-partitioned, the expired half in 10 partitions" in lines[0]
    assert lines[2].startswith("dbjobs cleanup") and lines[2].endswith("10 partitions dropped")
    assert lines[3].startswith("dbjobs paced") and lines[3].endswith("10 partitions dropped")


def test_cli_benchmark_smoke() -> None:
    lines = bench("cli.py", "--repeat", "2")
    assert lines[0] == "2 runs of each, alternating; medians:"
    assert [line[:36].strip() for line in lines[1:4]] == [
        "python -c 'import psycopg'",
        "dbjobs status",
        "dbjobs status --format prometheus",
    ]
    assert lines[4].startswith("ratio: dbjobs status / import psycopg = ")


def test_fleet_benchmark_smoke() -> None:
    lines = bench("fleet.py", "--databases", "3", "--rounds", "1")
    assert lines[0].startswith("3 databases on one local server")
    assert lines[1].startswith("fleet.read_all (parallel)") and "per database" in lines[1]
    assert lines[2].startswith("3 sequential calls") and "per database" in lines[2]
    assert lines[3].startswith("ratio: sequential / parallel = ")


def test_retry_benchmark_smoke() -> None:
    lines = bench("retry.py", "--rows", "4000", "--repeat", "20")
    assert "4,001 runs of 4 jobs" in lines[0]
    assert lines[1].startswith("CALL retry_due() (nothing due)") and "p95" in lines[1]
    assert lines[3].startswith("the same check, JIT allowed")
    assert lines[4].startswith("ratio: retry_due p95 / empty CALL p95 = ")
