"""Every status format, read back by its own parser; the readiness helper over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb
from tests.devserver import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ran(app_separate: AppDb, dbjobs_cli) -> AppDb:
    """Default jobs installed and run once; refresh_tokens then made to fail."""
    app_separate.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    assert dbjobs_cli("--dsn", app_separate.dsn, "install").code == 0
    assert dbjobs_cli("--dsn", app_separate.dsn, "run", "--all").code == 0
    app_separate.execute("ALTER TABLE refresh_tokens RENAME COLUMN expires_at TO gone")
    assert dbjobs_cli("--dsn", app_separate.dsn, "run", "refresh_tokens").code == 1
    return app_separate


def metrics(text: str) -> dict[tuple[str, str | None], float]:
    return {
        (sample.name, sample.labels.get("job")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus(ran: AppDb, dbjobs_cli) -> None:
    result = dbjobs_cli("--dsn", ran.dsn, "status", "--format", "prometheus")
    assert result.code == 1  # warn: one job failing
    values = metrics(result.out)
    assert values[("dbjobs_up", None)] == 1
    assert values[("dbjobs_scheduler_running", None)] == 1
    assert values[("dbjobs_job_failing", "refresh_tokens")] == 1
    assert values[("dbjobs_job_failing", "login_attempts")] == 0
    assert values[("dbjobs_job_stale", "login_attempts")] == 0
    assert values[("dbjobs_job_last_rows_deleted", "email_verifications")] == 3
    assert values[("dbjobs_job_last_rows_deleted", "refresh_tokens")] == 0
    assert 0 < values[("dbjobs_job_last_duration_seconds", "login_attempts")] < 10
    success = values[("dbjobs_job_last_success_timestamp_seconds", "login_attempts")]
    assert abs(success - time.time()) < 300
    assert values[("dbjobs_job_last_run_timestamp_seconds", "refresh_tokens")] >= success - 300


def test_prometheus_when_the_database_is_unreachable(dbjobs_cli) -> None:
    port = free_port()
    result = dbjobs_cli("--dsn", f"host=127.0.0.1 port={port}", "status", "--format", "prometheus")
    assert result.code == 3
    assert metrics(result.out) == {("dbjobs_up", None): 0}


def test_health_json(ran: AppDb, dbjobs_cli) -> None:
    result = dbjobs_cli("--dsn", ran.dsn, "status", "--format", "health")
    assert result.code == 1
    document = json.loads(result.out)
    assert document["status"] == "warn"
    checks = document["checks"]
    assert checks["pg_cron:scheduler"][0]["status"] == "pass"
    failing = checks["refresh_tokens:last_success"][0]
    assert (failing["componentId"], failing["status"]) == ("refresh_tokens", "warn")
    assert 0 <= failing["observedValue"] < 300 and failing["observedUnit"] == "s"  # it succeeded once
    assert "does not exist" in failing["output"]
    assert "refresh_tokens" in document["output"]
    assert checks["login_attempts:last_success"][0]["status"] == "pass"
    for entries in checks.values():
        for entry in entries:
            assert entry["status"] in ("pass", "warn", "fail")
            assert entry["time"].endswith("Z")


def test_text_has_colour_only_when_asked(ran: AppDb, dbjobs_cli) -> None:
    from dbjobs import formats, status
    from dbjobs.config import load_config

    plain = dbjobs_cli("--dsn", ran.dsn, "status").out  # not a terminal
    assert "\033[" not in plain
    assert "refresh_tokens       failing" in plain
    assert 'refresh_tokens: column "expires_at" does not exist' in plain
    import psycopg

    with psycopg.connect(ran.dsn) as conn:
        report = status(conn, load_config(environ={}))
    assert "\033[33mfailing" in formats.as_text(report, colour=True)


def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbjobs.formats import use_colour

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Terminal())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())  # type: ignore[arg-type]


def _get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.loads(error.read())


@pytest.mark.parametrize("reachable", [True, False])
def test_example_app_answers_ready_over_http(ran: AppDb, tmp_path: Path, reachable: bool) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG"))}
    env["DBJOBS_DSN"] = ran.dsn if reachable else f"host=127.0.0.1 port={free_port()} dbname=x"
    with subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "ready_app.py"), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as app:
        try:
            assert app.stdout is not None and "listening" in app.stdout.readline()
            code, content_type, body = _get(f"http://127.0.0.1:{port}/ready")
        finally:
            app.terminate()
    assert content_type == "application/health+json"
    if reachable:
        assert (code, body["status"]) == (200, "warn")  # warn still serves traffic
        assert body["checks"]["refresh_tokens:last_success"][0]["status"] == "warn"
    else:
        assert (code, body["status"]) == (503, "fail")
        assert "cannot connect" in body["output"]
