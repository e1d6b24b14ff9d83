"""Prerequisites and connections: one clear line, the documented exit code, nothing changed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import DEFAULT_TABLES, AppDb
from tests.devserver import free_port
from tests.servers import Server, local_server, source


@pytest.fixture(scope="module")
def server_without_pg_cron() -> Iterator[Server]:
    if source() != "local":
        pytest.skip("needs the local server binaries to start a server without pg_cron")
    with local_server("postgres", preload_pg_cron=False) as server:
        yield server


def test_no_pg_cron_is_a_clear_error(server_without_pg_cron: Server, dbjobs_cli) -> None:
    dsn = server_without_pg_cron.dsn
    from psycopg import connect

    with connect(dsn, autocommit=True) as conn:
        conn.execute(DEFAULT_TABLES)
    for argv in (["install"], ["install", "--dry-run"], ["status"]):
        result = dbjobs_cli("--dsn", dsn, *argv)
        assert result.code == 3, result
        [line] = result.err.splitlines()
        assert line.startswith("dbjobs: error: pg_cron is not installed")
        assert "shared_preload_libraries = 'pg_cron'" in line and "CREATE EXTENSION pg_cron" in line
    doctor = dbjobs_cli("--dsn", dsn, "doctor")
    assert doctor.code == 2
    assert "FAIL  pg_cron: pg_cron is not installed" in doctor.out
    # Nothing of dbjobs' to remove without pg_cron: uninstall is done (exit 0, as the README says).
    removed = dbjobs_cli("--dsn", dsn, "uninstall")
    assert (removed.code, removed.out) == (0, "nothing to remove: dbjobs is not installed\n")
    with connect(dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('dbjobs')").fetchone() == (None,)


def test_cron_dsn_pointing_at_a_database_without_pg_cron(
    app_separate: AppDb, dbjobs_cli, write_config
) -> None:
    app = app_separate
    app.execute(DEFAULT_TABLES)
    config = write_config(f"cron_dsn = {app.dsn!r}\n")
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    assert result.code == 3
    assert "pg_cron is not installed" in result.err
    assert "dbjobs" not in app.schemas()


def _dbjobs(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG")) and k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "dbjobs", *argv], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("command", [["install"], ["status"], ["run", "--all"], ["uninstall"]])
def test_unreachable_server_exits_3_quickly_without_the_password(command: list[str]) -> None:
    dsn = f"postgresql://app:sekrit-pw@127.0.0.1:{free_port()}/app"
    started = time.monotonic()
    result = _dbjobs("--dsn", dsn, *command)
    assert time.monotonic() - started < 10
    assert result.returncode == 3
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("dbjobs: error: cannot connect to 127.0.0.1:")
    assert "sekrit" not in result.stderr


def test_server_that_never_answers_times_out() -> None:
    """A port that accepts connections but never speaks: the connect timeout bounds the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        # No connect_timeout in the DSN: dbjobs' own default (5 s) applies, never libpq's "forever".
        result = _dbjobs("--dsn", f"host=127.0.0.1 port={port} dbname=app", "status")
        elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert 4 < elapsed < 9
    assert "cannot connect" in result.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=oops password=sekrit-pw bogus",
        "postgresql://app:sekrit%zzpw@127.0.0.1/app",  # libpq quotes the bad escape, password and all
        "postgresql://app:sekrit-pw@127.0.0.1:99999/app",
    ],
)
def test_invalid_dsn_is_one_line_without_the_password(dsn: str) -> None:
    result = _dbjobs("--dsn", dsn, "install")
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert "sekrit" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = _dbjobs("--debug", "--dsn", f"host=127.0.0.1 port={free_port()}", "install")
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_status_behind_a_lock_is_unknown_within_the_statement_timeout(
    app_separate: AppDb, dbjobs_cli
) -> None:
    app = app_separate
    app.execute(DEFAULT_TABLES)
    assert dbjobs_cli("--dsn", app.dsn, "install").code == 0
    with psycopg.connect(app.dsn) as blocker:
        blocker.execute("LOCK TABLE dbjobs.run IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = dbjobs_cli("--dsn", app.dsn, "status", "--format", "json")
        elapsed = time.monotonic() - started
    assert result.code == 3
    assert "statement timeout" in result.err
    assert elapsed < 5
    assert dbjobs_cli("--dsn", app.dsn, "status").code == 0


def test_status_gives_up_on_a_server_that_stalls_after_connecting(app_separate: AppDb) -> None:
    """A proxy passes the connection through, then swallows the first query: only dbjobs' own
    deadline can end the wait, since the server never sees the statement."""
    import threading

    host, port = "127.0.0.1", int(str(psycopg.conninfo.conninfo_to_dict(app_separate.dsn)["port"]))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket, client_side: bool) -> None:
        while not stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if client_side and data[:1].isalpha():  # a Query or Parse message: stall from here on
                stop.wait()
                return
            try:
                dst.sendall(data)
            except OSError:  # closed at the end of the test
                return

    opened: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((host, port))
            opened.extend((client, upstream))
            for src, dst, side in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=pipe, args=(src, dst, side), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        dsn = psycopg.conninfo.make_conninfo(
            app_separate.dsn, port=str(listener.getsockname()[1]), sslmode="disable"
        )
        started = time.monotonic()
        result = _dbjobs("--dsn", dsn, "status", "--timeout", "2", "--format", "prometheus")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
        for sock in opened:  # closed here, not by the garbage collector in a later test
            sock.close()
    assert result.returncode == 3
    assert result.stdout.strip().endswith("dbjobs_up 0.0")
    assert "no answer from 127.0.0.1" in result.stderr and "within 2 s" in result.stderr
    assert elapsed < 6
