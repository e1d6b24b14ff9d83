"""dbjobs serve: the status page (rendered in headless Chromium), /ready, /metrics and /api/status,
read as a monitoring role, at most once per interval, and unknown within the deadline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbjobs.config import Config, Database
from dbjobs.serve import Cache, make_server, reader
from tests import servers
from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb, _make_app

JOBS = ("email_verifications", "login_attempts", "password_resets", "refresh_tokens")
NASTY = '<script>alert("x")</script> & <b>boom</b>'
# What README "Status" grants a monitoring role.
GRANTS = """
GRANT USAGE ON SCHEMA dbjobs TO {role};
GRANT EXECUTE ON FUNCTION dbjobs.status_history(text[]), dbjobs.status_cron(text[], bigint),
    dbjobs.status_runs(text[], integer) TO {role};
"""
# Ten earlier runs of each job: rows and durations that vary, the fourth one failed.
HISTORY = """
INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at, rows_deleted, error)
SELECT j.name, 'scheduled', CASE WHEN i = 4 THEN 'failed' ELSE 'succeeded' END,
       now() - (11 - i) * interval '1 hour',
       now() - (11 - i) * interval '1 hour' + (20 + 15 * (i % 4)) * interval '1 millisecond',
       CASE WHEN i = 4 THEN 0 ELSE 100 * i END,
       CASE WHEN i = 4 THEN 'canceling statement due to lock timeout' END
  FROM dbjobs.job j, generate_series(1, 10) AS i
 ORDER BY i, j.name;
"""


@pytest.fixture(scope="module")
def fleet_app(pg_servers: dict[str, servers.Server]) -> Iterator[AppDb]:
    """One installed application with a history, shared by this module's tests."""
    yield from _make_app("separate", pg_servers["separate"])


@pytest.fixture(scope="module")
def monitor(fleet_app: AppDb) -> str:
    """The DSN of a monitoring role with README's grants and nothing else, over an installed
    database whose jobs have runs (one of them latest failed, with HTML in its error)."""
    app = fleet_app
    app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
    from dbjobs import cli

    assert cli.main(["--dsn", app.dsn, "install"]) == 0
    app.execute(HISTORY)
    assert cli.main(["--dsn", app.dsn, "run", "--all"]) == 0
    app.execute(
        "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at, error)"
        " VALUES ('login_attempts', 'scheduled', 'failed', now(), now(), %s)",
        [NASTY],
    )
    role = f"monitor_{app.database}"
    app.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    app.execute(sql.SQL(GRANTS).format(role=sql.Identifier(role)))
    return psycopg.conninfo.make_conninfo(app.dsn, user=role)


@contextmanager
def serving(databases: list[Database], *, interval: float = 5.0, deadline: float = 5.0) -> Iterator[str]:
    """A server on a free loopback port, in a thread; its base URL."""
    cache = Cache(reader(databases, Config(jobs=()), deadline=deadline), interval)
    server = make_server(cache, "127.0.0.1", 0, single=len(databases) == 1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chromium(*args: str) -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (scripts/setup installs Debian's chromium)")
    result = subprocess.run(
        [found, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_page_renders_every_job_and_its_chart_in_chromium(monitor: str, tmp_path: Path) -> None:
    with serving([Database("app", monitor)]) as url:
        dom = chromium("--dump-dom", url + "/")
        shot = tmp_path / "page.png"
        chromium(f"--screenshot={shot}", "--window-size=1400,900", url + "/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("DBJOBS_SERVE_SCREENSHOT"):  # where to keep a copy (README's picture)
        shutil.copy(shot, os.environ["DBJOBS_SERVE_SCREENSHOT"])
    assert '<span class="badge warn" id="overall">warn</span>' in dom  # login_attempts is failing
    for job in JOBS:
        row = dom.split(f'<tr class="job" data-job="{job}">')[1].split("</tr>")[0]
        # Each job's chart: its 11 runs (10 from the history, 1 from run --all) plus
        # login_attempts' failed one, each a bar with its own tooltip.
        chart = row.split(f'<svg class="chart" data-job="{job}"')[1].split("</svg>")[0]
        expected = 12 if job == "login_attempts" else 11
        assert chart.count('<g class="run ') == expected, job
        assert chart.count('class="failure"') == (2 if job == "login_attempts" else 1), job
        assert "<polyline" in chart  # durations
        assert "1,000 rows" in chart  # the scale: the most rows one run deleted
    # The error is shown as text: no element came of it, in the DOM Chromium built.
    assert "<script>" not in dom and "<b>boom</b>" not in dom
    assert '&lt;script&gt;alert("x")&lt;/script&gt; &amp; &lt;b&gt;boom&lt;/b&gt;' in dom
    login = dom.split('<tr class="job" data-job="login_attempts">')[1].split("</tr>")[0]
    assert '<td class="warn">failing</td>' in login


def test_endpoints_as_a_monitoring_role(monitor: str) -> None:
    with serving([Database("app", monitor)]) as url:
        code, headers, body = get(url + "/ready")
        assert code == 200 and headers["Content-Type"] == "application/health+json"
        ready = json.loads(body)
        assert ready["status"] == "warn"  # login_attempts' last run failed
        assert ready["checks"]["login_attempts:last_success"][0]["output"] == NASTY
        head_code, head_headers, head_body = get(url + "/ready", "HEAD")
        assert (head_code, head_body) == (200, b"") and head_headers["Content-Length"] == str(len(body))

        code, headers, body = get(url + "/metrics")
        metrics = body.decode()
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "dbjobs_up 1.0" in metrics
        assert 'dbjobs_job_failing{job="login_attempts"} 1.0' in metrics

        code, headers, body = get(url + "/api/status")
        report = json.loads(body)
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert {job["name"] for job in report["jobs"]} == set(JOBS)
        assert report["read_at"].endswith("Z")

        code, _, page = get(url + "/")
        assert code == 200 and page.decode().count('<svg class="chart"') == len(JOBS)
        assert get(url + "/nothing")[0] == 404


def test_the_database_is_read_at_most_once_per_interval(monitor: str) -> None:
    """Fifty requests at once share one reading; once the interval is over, the next one reads again."""
    with serving([Database("app", monitor)], interval=2.0) as url:

        def read_at(_: int) -> str:
            return str(json.loads(get(url + "/api/status")[2])["read_at"])

        with ThreadPoolExecutor(max_workers=16) as pool:
            first = set(pool.map(read_at, range(50)))
        assert len(first) == 1
        time.sleep(2.1)
        assert read_at(0) not in first


def test_unknown_and_503_within_the_deadline_when_the_database_does_not_answer(
    fleet_app: AppDb, monitor: str
) -> None:
    """A lock held on dbjobs' job table blocks status_history(): the page answers unknown in time."""
    with psycopg.connect(fleet_app.dsn) as locker:
        locker.execute("LOCK TABLE dbjobs.job IN ACCESS EXCLUSIVE MODE")
        with serving([Database("app", monitor)], deadline=1.0) as url:
            started = time.monotonic()
            code, _, body = get(url + "/ready")
            took = time.monotonic() - started
            assert code == 503, body
            assert json.loads(body)["output"].startswith("no answer from 127.0.0.1:")
            assert took < 1.9, took  # the deadline, not the statement timeout (2 s)
            code, _, page = get(url + "/")
            assert code == 200 and 'class="badge unknown"' in page.decode()
        locker.rollback()


def test_the_command_serves_until_terminated(monitor: str) -> None:
    """`dbjobs serve --port 0` says where it listens, answers, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "dbjobs", "serve", "--dsn", monitor, "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("dbjobs serve: http://127.0.0.1:"), line
            url = line.split()[2]
            assert get(url + "ready")[0] == 200
            # A second server on the same port: one line, exit 3.
            port = url.rstrip("/").rpartition(":")[2]
            taken = subprocess.run([*command[:-1], port], capture_output=True, text=True, timeout=30)
            assert taken.returncode == 3 and taken.stdout == ""
            assert (
                taken.stderr == f"dbjobs: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            )
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0


def test_without_the_status_runs_grant_the_page_says_so(fleet_app: AppDb, monitor: str) -> None:
    """A monitoring role granted only what `dbjobs status` needs still gets the page, minus the charts."""
    role = psycopg.conninfo.conninfo_to_dict(monitor)["user"]
    revoke = sql.SQL("{} EXECUTE ON FUNCTION dbjobs.status_runs(text[], integer) {} {}")
    fleet_app.execute(revoke.format(sql.SQL("REVOKE"), sql.SQL("FROM"), sql.Identifier(str(role))))
    try:
        with serving([Database("app", monitor)]) as url:
            page = get(url + "/")[2].decode()
            assert get(url + "/ready")[0] == 200
    finally:
        fleet_app.execute(revoke.format(sql.SQL("GRANT"), sql.SQL("TO"), sql.Identifier(str(role))))
    assert "recent runs not readable: GRANT EXECUTE ON FUNCTION dbjobs.status_runs(text[], integer)" in page
    assert page.count("no finished runs yet") == len(JOBS)


def test_status_runs_is_bounded(fleet_app: AppDb, monitor: str) -> None:
    """status_runs() returns at most status_runs_max (100) runs per job, whatever it is asked, newest
    ones, oldest first; only for installed jobs."""
    fleet_app.execute(
        "INSERT INTO dbjobs.run (job, trigger, status, started_at, finished_at, rows_deleted)"
        " SELECT 'password_resets', 'manual', 'succeeded', now() + i * interval '1 second',"
        " now() + i * interval '1 second', i FROM generate_series(1, 150) AS i"
    )
    try:
        with psycopg.connect(monitor) as conn:
            rows = conn.execute(
                "SELECT job, rows_deleted FROM dbjobs.status_runs(ARRAY['password_resets', 'nope'], 1000000)"
            ).fetchall()
            assert [r[1] for r in rows] == list(range(51, 151))
            assert {r[0] for r in rows} == {"password_resets"}
            assert conn.execute(
                "SELECT count(*) FROM dbjobs.status_runs(ARRAY['password_resets'], -5)"
            ).fetchone() == (0,)
    finally:
        fleet_app.execute(
            "DELETE FROM dbjobs.run"
            " WHERE job = 'password_resets' AND trigger = 'manual' AND started_at > now()"
        )


def test_the_chart_scale_fits_its_margin() -> None:
    """The most rows one run deleted, compact enough for the chart's margin; none is 0, not 1."""
    from datetime import UTC, datetime, timedelta

    from dbjobs.fleet import Run
    from dbjobs.serve import chart

    start = datetime(2026, 11, 29, tzinfo=UTC)

    def runs(*rows: int) -> list[Run]:
        minute = timedelta(minutes=1)
        return [Run(start + i * minute, start + i * minute, "succeeded", n, None) for i, n in enumerate(rows)]

    assert ">250k rows</text>" in chart("big", runs(1_000, 250_000))
    assert ">1.5M rows</text>" in chart("bigger", runs(1_500_000))
    assert ">9,999 rows</text>" in chart("small", runs(9_999, 3))
    assert ">0 rows</text>" in chart("idle", runs(0, 0))
    assert ">1 row</text>" in chart("one", runs(1, 0))
