"""dbjobs doctor: check every prerequisite and say how to fix what fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import catalog, cron, sqlfiles
from .config import Config
from .errors import DbjobsError
from .install import MIN_SERVER_VERSION
from .status import SEVERITY, status


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        lines = [f"{self.status.upper():<5} {self.name}: {self.detail}"]
        if self.fix:
            lines.append(f"      fix: {self.fix}")
        return lines


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=SEVERITY.__getitem__, default="pass")


def doctor(conn: psycopg.Connection[Any], config: Config) -> list[Check]:
    """Every check, in the order a newcomer would fix them."""
    info = conn.info
    checks = [Check("connection", "pass", f"{info.user}@{info.host}:{info.port}/{info.dbname}")]
    major = info.server_version // 10000
    if info.server_version < MIN_SERVER_VERSION:
        checks.append(
            Check("server version", "fail", f"PostgreSQL {major}", "upgrade to PostgreSQL 13 or later")
        )
        return checks
    checks.append(Check("server version", "pass", f"PostgreSQL {major}"))

    preload, may_create = conn.execute(sqlfiles.query("install.sql", "preload")).fetchone() or (None, False)
    try:
        with cron.locate(conn, config, for_changes=False) as site:
            checks += _pg_cron_checks(site, preload, config.enabled)
    except DbjobsError as exc:
        checks.append(Check("pg_cron", "fail", str(exc)))
        return checks

    try:
        jobs = catalog.validate(conn, config)
    except DbjobsError as exc:
        checks.append(Check("configuration", "fail", str(exc), "fix the configuration (see the README)"))
        return checks
    checks.append(Check("configuration", "pass", f"{len(jobs)} jobs from {config.source}"))
    checks += _index_checks(conn, jobs)

    try:
        report = status(conn, config)
    except (DbjobsError, psycopg.Error) as exc:
        checks.append(Check("jobs", "fail", f"cannot read the status: {' '.join(str(exc).split())}"))
        return checks
    if not report.installed:
        fix = (
            "run `dbjobs install`"
            if may_create
            else "GRANT CREATE ON DATABASE to this role, then `dbjobs install`"
        )
        checks.append(Check("installed", "warn", "dbjobs is not installed in this database", fix))
    else:
        states = {job.name: job.state for job in report.jobs}
        bad = {name: state for name, state in states.items() if state not in ("ok", "pending", "inactive")}
        checks.append(
            Check(
                "jobs",
                worst([Check("", job.status, "") for job in report.jobs]),
                ", ".join(f"{name} {state}" for name, state in states.items()),
                "see `dbjobs status` for each job's error" if bad else None,
            )
        )
    return checks


def _pg_cron_checks(site: cron.CronSite, preload: str | None, enabled: bool) -> list[Check]:
    version = site.version_text
    where = "this database" if site.same_database else f"database {site.cron_database!r}"
    checks = [Check("pg_cron", "pass", f"pg_cron {version} in {where} (cron.database_name)")]
    if preload is not None and "pg_cron" not in preload:
        fix = "add pg_cron to shared_preload_libraries and restart PostgreSQL"
        checks.append(Check("preloaded", "fail", f"shared_preload_libraries = {preload!r}", fix))
    row = site.conn.execute(sqlfiles.query("status.sql", "scheduler"), {"grace": "0"}).fetchone()
    standby, running, may_see = row[:3] if row else (False, False, False)
    if standby:
        checks.append(Check("scheduler", "pass", "hot standby: pg_cron's scheduler runs on the primary"))
    elif running:
        checks.append(Check("scheduler", "pass", "pg_cron scheduler is running"))
    elif may_see:
        fix = "restart PostgreSQL (pg_cron does not restart a terminated launcher); check its log"
        checks.append(Check("scheduler", "fail", "pg_cron scheduler is not running", fix))
    else:
        checks.append(Check("scheduler", "warn", "cannot see it", "GRANT pg_read_all_stats to this role"))

    role = site.conn.execute("SELECT current_user").fetchone()
    grant = cron.GRANT_HINT.format(role=role[0] if role else "<role>")
    if not site.usage:
        checks.append(Check("privileges", "fail", "no USAGE on schema cron", grant))
    elif not site.same_database and not site.may_execute(cron.SCHEDULE_IN_DATABASE, cron.ALTER_JOB):
        checks.append(Check("privileges", "fail", "may not schedule jobs in another database", grant))
    elif not enabled and not site.may_execute(cron.ALTER_JOB):
        checks.append(Check("privileges", "fail", "enabled = false needs cron.alter_job, not granted", grant))
    else:
        checks.append(Check("privileges", "pass", "may schedule and change dbjobs' jobs"))
    return checks


def _index_checks(conn: psycopg.Connection[Any], jobs: list[catalog.ResolvedJob]) -> list[Check]:
    checks = []
    for job in jobs:
        missing = [column for column in job.job.expires if not _indexed(conn, job.qualified_table, column)]
        name = f"index for {job.name}"
        if not missing:
            checks.append(Check(name, "pass", f"{', '.join(job.job.expires)} indexed"))
            continue
        table = job.qualified_table
        columns = [sql.Identifier(column).as_string(None) for column in missing]
        if job.partitioned:  # CONCURRENTLY is refused on a partitioned table
            fixes = "; ".join(f"CREATE INDEX ON ONLY {table} ({column})" for column in columns) + (
                ", then on each partition CREATE INDEX CONCURRENTLY and ALTER INDEX ... ATTACH PARTITION"
            )
        else:
            fixes = "; ".join(f"CREATE INDEX CONCURRENTLY ON {table} ({column})" for column in columns)
        detail = f"no index leads with {', '.join(missing)}: each run reads the whole of {table}"
        checks.append(Check(name, "warn", detail, fixes))
    return checks


def _indexed(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    query = sqlfiles.query("install.sql", "index_for_column")
    row = conn.execute(query, {"table": table, "column": column}).fetchone()
    return bool(row and row[0])
