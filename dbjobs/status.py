"""Read dbjobs' history and pg_cron's tables into a Report of each job's state (SPEC section 5)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from . import cron, schedule, sqlfiles
from .config import Config, Job

# A job's state -> its contribution to the overall status.
STATE_STATUS = {
    "ok": "pass",
    "pending": "pass",
    "inactive": "pass",
    "failing": "warn",
    "stale": "warn",
    "missing": "fail",
}
SEVERITY = {"pass": 0, "warn": 1, "fail": 2}
# How many of the server's latest pg_cron runs are searched for failures that
# only pg_cron saw (it could not even start the job). Bounded so that status
# stays cheap with millions of rows in cron.job_run_details.
CRON_RUN_WINDOW = 2000
STATEMENT_TIMEOUT = "2s"


@dataclass
class JobStatus:
    name: str
    schedule: str
    active: bool | None
    state: str
    status: str
    last_run_at: datetime | None = None
    last_run_status: str | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_rows_deleted: int | None = None
    last_duration_ms: float | None = None
    next_run_at: datetime | None = None
    stale_at: datetime | None = None


@dataclass
class Scheduler:
    running: bool | None
    detail: str


@dataclass
class Report:
    status: str
    checked_at: datetime
    database: str
    scheduler: Scheduler
    jobs: list[JobStatus] = field(default_factory=list)
    installed: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["installed"]
        result: dict[str, Any] = _jsonable(data)
        return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class LastRun:
    """One finished run, from dbjobs' history or from pg_cron's."""

    at: datetime | None
    finished_at: datetime | None
    status: str
    error: str | None = None
    rows_deleted: int | None = None


@dataclass(frozen=True)
class JobFacts:
    """What the database says about one configured job."""

    registered: cron.CronJob | None
    installed_at: datetime | None
    max_age: timedelta | None
    last_run: LastRun | None
    last_success_at: datetime | None
    cron_failure: LastRun | None  # pg_cron's latest run of the job, when it failed


def status(conn: psycopg.Connection[Any], config: Config) -> Report:
    """Each configured job's state, and the overall pass / warn / fail.

    Bounded in time: each statement may take at most STATEMENT_TIMEOUT. Works
    for the role that installed dbjobs and for a monitoring role granted the
    status functions (see sql/schema.sql).
    """
    names = [job.name for job in config.jobs] + [cron.MAINTENANCE_JOB]
    with conn.transaction():
        _bound(conn)
        installed, direct = _installed(conn, config.schema)
        history = _history(conn, config.schema, names) if installed else {}
        with cron.locate(conn, config, for_changes=False) as site:
            if not site.same_database:
                _bound(site.conn)
            scheduler, now, grace = _scheduler(site.conn, config.grace)
            jobnames = {site.job_name(name): name for name in names}
            registered: dict[str, cron.CronJob] | None = {}
            cron_runs: dict[str, LastRun] = {}
            if not installed:
                pass
            elif site.same_database:
                registered, cron_runs = _cron_facts(conn, config.schema, jobnames)
            elif direct and site.usage:
                registered = site.jobs()
                cron_runs = _cron_latest(site.conn, registered)
            else:  # a monitoring role cannot see pg_cron's rows in another database
                registered, cron_runs = None, {}
            database = site.database

    def facts_of(name: str) -> tuple[cron.CronJob | None, LastRun | None, tuple[Any, ...]]:
        registered_job = registered.get(name) if registered is not None else None
        return registered_job, cron_runs.get(name), history.get(name, (None, None, None, None))

    jobs = []
    known = registered is not None
    for job in config.jobs:
        registered_job, cron_run, (installed_at, max_age, last_run, last_success_at) = facts_of(job.name)
        failure = cron_run if cron_run and cron_run.status == "failed" else None
        facts = JobFacts(registered_job, installed_at, max_age, last_run, last_success_at, failure)
        jobs.append(
            job_status(job, facts, now, grace, enabled=config.enabled, installed=installed, known=known)
        )

    # dbjobs' maintenance job runs plain SQL, so pg_cron's history is its only
    # history, and only its latest 2,000 runs are read: it is reported ok or
    # failing from its latest run seen there, pending when none is, never stale.
    # Where pg_cron's rows cannot be read at all, it is left out.
    if known:
        registered_job, cron_run, _ = facts_of(cron.MAINTENANCE_JOB)
        success_at = cron_run.finished_at if cron_run and cron_run.status == "succeeded" else None
        facts = JobFacts(registered_job, None, None, cron_run, success_at, None)
        maintenance = Job(cron.MAINTENANCE_JOB, "", (), config.history_retention, cron.MAINTENANCE_SCHEDULE)
        jobs.append(job_status(maintenance, facts, now, grace, enabled=True, installed=installed))

    overall = max((j.status for j in jobs), key=SEVERITY.__getitem__, default="pass")
    if not installed or scheduler.running is False:
        overall = "fail"
    return Report(overall, now, database, scheduler, jobs, installed)


def job_status(
    job: Job,
    facts: JobFacts,
    now: datetime,
    grace: timedelta,
    *,
    enabled: bool,
    installed: bool,
    known: bool = True,
) -> JobStatus:
    """The state of one job from the facts (pure: no database).

    ``known`` is false when pg_cron's rows could not be read (a monitoring role,
    pg_cron in another database): registration is then taken on trust and
    staleness still catches a job that does not run.
    """
    last = facts.last_run
    # A failure only pg_cron saw counts when it is newer than dbjobs' own latest
    # run, or could not be placed in time at all (pg_cron never started it).
    failure = facts.cron_failure
    if failure and (last is None or failure.at is None or (last.finished_at or last.at or now) < failure.at):
        last = failure

    stale_at = _stale_at(job, facts, grace)
    active = facts.registered.active if facts.registered else (enabled if not known else False)
    error = last.error if last else None
    if not installed or (known and facts.registered is None):
        state = "missing"
    elif not enabled:
        state = "inactive"
    elif not active:  # switched off in pg_cron behind dbjobs' back: it will not run
        state = "stale"
        error = "inactive in pg_cron although enabled in the configuration: run `dbjobs install`"
    elif last is not None and last.status == "failed":
        state = "failing"
    elif stale_at is not None and now > stale_at:
        state = "stale"
    elif last is None:
        state = "pending"
    else:
        state = "ok"

    duration = None
    if last is not None and last.at is not None and last.finished_at is not None:
        duration = round((last.finished_at - last.at).total_seconds() * 1000, 1)
    return JobStatus(
        name=job.name,
        schedule=job.schedule,
        active=active if known else None,
        state=state,
        status=STATE_STATUS[state],
        last_run_at=last.at if last else None,
        last_run_status=last.status if last else None,
        last_success_at=facts.last_success_at,
        last_error=error,
        last_rows_deleted=last.rows_deleted if last else None,
        last_duration_ms=duration,
        next_run_at=schedule.next_fire(job.schedule, now) if state not in ("inactive", "missing") else None,
        stale_at=stale_at if state not in ("inactive", "missing") else None,
    )


def _stale_at(job: Job, facts: JobFacts, grace: timedelta) -> datetime | None:
    """When the job becomes stale without a new success.

    Schedule-aware: the first fire time after the last success (or after the
    install, when it never succeeded) plus ``grace``. With ``max_age``, the
    last success (or install) plus that fixed bound instead.
    """
    since = facts.last_success_at or facts.installed_at
    if since is None:
        return None
    if facts.max_age is not None:
        return since + facts.max_age
    due = schedule.next_fire(job.schedule, since)
    if due is None:  # "N seconds" schedules (pg_cron 1.5+)
        due = since + timedelta(seconds=int(job.schedule.split()[0]))
    return due + grace


def _bound(conn: psycopg.Connection[Any]) -> None:
    """Keep a health check cheap and bounded: a statement timeout, and no parallel workers to start."""
    conn.execute(
        f"SET {'LOCAL ' if conn.info.transaction_status else ''}statement_timeout = '{STATEMENT_TIMEOUT}';"
        f"SET {'LOCAL ' if conn.info.transaction_status else ''}max_parallel_workers_per_gather = 0"
    )


def _installed(conn: psycopg.Connection[Any], schema: str) -> tuple[bool, bool]:
    """(dbjobs is installed, this role may read pg_cron's rows of dbjobs' jobs directly)."""
    row = conn.execute(sqlfiles.query("status.sql", "installed"), {"schema": schema}).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def _history(
    conn: psycopg.Connection[Any], schema: str, names: list[str]
) -> dict[str, tuple[datetime | None, timedelta | None, LastRun | None, datetime | None]]:
    rows = conn.execute(
        sql.SQL("SELECT * FROM {}(%s)").format(sql.Identifier(schema, "status_history")), [names]
    ).fetchall()
    history = {}
    for name, installed_at, max_age, started, finished, status_, error, rows_deleted, success_at in rows:
        last = LastRun(started, finished, status_, error, rows_deleted) if status_ else None
        history[name] = (installed_at, max_age, last, success_at)
    return history


def _cron_facts(
    conn: psycopg.Connection[Any], schema: str, jobnames: dict[str, str]
) -> tuple[dict[str, cron.CronJob], dict[str, LastRun]]:
    """pg_cron's jobs and latest runs, through the SECURITY DEFINER status function (same database)."""
    rows = conn.execute(
        sql.SQL("SELECT * FROM {}(%s, %s)").format(sql.Identifier(schema, "status_cron")),
        [list(jobnames), CRON_RUN_WINDOW],
    ).fetchall()
    registered, runs = {}, {}
    database = conn.info.dbname
    for jobid, jobname, schedule_, active, run_status, message, start, end in rows:
        name = jobnames[jobname]
        registered[name] = cron.CronJob(jobid, jobname, schedule_, "", database, active)
        if run_status is not None:
            runs[name] = _last_run(run_status, message, start, end)
    return registered, runs


def _cron_latest(conn: psycopg.Connection[Any], registered: dict[str, cron.CronJob]) -> dict[str, LastRun]:
    """The same as _cron_facts' runs, read directly where pg_cron lives in another database."""
    if not registered:
        return {}
    last = conn.execute(sqlfiles.query("status.sql", "cron_last_runid")).fetchone()
    by_id = {job.jobid: name for name, job in registered.items()}
    rows = conn.execute(
        sqlfiles.query("status.sql", "cron_latest_runs"),
        {"floor": (last[0] if last else 0) - CRON_RUN_WINDOW, "jobids": list(by_id)},
    ).fetchall()
    return {
        by_id[jobid]: _last_run(status_, message, start, end) for jobid, status_, message, start, end in rows
    }


def _last_run(run_status: str, message: str | None, start: datetime | None, end: datetime | None) -> LastRun:
    error = f"pg_cron: {message or 'failed'}" if run_status == "failed" else None
    deleted = re.fullmatch(r"DELETE (\d+)", message or "")  # the command tag of a plain DELETE
    return LastRun(start or end, end, run_status, error, int(deleted[1]) if deleted else None)


def _scheduler(conn: psycopg.Connection[Any], grace: str) -> tuple[Scheduler, datetime, timedelta]:
    """pg_cron's launcher, and the server's clock (the history's timestamps come from it too)."""
    row = conn.execute(sqlfiles.query("status.sql", "scheduler"), {"grace": grace}).fetchone()
    assert row is not None
    standby, seen, may_see, now, grace_interval = row
    if standby:
        scheduler = Scheduler(None, "hot standby: pg_cron's scheduler runs on the primary")
    elif seen:
        scheduler = Scheduler(True, "pg_cron scheduler is running")
    elif not may_see:
        scheduler = Scheduler(None, "cannot see pg_cron's scheduler: GRANT pg_read_all_stats to this role")
    else:
        scheduler = Scheduler(
            False,
            "pg_cron scheduler is not running: check shared_preload_libraries and cron.database_name, "
            "then restart PostgreSQL (pg_cron does not restart a launcher that was terminated)",
        )
    return scheduler, now, grace_interval
