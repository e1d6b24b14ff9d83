"""Many databases: install, status, doctor and serve over [[databases]] and --all-databases,
three databases on one server and databases on two servers, read in parallel with one deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
import pytest

from dbjobs.config import Database
from tests import servers
from tests.conftest import DEFAULT_TABLES, SAMPLE_ROWS, AppDb, _make_app
from tests.devserver import ThrowawayServer
from tests.test_serve import get, serving

NAMES = ("eu", "us", "apac")


@pytest.fixture(scope="module")
def three(pg_servers: dict[str, servers.Server]) -> Iterator[dict[str, AppDb]]:
    """Three application databases on one server, with the default tables and rows."""
    with ExitStack() as stack:
        apps = {
            name: stack.enter_context(contextmanager(_make_app)("separate", pg_servers["separate"]))
            for name in NAMES
        }
        for app in apps.values():
            app.execute(DEFAULT_TABLES + SAMPLE_ROWS)
        yield apps


def fleet_config(apps: dict[str, AppDb]) -> str:
    return "".join(f'[[databases]]\nname = "{name}"\ndsn = "{app.dsn}"\n\n' for name, app in apps.items())


def test_three_databases_on_one_server(three: dict[str, AppDb], dbjobs_cli, write_config) -> None:
    config = write_config(fleet_config(three))
    # install: each change is one line, prefixed with its database; a second install changes nothing.
    first = dbjobs_cli("--config", config, "install")
    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert {line.split(": ")[0] for line in lines} == set(NAMES)
    per_database = {name: [line for line in lines if line.startswith(f"{name}: ")] for name in NAMES}
    assert len({len(found) for found in per_database.values()}) == 1 and len(per_database["eu"]) > 4
    again = dbjobs_cli("--config", config, "install")
    assert again.out.splitlines() == [
        f"{name}: nothing to change: dbjobs is up to date in {three[name].database}" for name in NAMES
    ]
    # --log-format json: each database's plan as JSON records, its database in the "plan" record.
    records = [
        json.loads(line)
        for line in dbjobs_cli("--log-format", "json", "--config", config, "install").out.splitlines()
    ]
    assert [(r["event"], r["database"], r["changes"]) for r in records] == [
        ("plan", three[name].database, 0) for name in NAMES
    ]
    assert dbjobs_cli("--dsn", three["us"].dsn, "run", "--all").code == 0
    # Commands that work on one database do not guess which: they ask for --dsn.
    for command in (["run", "--all"], ["uninstall"], ["watch"]):
        refused = dbjobs_cli("--config", config, *command)
        assert refused.code == 2 and refused.err == (
            f"dbjobs: error: {command[0]} works on one database and the configuration lists several "
            f"({', '.join(NAMES)}): name it with --dsn\n"
        ), refused.err

    result = dbjobs_cli("--config", config, "status", "--format", "json")
    document = json.loads(result.out)
    assert result.code == 0, result.out
    assert document["status"] == "pass" and list(document["databases"]) == list(NAMES)
    for name in NAMES:
        report = document["databases"][name]
        assert report["database"] == three[name].database
        assert [job["name"] for job in report["jobs"]][-1] == "_maintenance" and len(report["jobs"]) == 5
    us_rows = {job["name"]: job["last_rows_deleted"] for job in document["databases"]["us"]["jobs"]}
    assert us_rows["email_verifications"] == 3
    assert {job["last_rows_deleted"] for job in document["databases"]["eu"]["jobs"]} == {None}

    # One database fails (a job vanished from pg_cron): the overall status is the worst.
    three["apac"].cron("SELECT cron.unschedule(%s::bigint)", [three["apac"].cron_jobs()[0][0]])
    result = dbjobs_cli("--config", config, "status", "--format", "prometheus")
    assert result.code == 2
    assert 'dbjobs_up{database="apac"} 1.0' in result.out
    states = [
        line
        for line in result.out.splitlines()
        if line.startswith("dbjobs_job_state{") and line.endswith(" 1.0")
    ]
    assert {line.split('"')[1] for line in states} == set(NAMES)  # the database label comes first
    assert 'dbjobs_job_state{database="us",job="refresh_tokens",state="ok"} 1.0' in states
    assert result.out.count("# TYPE dbjobs_up gauge") == 1
    missing = [
        line
        for line in result.out.splitlines()
        if line.startswith("dbjobs_job_missing{") and line.endswith(" 1.0")
    ]
    assert len(missing) == 1 and 'database="apac"' in missing[0]

    text = dbjobs_cli("--config", config, "status")
    assert text.code == 2 and text.out.startswith("dbjobs FAIL over 3 databases")
    assert [line for line in text.out.splitlines() if line.startswith("== ")] == [f"== {n}" for n in NAMES]

    health = json.loads(dbjobs_cli("--config", config, "status", "--format", "health").out)
    assert health["status"] == "fail" and set(health["checks"]) == {f"{n}:status" for n in NAMES}
    assert health["checks"]["apac:status"][0]["status"] == "fail"

    # doctor: every check of every database, prefixed; the worst decides the exit code.
    doctor = dbjobs_cli("--config", config, "doctor")
    assert doctor.code == 2
    for name in NAMES:
        assert f"{name}: PASS  connection:" in doctor.out
    assert "apac: FAIL  jobs" in doctor.out and "eu: PASS  jobs" in doctor.out

    # --all-databases finds the same three on their server, named by database.
    found = dbjobs_cli("--dsn", three["eu"].cron_dsn, "status", "--all-databases", "--format", "json")
    databases = json.loads(found.out)["databases"]
    assert set(databases) == {app.database for app in three.values()}
    # run and uninstall work on one database: with a list, they must be told which.
    for command in ("run", "uninstall"):
        refused = dbjobs_cli("--config", config, command, *(["--all"] if command == "run" else []))
        assert refused.code == 2 and refused.out == ""
        assert refused.err == (
            f"dbjobs: error: {command} works on one database and the configuration lists several "
            "(eu, us, apac): name it with --dsn\n"
        )
    # --dsn on the command line names one database, whatever the configuration lists.
    one = json.loads(
        dbjobs_cli("--config", config, "--dsn", three["eu"].dsn, "status", "--format", "json").out
    )
    assert one["database"] == three["eu"].database


def test_one_deadline_for_all(three: dict[str, AppDb], dbjobs_cli, write_config) -> None:
    """A database that does not answer is unknown at the deadline; the others are read meanwhile."""
    config = write_config(fleet_config(three))
    assert dbjobs_cli("--config", config, "install").code == 0
    with psycopg.connect(three["us"].dsn) as locker:
        locker.execute("LOCK TABLE dbjobs.job IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = dbjobs_cli("--config", config, "status", "--format", "json", "--timeout", "1")
        took = time.monotonic() - started
        locker.rollback()
    document = json.loads(result.out)
    assert result.code == 3 and document["status"] == "unknown"
    assert document["databases"]["us"]["status"] == "unknown"
    assert document["databases"]["us"]["error"].startswith("no answer from 127.0.0.1:")
    assert {document["databases"][n]["status"] for n in ("eu", "apac")} <= {"pass", "fail"}
    assert took < 1.9, took  # one deadline, not one per database, and not the 2 s statement timeout


def test_two_servers_one_stopped(three: dict[str, AppDb], dbjobs_cli, write_config) -> None:
    """A database on a second server: read alongside, then unknown once that server is stopped,
    in status and in serve (503 on /ready, the database label in /metrics)."""
    with ThrowawayServer() as other:
        other.create_pg_cron()
        other.create_database("app")
        remote = Database("remote", other.dsn("app"))
        with psycopg.connect(remote.dsn, autocommit=True) as conn:
            conn.execute(DEFAULT_TABLES)
        local = Database("eu", three["eu"].dsn)
        config = write_config(fleet_config(three) + f'[[databases]]\nname = "remote"\ndsn = "{remote.dsn}"\n')
        assert dbjobs_cli("--config", config, "install").code == 0
        document = json.loads(dbjobs_cli("--config", config, "status", "--format", "json").out)
        assert document["databases"]["remote"]["database"] == "app"
        assert document["databases"]["remote"]["scheduler"]["running"] is True

        with serving([local, remote], interval=0.0, deadline=3.0) as url:
            code, _, body = get(url + "/ready")
            assert code == 200, body
            assert set(json.loads(body)["checks"]) == {"eu:status", "remote:status"}
            other.stop()
            code, _, body = get(url + "/ready")
            assert code == 503
            assert json.loads(body)["checks"]["remote:status"][0]["output"].startswith("cannot connect to")
            metrics = get(url + "/metrics")[2].decode()
            assert 'dbjobs_up{database="remote"} 0.0' in metrics and 'dbjobs_up{database="eu"} 1.0' in metrics
            page = get(url + "/")[2].decode()
            assert page.count('<section class="database"') == 2 and 'class="badge unknown"' in page
            api = json.loads(get(url + "/api/status")[2])
            assert api["status"] == "unknown" and api["databases"]["remote"]["status"] == "unknown"

        result = dbjobs_cli("--config", config, "status")
        assert result.code == 3 and "== remote\ndbjobs UNKNOWN: cannot connect to" in result.out
        # doctor goes on past the stopped server; its error is a line on stderr (a JSON record
        # with --log-format json), the others' checks on stdout.
        doctor = dbjobs_cli("--config", config, "doctor")
        assert doctor.code == 3, doctor.err
        assert doctor.err.startswith("dbjobs: error: remote: cannot connect to"), doctor.err
        assert "eu: " in doctor.out and "remote: " not in doctor.out
        doctor = dbjobs_cli("--log-format", "json", "--config", config, "doctor")
        [error] = [json.loads(line) for line in doctor.err.splitlines()]
        assert (error["event"], error["database"], error["exit_code"]) == ("error", "remote", 3)
