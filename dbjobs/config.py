"""Load the configuration (README: "Configuration") into frozen dataclasses.

Sources, highest first: explicit overrides (the CLI's flags), the environment,
the config file (``--config``, ``./dbjobs.toml`` or ``[tool.dbjobs]`` in
``./pyproject.toml``), built-in defaults. Everything that can be checked
without a database is checked here; ``catalog.py`` checks the rest against the
live catalog before anything changes.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import schedule
from .errors import ConfigError, collect_problems

DEFAULT_BATCH_SIZE = 20000
DEFAULT_SCHEMA = "dbjobs"
BUILT_IN = "built-in defaults"
JOB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
# A database's name in output and in Prometheus' database label.
DATABASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Job:
    name: str
    table: str
    expires: tuple[str, ...]
    retain: str
    schedule: str
    batch_size: int = DEFAULT_BATCH_SIZE
    where: str | None = None
    max_age: str | None = None
    partitions: str = "drop"
    # A run stops between batches once it has run this long, recorded as partial
    # (None: unbounded); this many consecutive failures make the job fail (None: never).
    # The job's own value, else the top-level one.
    max_runtime: str | None = None
    fail_after: int | None = None
    # After a failed run, run again this long after it ended, doubling per
    # consecutive failure (None: wait for the schedule). See README "Retry with backoff".
    retry_after: str | None = None
    # Between batches, wait while a standby's replay lags more than this (None: never);
    # pause this long after each batch (None: no pause). README "Gentle runs".
    max_replica_lag: str | None = None
    batch_pause: str | None = None
    # A table ("schema.table") each batch moves its rows into instead of deleting them (None: delete).
    archive: str | None = None


@dataclass(frozen=True)
class Database:
    """One of several databases that status, serve, install and doctor work on (``[[databases]]``)."""

    name: str
    dsn: str


@dataclass(frozen=True)
class Config:
    jobs: tuple[Job, ...]
    schema: str = DEFAULT_SCHEMA
    enabled: bool = True
    history_retention: str = "7 days"
    grace: str = "10 minutes"
    cron_dsn: str | None = None
    # pg_cron's time zone (cron.timezone, pg_cron 1.5+), for roles that may not read it.
    cron_timezone: str | None = None
    # The longest one batch's transaction may take (PostgreSQL 17+: transaction_timeout).
    batch_timeout: str = "1 minute"
    # Defaults for the jobs' own keys of the same names (already applied to ``jobs``).
    max_runtime: str | None = None
    fail_after: int | None = None
    retry_after: str | None = None
    max_replica_lag: str | None = None
    batch_pause: str | None = None
    source: str = BUILT_IN
    # The databases to work on, in order; empty: the one database of --dsn.
    databases: tuple[Database, ...] = ()

    def job(self, name: str) -> Job | None:
        return next((j for j in self.jobs if j.name == name), None)

    @property
    def from_file(self) -> bool:
        """Whether the jobs were written by someone (not the built-in defaults)."""
        return self.source != BUILT_IN


DEFAULT_JOBS = (
    Job("refresh_tokens", "refresh_tokens", ("expires_at",), "30 days", "0 * * * *"),
    Job("email_verifications", "email_verifications", ("expires_at", "verified_at"), "24 hours", "5 * * * *"),
    Job("password_resets", "password_resets", ("expires_at", "used_at"), "1 hour", "10 * * * *"),
    Job("login_attempts", "login_attempts", ("created_at",), "7 days", "0 2 * * *"),
)

# The original backend's variables: JOB_<X>_CLEANUP holds a 6-field cron
# expression for one default job.
LEGACY_SCHEDULE_VARS = {
    "JOB_REFRESH_TOKEN_CLEANUP": "refresh_tokens",
    "JOB_EMAIL_CLEANUP": "email_verifications",
    "JOB_PASSWORD_CLEANUP": "password_resets",
    "JOB_LOGIN_CLEANUP": "login_attempts",
}

TOP_KEYS = {
    "schema", "enabled", "history_retention", "grace", "cron_dsn", "cron_timezone", "batch_timeout", "jobs",
    "max_runtime", "fail_after", "retry_after", "max_replica_lag", "batch_pause", "databases",
}  # fmt: skip
JOB_KEYS = {
    "table", "expires", "retain", "schedule", "batch_size", "where", "max_age", "partitions",
    "max_runtime", "fail_after", "retry_after", "max_replica_lag", "batch_pause", "archive",
}  # fmt: skip
# Keys a job takes from the top level when it does not set them.
INHERITED_KEYS = ("max_runtime", "fail_after", "retry_after", "max_replica_lag", "batch_pause")
# What a run does with the partitions of a range-partitioned table that lie
# wholly past retention: drop them, detach them (left as tables of their own),
# or delete their rows in batches like any other rows.
PARTITION_MODES = ("drop", "detach", "delete")
REQUIRED_JOB_KEYS = ("table", "expires", "retain", "schedule")
# DBJOBS_<KEY> overrides a top-level key.
ENV_KEYS = (
    "schema", "enabled", "history_retention", "grace", "cron_dsn", "cron_timezone", "batch_timeout",
    "max_runtime", "fail_after", "retry_after", "max_replica_lag", "batch_pause",
)  # fmt: skip


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    schema: str | None = None,
) -> Config:
    """Read and validate the configuration from the same sources as the CLI.

    ``schema`` (the CLI's --schema) overrides the environment and the file.
    """
    env = os.environ if environ is None else environ
    raw, source = _read_file(path, Path(cwd) if cwd else Path.cwd())
    if schema is not None:
        raw = {**raw, "schema": schema}
        env = {k: v for k, v in env.items() if k != "DBJOBS_SCHEMA"}
    return parse_config(raw, source=source, environ=env)


def _read_file(path: str | os.PathLike[str] | None, cwd: Path) -> tuple[dict[str, Any], str]:
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} not found: fix --config")
        return _parse_toml(file), str(file)
    if (cwd / "dbjobs.toml").is_file():
        return _parse_toml(cwd / "dbjobs.toml"), "dbjobs.toml"
    if (cwd / "pyproject.toml").is_file():
        tool = _parse_toml(cwd / "pyproject.toml").get("tool", {})
        if isinstance(tool, dict) and "dbjobs" in tool:
            if not isinstance(tool["dbjobs"], dict):
                raise ConfigError("pyproject.toml: [tool.dbjobs] must be a table")
            return tool["dbjobs"], "pyproject.toml [tool.dbjobs]"
    return {}, BUILT_IN


def _parse_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None


def parse_config(
    raw: Mapping[str, Any], *, source: str = "config", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed TOML mapping (plus the environment) into a Config.

    Every problem is reported at once, one line each (ConfigError.problems).
    """
    env = {} if environ is None else environ
    problems: list[str] = []
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        problems.append(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")

    values: dict[str, Any] = {k: raw[k] for k in TOP_KEYS - {"jobs", "databases"} if k in raw}
    legacy_enabled = env.get("JOB_ENABLE_CLEANUP")
    with collect_problems(problems):
        if legacy_enabled is not None:
            values["enabled"] = _parse_bool("JOB_ENABLE_CLEANUP", legacy_enabled)
    for key in ENV_KEYS:
        var = f"DBJOBS_{key.upper()}"
        if var in env:
            with collect_problems(problems):
                values[key] = _parse_bool(var, env[var]) if key == "enabled" else env[var]

    if isinstance(values.get("fail_after"), str):  # from the environment
        text = values["fail_after"].strip()
        values["fail_after"] = int(text) if text.isdigit() else text
    with collect_problems(problems):
        if values.get("fail_after") is not None:
            _check_fail_after(source, values["fail_after"])
    texts = ("schema", "history_retention", "grace", "cron_timezone", "batch_timeout", "max_runtime")
    for key in (*texts, "retry_after", "max_replica_lag", "batch_pause"):
        if key in values:
            with collect_problems(problems):
                _require_text(source, key, values[key])
    with collect_problems(problems):
        if isinstance(values.get("schema"), str):
            _check_schema_name(source, values["schema"])
    with collect_problems(problems):
        if isinstance(values.get("cron_timezone"), str):
            _check_timezone(source, values["cron_timezone"])
    if values.get("cron_dsn") is not None:
        with collect_problems(problems):
            _require_text(source, "cron_dsn", values["cron_dsn"])
    if "enabled" in values and not isinstance(values["enabled"], bool):
        problems.append(f"{source}: enabled must be true or false")

    jobs_raw = raw.get("jobs", {})
    jobs: list[Job] = []
    if not isinstance(jobs_raw, dict):
        problems.append(f"{source}: jobs must be a table of [jobs.<name>] tables")
    else:
        for name, spec in jobs_raw.items():
            job = _parse_job(name, spec, problems)
            if job is not None:
                jobs.append(job)
    configured = tuple(jobs) if jobs_raw else DEFAULT_JOBS
    resolved = []
    inherited = {key: values[key] for key in INHERITED_KEYS if values.get(key) is not None}
    for job in configured:
        with collect_problems(problems):
            own = jobs_raw.get(job.name, {}) if isinstance(jobs_raw, dict) else {}
            defaults = {k: v for k, v in inherited.items() if not (isinstance(own, dict) and k in own)}
            resolved.append(replace(_apply_legacy_schedule(job, env), **defaults))
    databases = _parse_databases(source, raw.get("databases", []), problems)
    if problems:
        raise ConfigError(problems=problems)
    return Config(jobs=tuple(resolved), source=source, databases=databases, **values)


def _parse_databases(source: str, raw: Any, problems: list[str]) -> tuple[Database, ...]:
    """``[[databases]]`` tables of ``name`` and ``dsn``: the names unique, each a plain label."""
    if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
        problems.append(f"{source}: databases must be [[databases]] tables, each with name and dsn")
        return ()
    found: list[Database] = []
    for i, entry in enumerate(raw, 1):
        where = f"{source}: databases entry {i}"
        unknown = sorted(set(entry) - {"name", "dsn"})
        if unknown:
            problems.append(f"{where}: unknown key {unknown[0]!r} (known: dsn, name)")
            continue
        name, dsn = entry.get("name"), entry.get("dsn")
        if not isinstance(name, str) or not DATABASE_NAME.match(name):
            problems.append(
                f"{where}: name must be 1-63 letters, digits, '_', '.' or '-' (it labels output and metrics)"
            )
        elif any(d.name == name for d in found):
            problems.append(f"{where}: name {name!r} is used twice: give each database its own name")
        elif not isinstance(dsn, str) or not dsn.strip():
            problems.append(f"{where} ({name}): dsn must be a connection string or URL")
        else:
            found.append(Database(name, dsn))
    return tuple(found)


def _parse_job(name: str, spec: Any, problems: list[str]) -> Job | None:
    """One job, or None with its problems appended to ``problems``."""
    where = f"job {name!r}"
    found: list[str] = []
    if not JOB_NAME.match(name):
        found.append(f"{where}: invalid job name: use letters, digits and _ (a letter first, at most 40)")
    if not isinstance(spec, dict):
        problems.extend([*found, f"{where}: must be a table ([jobs.{name}])"])
        return None
    unknown = sorted(set(spec) - JOB_KEYS)
    if unknown:
        found.append(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(JOB_KEYS))})")
    found += [f"{where}: missing key {key!r}" for key in REQUIRED_JOB_KEYS if key not in spec]

    table = expires = retain = schedule_ = None
    with collect_problems(found):
        table = _require_text(where, "table", spec["table"]) if "table" in spec else None
    expires = spec.get("expires")
    if isinstance(expires, str):
        expires = [expires]
    if "expires" in spec and (
        not isinstance(expires, list) or not expires or not all(isinstance(c, str) and c for c in expires)
    ):
        found.append(f"{where}: expires must be a column name or a non-empty list of column names")
    elif expires and len(set(expires)) != len(expires):
        found.append(f"{where}: expires names a column twice")

    batch_size = spec.get("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        found.append(f"{where}: batch_size must be a positive integer, not {batch_size!r}")
    elif batch_size > 1_000_000:
        found.append(f"{where}: batch_size {batch_size} is too large (at most 1000000)")

    def optional_text(key: str) -> Any:
        """The job's ``key`` as written (None when absent); a value that is not text is a problem."""
        value = spec.get(key)
        with collect_problems(found):
            if value is not None:
                _require_text(where, key, value)
        return value

    predicate, max_age = optional_text("where"), optional_text("max_age")
    with collect_problems(found):
        retain = _require_text(where, "retain", spec["retain"]) if "retain" in spec else None
    with collect_problems(found):
        schedule_ = _parse_schedule(where, "schedule", spec["schedule"]) if "schedule" in spec else None
    max_runtime, retry_after = optional_text("max_runtime"), optional_text("retry_after")
    fail_after = spec.get("fail_after")
    with collect_problems(found):
        if fail_after is not None:
            _check_fail_after(where, fail_after)
    max_replica_lag, batch_pause = optional_text("max_replica_lag"), optional_text("batch_pause")
    archive = optional_text("archive")
    partitions = spec.get("partitions", "drop")
    if partitions not in PARTITION_MODES:
        found.append(
            f"{where}: partitions must be one of {', '.join(map(repr, PARTITION_MODES))}, not {partitions!r}"
        )
    if found:
        problems.extend(found)
        return None
    assert table is not None and retain is not None and schedule_ is not None and expires
    return Job(
        name=name,
        table=table,
        expires=tuple(expires),
        retain=retain,
        schedule=schedule_,
        batch_size=batch_size,
        where=predicate,
        max_age=max_age,
        partitions=partitions,
        max_runtime=max_runtime,
        fail_after=fail_after,
        retry_after=retry_after,
        max_replica_lag=max_replica_lag,
        batch_pause=batch_pause,
        archive=archive,
    )


def _apply_legacy_schedule(job: Job, env: Mapping[str, str]) -> Job:
    for var, job_name in LEGACY_SCHEDULE_VARS.items():
        if job.name == job_name and env.get(var):
            return replace(job, schedule=_parse_schedule(var, "schedule", env[var]))
    return job


def _parse_schedule(where: str, key: str, value: Any) -> str:
    text = _require_text(where, key, value)
    try:
        return schedule.normalize(text)
    except schedule.ScheduleError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


RESERVED_SCHEMAS = {"public", "information_schema", "cron"}


def _check_schema_name(source: str, schema: str) -> None:
    """dbjobs' schema is its own: uninstall drops it whole."""
    if schema in RESERVED_SCHEMAS or schema.startswith("pg_"):
        raise ConfigError(
            f"{source}: schema: {schema!r} is not dbjobs' own: choose a schema for dbjobs alone"
        )
    # '$' would end dollar quoting in dbjobs' SQL, '%' be read as a placeholder by psycopg.
    if len(schema.encode()) > 63 or any(c in schema for c in "$%\x00"):
        raise ConfigError(f"{source}: schema: {schema!r} must be at most 63 bytes, without '$' or '%'")


def _check_timezone(source: str, zone: str) -> None:
    try:
        schedule.zone(zone)
    except schedule.ScheduleError:
        raise ConfigError(
            f"{source}: cron_timezone: {zone!r} is not a time zone name (e.g. 'UTC', 'Europe/Berlin')"
        ) from None


def _check_fail_after(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"{where}: fail_after must be a positive integer (consecutive failures), not {value!r}"
        )


def _require_text(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


def _parse_bool(var: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{var}={value!r} is not a boolean: use true or false")


__all__ = ["DEFAULT_JOBS", "DEFAULT_SCHEMA", "Config", "Job", "load_config", "parse_config"]
