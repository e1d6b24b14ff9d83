"""Configuration sources, precedence and validation that needs no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbjobs import ConfigError, load_config
from dbjobs.config import DEFAULT_JOBS
from dbjobs.connection import resolve_dsn

ONE_JOB = """
[jobs.sessions]
table = "auth.sessions"
expires = ["expires_at"]
retain = "1 day"
schedule = "*/15 * * * *"
"""


def test_defaults_are_the_four_backend_jobs(tmp_path: Path) -> None:
    config = load_config(environ={}, cwd=tmp_path)
    assert config.source == "built-in defaults"
    assert config.jobs == DEFAULT_JOBS
    assert [(j.name, j.expires, j.retain, j.schedule) for j in config.jobs] == [
        ("refresh_tokens", ("expires_at",), "30 days", "0 * * * *"),
        ("email_verifications", ("expires_at", "verified_at"), "24 hours", "5 * * * *"),
        ("password_resets", ("expires_at", "used_at"), "1 hour", "10 * * * *"),
        ("login_attempts", ("created_at",), "7 days", "0 2 * * *"),
    ]
    assert (config.schema, config.enabled, config.history_retention, config.grace) == (
        "dbjobs",
        True,
        "7 days",
        "10 minutes",
    )


def test_file_discovery_order(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.dbjobs]\nschema = "from_pyproject"\n'
    )
    assert load_config(environ={}, cwd=tmp_path).schema == "from_pyproject"
    (tmp_path / "dbjobs.toml").write_text('schema = "from_dbjobs_toml"\n')
    assert load_config(environ={}, cwd=tmp_path).schema == "from_dbjobs_toml"
    explicit = tmp_path / "other.toml"
    explicit.write_text('schema = "explicit"\n' + ONE_JOB)
    config = load_config(explicit, environ={}, cwd=tmp_path)
    assert config.schema == "explicit"
    assert [j.name for j in config.jobs] == ["sessions"]  # named jobs replace the defaults


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "dbjobs.toml").write_text('enabled = true\nschema = "a"\n')
    env = {
        "JOB_ENABLE_CLEANUP": "false",
        "JOB_REFRESH_TOKEN_CLEANUP": "0 30 * * * *",
        "JOB_LOGIN_CLEANUP": "0 0 3 * * *",
        "DBJOBS_SCHEMA": "b",
    }
    config = load_config(environ=env, cwd=tmp_path)
    assert config.enabled is False
    assert config.schema == "b"
    schedules = {j.name: j.schedule for j in config.jobs}
    assert schedules["refresh_tokens"] == "30 * * * *"
    assert schedules["login_attempts"] == "0 3 * * *"
    assert schedules["password_resets"] == "10 * * * *"
    # DBJOBS_ENABLED, the newer name, wins over the original backend's variable.
    assert load_config(environ={**env, "DBJOBS_ENABLED": "yes"}, cwd=tmp_path).enabled is True


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("colour = 'blue'\n", {}, "unknown key 'colour'"),
        (ONE_JOB + "retention = '1 day'\n", {}, "job 'sessions': unknown key 'retention'"),
        (ONE_JOB.replace('retain = "1 day"\n', ""), {}, "job 'sessions': missing key 'retain'"),
        (ONE_JOB.replace("*/15 * * * *", "61 * * * *"), {}, "job 'sessions': schedule:"),
        (ONE_JOB.replace("*/15 * * * *", "0 0 L * *"), {}, "pg_cron does not support"),
        (ONE_JOB.replace("*/15 * * * *", "30 0 * * * *"), {}, "seconds field must be 0"),
        (ONE_JOB + "batch_size = 0\n", {}, "job 'sessions': batch_size must be a positive integer"),
        (ONE_JOB + "batch_size = -5\n", {}, "batch_size must be a positive integer"),
        (ONE_JOB + 'batch_size = "100"\n', {}, "batch_size must be a positive integer"),
        (ONE_JOB + "batch_size = true\n", {}, "batch_size must be a positive integer"),
        (ONE_JOB + "batch_size = 1.5\n", {}, "batch_size must be a positive integer"),
        (ONE_JOB.replace('["expires_at"]', "[]"), {}, "job 'sessions': expires"),
        (ONE_JOB.replace('"auth.sessions"', "42"), {}, "job 'sessions': table must be a non-empty string"),
        (ONE_JOB + 'where = ""\n', {}, "job 'sessions': where must be a non-empty string"),
        (ONE_JOB.replace("jobs.sessions", 'jobs."bad name"'), {}, "invalid job name"),
        ("enabled = 'sometimes'\n", {}, "enabled must be true or false"),
        ("schema = 'x'\n[jobs\n", {}, "invalid TOML"),
        ("", {"JOB_ENABLE_CLEANUP": "maybe"}, "JOB_ENABLE_CLEANUP='maybe' is not a boolean"),
        (
            "",
            {"JOB_PASSWORD_CLEANUP": "15 0 * * * *"},
            "JOB_PASSWORD_CLEANUP: schedule: '15 0 * * * *' has seconds",
        ),
        ("", {"JOB_EMAIL_CLEANUP": "every hour"}, "JOB_EMAIL_CLEANUP: schedule:"),
    ],
)
def test_invalid_values_name_the_job_and_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "dbjobs.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(environ=env, cwd=tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_schedule_forms_pg_cron_accepts(tmp_path: Path) -> None:
    for given, stored in [
        ("@hourly", "@hourly"),
        ("0 0 * * * *", "0 * * * *"),
        ("*/5  1-3 * JAN mon", "*/5 1-3 * JAN mon"),
        ("30 seconds", "30 seconds"),
    ]:
        (tmp_path / "dbjobs.toml").write_text(ONE_JOB.replace("*/15 * * * *", given))
        assert load_config(environ={}, cwd=tmp_path).jobs[0].schedule == stored


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_dsn_sources_in_order() -> None:
    env = {"DBJOBS_DSN": "dbname=a", "DATABASE_URL": "postgresql+psycopg://u@h/b"}
    assert resolve_dsn("dbname=flag", env) == "dbname=flag"
    assert resolve_dsn(None, env) == "dbname=a"
    assert resolve_dsn(None, {"DATABASE_URL": env["DATABASE_URL"]}) == "postgresql://u@h/b"
    assert resolve_dsn(None, {}) == ""  # libpq's PG* variables apply
