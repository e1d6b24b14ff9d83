"""Status as deployments run it: from a directory with no configuration, reading what is installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import dbjobs
import dbjobs.health
from tests.conftest import AppDb
from tests.devserver import free_port

ROOT = Path(__file__).resolve().parent.parent

# Jobs none of which is a built-in default: status must not fall back to those.
CUSTOM = """
[jobs.sessions]
table = "sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 * * * *"

[jobs.old_audit]
table = "audit"
expires = ["created_at"]
retain = "90 days"
schedule = "30 3 * * *"
where = "kind <> 'legal'"
"""


@pytest.fixture
def custom(app: AppDb, dbjobs_cli, tmp_path: Path) -> AppDb:
    """The custom jobs installed from a config file in a directory of their own."""
    app.execute(
        "CREATE TABLE sessions (id int, expires_at timestamptz);"
        "CREATE TABLE audit (id int, kind text, created_at timestamptz);"
        "INSERT INTO sessions SELECT g, now() - interval '2 days' FROM generate_series(1, 5) g;"
    )
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "dbjobs.toml").write_text(CUSTOM)
    result = dbjobs_cli("--dsn", app.dsn, "--config", str(deploy / "dbjobs.toml"), "install")
    assert result.code == 0, result.err
    return app


def test_status_without_a_config_reports_exactly_the_installed_jobs(custom: AppDb, dbjobs_cli) -> None:
    assert not Path("dbjobs.toml").exists()  # dbjobs_cli runs in an empty directory
    result = dbjobs_cli("status", "--format", "json", "--dsn", custom.dsn)  # global flag after the command
    data = json.loads(result.out)
    assert (result.code, data["status"]) == (0, "pass"), result.out + result.err
    assert [job["name"] for job in data["jobs"]] == ["old_audit", "sessions", "_maintenance"]
    assert {job["state"] for job in data["jobs"]} == {"pending"}
    assert data["drift"] == [] and data["schema"] == "dbjobs"

    text = dbjobs_cli("status", "--dsn", custom.dsn)
    assert text.code == 0 and "missing" not in text.out and "refresh_tokens" not in text.out


def test_readiness_without_a_config(custom: AppDb, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    code, body = dbjobs.health.readiness(custom.dsn)
    assert (code, body["status"]) == (200, "pass")
    assert set(body["checks"]) == {
        "pg_cron:scheduler",
        "old_audit:last_success",
        "sessions:last_success",
        "_maintenance:last_success",
    }


def test_the_example_app_without_a_config_answers_get_and_head(custom: AppDb, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG"))}
    env["DBJOBS_DSN"] = custom.dsn
    with subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "ready_app.py"), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None and "listening" in server.stdout.readline()
            url = f"http://127.0.0.1:{port}/ready"
            with urllib.request.urlopen(url, timeout=15) as response:
                body = json.loads(response.read())
                assert response.status == 200
            head = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(head, timeout=15) as response:
                assert (response.status, response.read()) == (200, b"")
                assert response.headers["Content-Type"] == "application/health+json"
        finally:
            server.terminate()
    assert body["status"] == "pass"
    assert "sessions:last_success" in body["checks"] and "refresh_tokens:last_success" not in body["checks"]


def test_a_config_that_differs_is_drift_a_warning_never_missing(
    custom: AppDb, dbjobs_cli, write_config
) -> None:
    changed = CUSTOM.replace('schedule = "0 * * * *"', 'schedule = "15 * * * *"').replace(
        "[jobs.old_audit]", "[jobs.audit_log]"
    )
    write_config(changed)  # ./dbjobs.toml: found by status as by install
    result = dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json")
    data = json.loads(result.out)
    assert (result.code, data["status"]) == (1, "warn")
    assert [job["name"] for job in data["jobs"]] == ["old_audit", "sessions", "_maintenance"]
    assert all(job["state"] != "missing" for job in data["jobs"])
    drift = "\n".join(data["drift"])
    assert "job 'audit_log' is in dbjobs.toml but not installed" in drift
    assert "job 'old_audit' is installed but not in dbjobs.toml" in drift
    assert "job 'sessions' differs from dbjobs.toml (schedule '0 * * * *' -> '15 * * * *')" in drift
    assert len(data["drift"]) == 3

    text = dbjobs_cli("--dsn", custom.dsn, "status")
    assert text.code == 1 and "drift: job 'sessions' differs" in text.out
    values = {
        (s.name, s.labels.get("job"), s.labels.get("state")): s.value
        for family in text_string_to_metric_families(
            dbjobs_cli("--dsn", custom.dsn, "status", "--format", "prometheus").out
        )
        for s in family.samples
    }
    assert values[("dbjobs_config_drift", None, None)] == 3

    # The same jobs written differently (the interval spelt otherwise, the schema named): no drift.
    same = CUSTOM.replace('retain = "1 day"', 'retain = "1 days"').replace(
        'table = "sessions"', f'table = "{custom.schema}.sessions"'
    )
    write_config(same)
    data = json.loads(dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json").out)
    assert (data["status"], data["drift"]) == ("pass", [])
    # Bounds count too: a run bound or an escalation set in the file but not installed.
    write_config(
        'max_runtime = "10 minutes"\n'
        + same.replace('retain = "90 days"', 'retain = "90 days"\nfail_after = 3')
    )
    drift = json.loads(dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json").out)["drift"]
    assert len(drift) == 2 and all("max_runtime None -> '00:10:00'" in line for line in drift)
    assert "fail_after None -> 3" in next(line for line in drift if "old_audit" in line)


def test_a_broken_config_beside_status_is_a_warning(custom: AppDb, dbjobs_cli, write_config) -> None:
    write_config("[jobs.sessions\n")
    result = dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json")
    data = json.loads(result.out)
    assert (result.code, data["status"]) == (1, "warn")
    assert "invalid TOML" in data["drift"][0]
    assert [job["name"] for job in data["jobs"]] == ["old_audit", "sessions", "_maintenance"]


def test_status_finds_another_schema_by_flag_and_environment(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE sessions (id int, expires_at timestamptz)")
    config = write_config('schema = "dbjobs alt\'s"\n' + CUSTOM.split("[jobs.old_audit]")[0], "other.toml")
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    by_flag = dbjobs_cli("status", "--schema", "dbjobs alt's", "--format", "json", "--dsn", app.dsn)
    assert [job["name"] for job in json.loads(by_flag.out)["jobs"]] == ["sessions", "_maintenance"]
    by_env = dbjobs_cli("--dsn", app.dsn, "status", "--format", "json", env={"DBJOBS_SCHEMA": "dbjobs alt's"})
    assert json.loads(by_env.out)["schema"] == "dbjobs alt's"
    assert by_env.code == 0
    not_there = dbjobs_cli("--dsn", app.dsn, "status")  # the default schema: not installed
    assert not_there.code == 2 and "not installed" in not_there.out


def test_a_run_that_cannot_start_is_recorded_and_status_fails_at_once(custom: AppDb, dbjobs_cli) -> None:
    custom.execute("DROP TABLE sessions")
    run = dbjobs_cli("--dsn", custom.dsn, "run", "sessions")
    assert run.code == 1
    assert run.out.startswith("sessions: failed after deleting 0 rows: relation ")
    assert run.out.rstrip().endswith('sessions" does not exist') and "CONTEXT" not in run.out
    result = dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json")
    job = next(job for job in json.loads(result.out)["jobs"] if job["name"] == "sessions")
    assert (result.code, job["state"], job["last_trigger"]) == (1, "failing", "manual")
    assert "does not exist" in job["last_error"]
    for forbidden in ("CONTEXT", "INSERT INTO", "PL/pgSQL", "\n"):
        assert forbidden not in job["last_error"]


def test_pg_cron_errors_are_shown_on_one_line(custom: AppDb, dbjobs_cli) -> None:
    """What pg_cron keeps of a failed CALL: libpq's whole text, CONTEXT and statements included."""
    (jobid,) = custom.cron(
        "SELECT jobid FROM cron.job WHERE database = %s AND jobname LIKE %s",
        [custom.database, "%:sessions"],
    )[0]
    message = (
        "ERROR:  permission denied for table sessions\nDETAIL:  the role lost DELETE\n"
        'HINT:  GRANT it again\nCONTEXT:  SQL statement "INSERT INTO "dbjobs".run (job) VALUES (1)"\n'
        "PL/pgSQL function dbjobs.start_run(text,text) line 12 at SQL statement\n"
    )
    custom.cron(
        "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
        " return_message, start_time, end_time)"
        " VALUES (%s, nextval('cron.runid_seq'), 1, %s, current_user, 'CALL', 'failed', %s,"
        " now() - interval '1 minute', now() - interval '59 seconds')",
        [jobid, custom.database, message],
    )
    for fmt in ("json", "health", "text", "prometheus"):
        out = dbjobs_cli("--dsn", custom.dsn, "status", "--format", fmt).out
        assert "CONTEXT" not in out and "INSERT INTO" not in out and "PL/pgSQL" not in out
    job = next(
        job
        for job in json.loads(dbjobs_cli("--dsn", custom.dsn, "status", "--format", "json").out)["jobs"]
        if job["name"] == "sessions"
    )
    assert job["state"] == "failing"
    assert job["last_error"] == (
        "pg_cron: permission denied for table sessions (the role lost DELETE) hint: GRANT it again"
    )


SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("fmt", ["text", "json", "health", "prometheus"])
def test_no_password_in_any_status_output(dbjobs_cli, fmt: str) -> None:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
    result = dbjobs_cli("status", "--format", fmt, "--dsn", dsn)
    assert result.code == 3
    assert SECRET not in result.out + result.err
    if fmt == "json":
        assert json.loads(result.out)["status"] == "unknown"
    if fmt != "text":
        assert result.out.strip()  # a body the caller can parse


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["status", "--bogus", "--dsn", f"postgresql://app:{SECRET}@db/app"], 3),
        (["status", f"--dsn=postgresql://app:{SECRET}@db/app", "--format", "xml"], 3),
        (["doctor", "--dsn", f"host=db password={SECRET}", "extra"], 3),
        (["install", "--dsn", f"postgresql://app:{SECRET}@db/app", "--bogus"], 2),
        (["--dsn", f"postgresql://app:{SECRET}@db/app", "nonsense"], 2),
    ],
)
def test_usage_errors_never_echo_a_password(dbjobs_cli, argv: list[str], code: int) -> None:
    result = dbjobs_cli(*argv)
    assert result.code == code
    assert SECRET not in result.out + result.err
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("dbjobs: error: ")


def test_prometheus_has_no_timestamps_for_jobs_that_never_ran_and_no_float_noise(
    custom: AppDb, dbjobs_cli
) -> None:
    assert dbjobs_cli("--dsn", custom.dsn, "run", "sessions").code == 0
    out = dbjobs_cli("--dsn", custom.dsn, "status", "--format", "prometheus").out
    samples = [s for family in text_string_to_metric_families(out) for s in family.samples]
    series = {(s.name, s.labels.get("job"), s.labels.get("state")): s.value for s in samples}
    assert ("dbjobs_job_last_success_timestamp_seconds", "sessions", None) in series
    assert ("dbjobs_job_last_success_timestamp_seconds", "old_audit", None) not in series
    assert ("dbjobs_job_last_run_timestamp_seconds", "old_audit", None) not in series
    assert series[("dbjobs_job_state", "old_audit", "pending")] == 1
    assert series[("dbjobs_job_state", "old_audit", "ok")] == 0
    assert series[("dbjobs_job_state", "sessions", "ok")] == 1
    assert series[("dbjobs_job_last_rows_deleted", "sessions", None)] == 5
    for line in out.splitlines():
        if line and not line.startswith("#"):
            value = line.rsplit(" ", 1)[1]
            assert re.fullmatch(r"-?\d+(\.\d{1,4})?(e[+-]\d+)?", value) or re.fullmatch(
                r"\d\.\d{1,12}e\+09", value
            ), line


def test_readme_prometheus_recipe_publishes_on_every_exit_code(
    custom: AppDb, tmp_path: Path, dbjobs_cli
) -> None:
    readme = (ROOT / "README.md").read_text()
    recipe = re.search(r"```sh\n(# textfile collector.*?)```", readme, re.S)
    assert recipe, "the README's textfile-collector recipe"
    script = recipe.group(1).replace("/var/lib/node_exporter/textfile", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG"))}
    dbjobs_bin = Path(sys.executable).parent
    env["PATH"] = f"{dbjobs_bin}:{env['PATH']}"
    published = tmp_path / "dbjobs.prom"
    for dsn, up in ((custom.dsn, 1.0), (f"host=127.0.0.1 port={free_port()} dbname=x", 0.0)):
        env["DBJOBS_DSN"] = dsn
        subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, timeout=60, check=False)
        values = {
            s.name: s.value for f in text_string_to_metric_families(published.read_text()) for s in f.samples
        }
        assert values["dbjobs_up"] == up  # published whatever status exited with
    assert not list(tmp_path.glob("*.tmp*"))


def test_health_follows_the_draft(custom: AppDb, dbjobs_cli) -> None:
    assert dbjobs_cli("--dsn", custom.dsn, "run", "sessions").code == 0
    custom.execute("ALTER TABLE audit RENAME COLUMN created_at TO gone")
    assert dbjobs_cli("--dsn", custom.dsn, "run", "old_audit").code == 1
    result = dbjobs_cli("--dsn", custom.dsn, "status", "--format", "health")
    document = json.loads(result.out)
    assert (result.code, document["status"]) == (1, "warn")
    assert "old_audit" in document["output"]
    checks = document["checks"]
    ok = checks["sessions:last_success"][0]
    assert ok["status"] == "pass" and "output" not in ok
    assert ok["componentType"] == "component" and ok["observedUnit"] == "s"
    assert 0 <= ok["observedValue"] < 300
    failing = checks["old_audit:last_success"][0]
    assert (
        failing["status"] == "warn"
        and "gone" not in failing["output"]
        and "does not exist" in failing["output"]
    )
    assert "observedValue" not in failing  # it never succeeded: there is no age to observe
    scheduler = checks["pg_cron:scheduler"][0]
    assert scheduler["componentType"] == "system" and "output" not in scheduler
    times = {entry["time"] for entries in checks.values() for entry in entries}
    assert len(times) == 1  # when each value was observed: the moment status read them


def test_run_rough_edges(custom: AppDb, dbjobs_cli) -> None:
    both = dbjobs_cli("--dsn", custom.dsn, "run", "--all", "sessions")
    assert both.code == 2 and "not both" in both.err
    maintenance = dbjobs_cli("--dsn", custom.dsn, "run", "_maintenance")
    assert maintenance.code == 2 and "dbjobs' own pg_cron job" in maintenance.err
    assert (
        dbjobs_cli("--dsn", custom.dsn, "run", "--all").out.splitlines()[0].startswith("old_audit: deleted")
    )
    text = dbjobs_cli("--dsn", custom.dsn, "status").out
    assert re.search(r"^sessions +ok .* manual ", text, re.M), text


def test_every_problem_of_a_config_in_one_pass(app: AppDb, dbjobs_cli, write_config) -> None:
    app.execute("CREATE TABLE t (x int, expires_at timestamptz)")
    config = write_config(
        """
[jobs.a]
table = "t"
expires = ["expires_at"]
retain = "1 day"
schedule = "0 * * * *"
where = "x > 0; DROP TABLE t"

[jobs.c]
table = "t"
expires = ["expires_at", "x", "nope"]
retain = "-1 day"
schedule = "0 * * * *"

[jobs.b]
table = "nope"
expires = ["expires_at"]
retain = "1 day"
schedule = "61 * * * *"
batch_size = 0
"""
    )
    result = dbjobs_cli("--dsn", app.dsn, "--config", config, "install")
    lines = result.err.strip().splitlines()
    assert result.code == 2
    assert all(line.startswith("dbjobs: error: ") for line in lines)
    assert any("job 'b': schedule" in line for line in lines)
    assert any("job 'b': batch_size" in line for line in lines)
    assert len(lines) == 2  # what needs no database is all reported before connecting
    del lines[:]
    fixed = (Path(config).read_text().replace('schedule = "61 * * * *"', 'schedule = "1 * * * *"')).replace(
        "batch_size = 0", ""
    )
    Path(config).write_text(fixed)
    lines = dbjobs_cli("--dsn", app.dsn, "--config", config, "install").err.strip().splitlines()
    # Every problem of one job too: its retention, and each of its columns.
    assert any("job 'c': retain" in line and "negative" in line for line in lines), lines
    assert any("job 'c': expires: column 'x' is integer" in line for line in lines), lines
    assert any("job 'c': expires: column 'nope' does not exist" in line for line in lines), lines
    assert len(lines) == 5, lines
    assert any("job 'a': where" in line and "not a single expression" in line for line in lines), lines
    assert any("job 'b': table" in line and "does not exist" in line for line in lines), lines
    assert not any("syntax error" in line for line in lines)
    assert app.execute("SELECT to_regnamespace('dbjobs')") == [(None,)]  # nothing changed


def test_term_dumb_gets_no_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbjobs.formats import use_colour

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_colour(Terminal())  # type: ignore[arg-type]
    monkeypatch.setenv("TERM", "dumb")
    assert not use_colour(Terminal())  # type: ignore[arg-type]


def test_status_api_without_a_config(custom: AppDb) -> None:
    with psycopg.connect(custom.dsn) as conn:
        report = dbjobs.status(conn)
    assert [job.name for job in report.jobs] == ["old_audit", "sessions", "_maintenance"]
    assert report.status == "pass" and report.to_dict()["scheduler"]["timezone"] in ("UTC", "GMT")
