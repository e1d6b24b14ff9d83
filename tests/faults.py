"""Helpers for the fault tests: restarting, promoting and waiting on throwaway servers."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.devserver import ThrowawayServer, _as_server_user
from tests.servers import source


def need_local_servers() -> None:
    if source() != "local":
        pytest.skip("needs the local server binaries to start servers of its own")


def pg_ctl(server: ThrowawayServer, *args: str) -> None:
    command = [str(server.bindir / "pg_ctl"), "-D", str(server.datadir), *args]
    subprocess.run(_as_server_user(command), check=True, capture_output=True, timeout=60)


def restart(server: ThrowawayServer, mode: str) -> None:
    """Stop the server with ``pg_ctl stop -m <mode>`` (fast: backends are terminated, a clean
    shutdown; immediate: the postmaster and every backend quit at once, crash recovery follows),
    then start it again on the same data directory."""
    pg_ctl(server, "-m", mode, "-w", "stop")
    assert server._proc is not None
    server._proc.wait(timeout=30)
    server._launch()
    server._wait_ready()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description else []


def scheduler_up(server: ThrowawayServer) -> bool:
    rows = query(
        server.dsn(),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_cron scheduler'",
    )
    return bool(rows[0][0])


def wait_replayed(primary: ThrowawayServer, standby: ThrowawayServer, timeout: float = 30) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    [(target,)] = query(primary.dsn(), "SELECT pg_current_wal_lsn()::text")
    wait_for(
        lambda: query(standby.dsn(), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])[0][0],
        timeout,
        "the standby to catch up",
    )


def status_json(dbjobs_cli: Any, dsn: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = dbjobs_cli("--dsn", dsn, *args, "status", "--format", "json")
    return result.code, json.loads(result.out)


def jobs_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in report["jobs"]}
