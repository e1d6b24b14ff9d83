"""`dbjobs watch`: events as they happen, to a webhook (a local HTTP server), across a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbjobs.config import Config
from dbjobs.watch import Listener, Webhook, describe, watch
from tests.conftest import AppDb
from tests.devserver import ThrowawayServer
from tests.faults import need_local_servers, restart, wait_for
from tests.test_events import CONFIG, TABLES

ROOT = Path(__file__).resolve().parent.parent


class Endpoint:
    """A local HTTP server that records each POSTed JSON body, answering each request with the
    next status of ``answers`` (then 200); ``gate``, while clear, holds every request."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.bodies: list[Any] = []
        self.requests = 0
        self.answers = list(answers or [])
        self.gate = threading.Event()
        self.gate.set()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                endpoint.gate.wait(30)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests += 1
                status = endpoint.answers.pop(0) if endpoint.answers else 200
                if status == 200:
                    assert self.headers["Content-Type"] == "application/json"
                    endpoint.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


class Watching:
    """``watch`` in a thread: the events it emitted, its warnings, its listeners."""

    def __init__(self, dsn: str, schema: str, webhook: Webhook | None, backoff: tuple[float, float]) -> None:
        self.events: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.listeners: list[Listener] = []
        self.stop = threading.Event()
        self.webhook = webhook

        def emit(event: dict[str, Any]) -> None:
            self.events.append(event)
            if webhook is not None:
                webhook.put(event)

        def run() -> None:
            watch(
                dsn, Config(jobs=(), schema=schema), emit, stop=self.stop, warn=self.warnings.append,
                backoff=backoff, started=self.listeners.extend,
            )  # fmt: skip

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_for(
            lambda: self.listeners and all(lis.connected.is_set() for lis in self.listeners), 15, "LISTEN"
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def warn_to(warnings: list[str]) -> Any:
    return warnings.append


def test_the_webhook_receives_exactly_the_events_of_a_scripted_sequence(
    app: AppDb, dbjobs_cli: Any, write_config: Any, endpoint: Endpoint
) -> None:
    app.execute(TABLES)
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    warnings: list[str] = []
    hook = Webhook(endpoint.url, warn=warn_to(warnings), backoff=(0.05, 0.5))
    watching = Watching(app.dsn, "dbjobs", hook, (0.2, 1.0))
    # pg_cron's database too, where pg_cron lives elsewhere (the maintenance job's events).
    assert len(watching.listeners) == (2 if app.layout == "separate" else 1)
    try:

        def run(job: str) -> None:
            dbjobs_cli("--dsn", app.dsn, "--config", config, "run", job)

        run("tokens")
        app.execute("INSERT INTO tokens VALUES (6, now() - interval '2 hours', 0)")
        run("tokens")
        with psycopg.connect(app.dsn, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(hashtext('dbjobs.run'), hashtext('tokens'))")
            run("tokens")
        run("sessions")
        wait_for(lambda: len(endpoint.bodies) >= 4, 15, "four events at the webhook")
        assert hook.close(5) == 0
    finally:
        watching.close()
    history = app.execute("SELECT id, job, status FROM dbjobs.run ORDER BY id")
    assert [(e["run_id"], e["job"], e["outcome"]) for e in endpoint.bodies] == [tuple(r) for r in history]
    assert [e["outcome"] for e in endpoint.bodies] == ["succeeded", "failed", "skipped", "partial"]
    assert endpoint.bodies == watching.events
    assert endpoint.requests == 4 and warnings == [] and watching.warnings == []
    # On a terminal: one readable line.
    assert re.fullmatch(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ {app.database}/tokens failed: 0 rows in \d+ ms "
        rf"\(manual, run {history[1][0]}\): division by zero",
        describe(watching.events[1]),
    ), describe(watching.events[1])


def test_the_webhook_retries_with_backoff_and_drops_the_oldest_when_its_queue_is_full() -> None:
    events = [{"database": "app", "job": "tokens", "run_id": n, "outcome": "failed"} for n in range(1, 5)]
    warnings: list[str] = []
    endpoint = Endpoint(answers=[503, 503])
    try:
        hook = Webhook(endpoint.url, queue_size=2, warn=warnings.append, backoff=(0.05, 0.2))
        hook.put(events[0])
        wait_for(lambda: endpoint.bodies, 10, "the event after two 503s")
        assert endpoint.bodies == [events[0]] and endpoint.requests == 3
        assert warnings == [
            "webhook: the endpoint answered HTTP 503; retrying with backoff",
            "webhook: delivered after 2 failed attempts",
        ]
        warnings.clear()
        endpoint.gate.clear()  # the endpoint hangs: event 2 is being sent, 3 and 4 wait, then 5...
        hook.put(events[1])
        wait_for(lambda: hook.waiting == 0, 5, "the webhook to take event 2")
        for event in events[2:]:
            hook.put(event)
        hook.put({**events[3], "run_id": 5})
        assert warnings == ["webhook queue full (2 events waiting): dropped the oldest (1 dropped so far)"]
        endpoint.gate.set()
        assert hook.close(10) == 0
        assert [e["run_id"] for e in endpoint.bodies] == [1, 2, 4, 5]
        assert (hook.sent, hook.dropped) == (4, 1)
        assert all("secret-token" not in w for w in warnings)
    finally:
        endpoint.close()

    # Refused (a 4xx other than 429): dropped at once, with a warning. Slack's format.
    endpoint = Endpoint(answers=[400])
    try:
        warnings.clear()
        hook = Webhook(endpoint.url, slack=True, warn=warnings.append, backoff=(0.05, 0.2))
        hook.put({**events[0], "rows_deleted": 0, "trigger": "manual", "error": "boom", "finished_at": "T"})
        hook.put(
            {**events[1], "outcome": "succeeded", "rows_deleted": 7, "trigger": "scheduled", "error": None}
        )
        assert hook.close(10) == 0
        assert warnings == ["webhook: the endpoint answered HTTP 400; the event was dropped"]
        assert endpoint.requests == 2
        assert endpoint.bodies == [
            {"text": ":white_check_mark: dbjobs app/tokens succeeded: 7 rows (scheduled, run 2)"}
        ]
    finally:
        endpoint.close()


def test_watch_reconnects_after_a_restart_and_reports_the_runs_it_missed(
    dbjobs_cli: Any, write_config: Any, endpoint: Endpoint
) -> None:
    """As a monitoring role: LISTEN needs nothing, the missed runs come from status_events."""
    need_local_servers()
    with ThrowawayServer(cron_database="app") as server:
        server.create_pg_cron()
        dsn = server.dsn("app")
        server.execute(TABLES, dbname="app")
        assert dbjobs_cli("--dsn", dsn, "--config", write_config(CONFIG), "install").code == 0
        server.execute(
            "CREATE ROLE watcher LOGIN; GRANT USAGE ON SCHEMA dbjobs TO watcher;"
            " GRANT EXECUTE ON FUNCTION dbjobs.status_events(timestamptz) TO watcher",
            dbname="app",
        )
        warnings: list[str] = []
        hook = Webhook(endpoint.url, warn=warnings.append, backoff=(0.05, 0.5))
        watching = Watching(server.dsn("app", user="watcher"), "dbjobs", hook, (0.2, 0.5))
        try:

            def run(job: str) -> None:
                dbjobs_cli("--dsn", dsn, "run", job)

            run("tokens")
            wait_for(lambda: watching.events, 10, "the first event")
            # Restarted, and kept out (NOLOGIN) while two runs end: it cannot hear them.
            server.execute("ALTER ROLE watcher NOLOGIN")
            restart(server, "fast")
            wait_for(
                lambda: any("reconnecting" in w for w in watching.warnings), 10, "a reconnection attempt"
            )
            run("sessions")
            server.execute("INSERT INTO tokens VALUES (6, now() - interval '2 hours', 0)", dbname="app")
            run("tokens")
            server.execute("ALTER ROLE watcher LOGIN")
            wait_for(lambda: len(watching.events) >= 3, 20, "the missed runs")
            run("sessions")
            wait_for(lambda: len(endpoint.bodies) >= 4, 15, "four events at the webhook")
            assert hook.close(5) == 0
        finally:
            watching.close()
        history = server_rows(server.dsn("app"), "SELECT id, job, status FROM dbjobs.run ORDER BY id")
    got = [(e["run_id"], e["job"], e["outcome"]) for e in watching.events]
    assert got == [tuple(r) for r in history]  # each once, in order
    assert [e["outcome"] for e in watching.events] == ["succeeded", "partial", "failed", "partial"]
    assert endpoint.bodies == watching.events
    assert "database 'app': 2 runs finished while disconnected (from the history)" in watching.warnings
    assert "database 'app': listening again" in watching.warnings


def server_rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


@contextmanager
def watching_process(
    app: AppDb, dbjobs_cli: Any, write_config: Any
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`dbjobs watch` as a process (JSON lines: its stdout is a pipe), once it LISTENs; with the
    configuration its jobs were installed from. Killed on the way out if still running."""
    app.execute(TABLES)
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "dbjobs", "--dsn", app.dsn, "watch"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            listening = "application_name = 'dbjobs watch' AND state = 'idle'"
            wait_for(lambda: app.count("pg_stat_activity", listening) > 0, 15, "dbjobs watch to LISTEN")
            yield proc, config
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_command_prints_json_lines_until_stopped(
    stop: signal.Signals, app_same: AppDb, dbjobs_cli: Any, write_config: Any
) -> None:
    with watching_process(app_same, dbjobs_cli, write_config) as (proc, config):
        dbjobs_cli("--dsn", app_same.dsn, "--config", config, "run", "tokens")
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        assert (event["job"], event["outcome"], event["rows_deleted"]) == ("tokens", "succeeded", 5)
        proc.send_signal(stop)
        proc.wait(10)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, stderr


def test_a_reader_that_goes_away_ends_watch_without_a_traceback(
    app_same: AppDb, dbjobs_cli: Any, write_config: Any
) -> None:
    """`dbjobs watch | head -1`: once the reader has gone, the next event ends watch quietly,
    with the exit status a shell gives a process that SIGPIPE ended."""
    with watching_process(app_same, dbjobs_cli, write_config) as (proc, config):
        assert proc.stdout is not None
        dbjobs_cli("--dsn", app_same.dsn, "--config", config, "run", "tokens")
        assert json.loads(proc.stdout.readline())["job"] == "tokens"
        proc.stdout.close()  # what `head -1` does after its line
        for _ in range(3):  # the first write after the close may still go into the pipe's buffer
            dbjobs_cli("--dsn", app_same.dsn, "--config", config, "run", "tokens")
        proc.wait(15)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 141 and "Traceback" not in stderr, stderr
