"""Read dbjobs' history and pg_cron's tables into a Report of each job's state (README: "Status")."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.rows import class_row

from . import cron, schedule, sqlfiles
from .config import DEFAULT_SCHEMA, Config
from .errors import one_line_error

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
# status --backlog: each job's count may take this long (a statement timeout),
# and all of them together this long; a job past either reports its backlog
# unknown, with the reason, and status goes on.
BACKLOG_TIMEOUT = 1.0
BACKLOG_BUDGET = 5.0
# A backlog that grew over this many consecutive finished runs is a warning.
BACKLOG_GROWTH_RUNS = 3
# pg_cron gives up on a run that has not connected within 10 s (its task start
# timeout): a run still starting, connecting or sending this long after it was
# due (or grace, when that is shorter) means its scheduler is stuck.
STUCK_AFTER = timedelta(minutes=2)
# The backlog's keys, in the JSON only when status was asked for it.
BACKLOG_KEYS = ("backlog_rows", "backlog_exact", "oldest_expired_at", "backlog_error")


@dataclass
class JobStatus:
    name: str
    schedule: str
    active: bool | None
    state: str
    status: str
    last_run_at: datetime | None = None
    last_run_status: str | None = None
    last_trigger: str | None = None  # scheduled | manual | retry, for dbjobs' own runs
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_rows_deleted: int | None = None
    last_duration_ms: float | None = None
    next_run_at: datetime | None = None
    stale_at: datetime | None = None
    # The last run's rows left for a later run (locked), and rows deleted by
    # ON DELETE CASCADE per child table (counted as they went; None: none).
    last_rows_skipped: int | None = None
    cascaded_rows: dict[str, int] | None = None
    # The time the last finished run waited for lagging standbys (max_replica_lag).
    last_replica_wait_seconds: float | None = None
    # Failed runs since the latest success or partial run (dbjobs' history;
    # counted up to 1000), and the fail_after that turns them into a fail.
    consecutive_failures: int | None = None
    fail_after: int | None = None
    # The run in progress: since when, and the rows it deleted so far.
    running_since: datetime | None = None
    running_rows: int | None = None
    max_runtime_seconds: float | None = None
    # Runs per outcome since install (dbjobs_job_runs_total).
    runs_total: dict[str, int] | None = None
    # When dbjobs' _retry job runs it again after its failed run (retry_after; None: no retry due).
    retry_at: datetime | None = None
    # Why the job is warn (or fail) although its state alone would pass.
    warnings: list[str] = field(default_factory=list)
    # status(backlog=True): the rows eligible for deletion now (exact up to a
    # threshold, else the planner's estimate: backlog_exact says which), the
    # expiry time of the oldest of them, or why they could not be read.
    backlog_rows: int | None = None
    backlog_exact: bool | None = None
    oldest_expired_at: datetime | None = None
    backlog_error: str | None = None


@dataclass
class Scheduler:
    running: bool | None
    detail: str
    timezone: str = "UTC"  # the zone pg_cron fires schedules in
    timezone_source: str = "pg_cron 1.4 runs schedules in UTC"
    paused: bool | None = False  # cron.launch_active_jobs = off (pg_cron 1.6); None: cannot be read
    # cron.log_run: off, pg_cron records no runs, so failures only it sees are invisible; None: unknown
    log_run: bool | None = True
    state: str = ""  # detail is "<state>: <advice>"
    advice: str | None = None  # what to do, when something is wrong


@dataclass
class Report:
    status: str
    checked_at: datetime
    database: str
    scheduler: Scheduler
    jobs: list[JobStatus] = field(default_factory=list)
    installed: bool = True
    schema: str = DEFAULT_SCHEMA
    # How the configuration found beside the caller differs from what is
    # installed (never how status finds its jobs: those are the installed ones).
    drift: list[str] = field(default_factory=list)
    backlog: bool = False  # the jobs' backlog was read (status(backlog=True))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["installed"]
        if not data.pop("backlog"):
            for job in data["jobs"]:
                for key in BACKLOG_KEYS:
                    del job[key]
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
    trigger: str | None = None
    rows_skipped: int | None = None
    cascaded_rows: dict[str, int] | None = None
    replica_waited: timedelta | None = None


@dataclass(frozen=True)
class JobFacts:
    """What the database says about one job."""

    registered: cron.CronJob | None
    installed_at: datetime | None
    max_age: timedelta | None
    last_run: LastRun | None
    last_success_at: datetime | None
    cron_failure: LastRun | None  # pg_cron's latest run of the job, when it failed
    partial_at: datetime | None = None  # the end of its latest partial run (progress too)
    recent_outcomes: tuple[str, ...] = ()  # of its latest finished runs, newest first (3 at most)
    consecutive_failures: int | None = None
    fail_after: int | None = None
    running_since: datetime | None = None
    running_rows: int | None = None
    max_runtime: timedelta | None = None
    runs_total: dict[str, int] | None = None
    # What its latest finished runs left (backlog_after), newest first, and its batch_size.
    recent_backlog: tuple[int | None, ...] = ()
    batch_size: int | None = None
    # Its latest pg_cron run, when still starting, connecting or sending: that
    # status and its start_time (pg_cron sets none before running); and the end
    # of its latest finished pg_cron run, after which that one was due.
    cron_pending: str | None = None
    cron_pending_start: datetime | None = None
    cron_previous_end: datetime | None = None
    retry: tuple[timedelta, timedelta] | None = None  # (retry_after, retry_cap) when retry_after is set


# A job whose latest runs all stopped at max_runtime never catches up.
PARTIAL_STREAK = 3


@dataclass(frozen=True)
class InstalledJob:
    """A row of status_history() (read by column name): one job of dbjobs' job table, or a name
    asked for that is not there, with its latest finished run and its latest success."""

    name: str
    installed: bool  # False: asked for (configured) but not in the job table
    enabled: bool  # as install left the jobs (enabled in the configuration)
    installed_at: datetime | None
    max_age: timedelta | None
    definition: dict[str, Any] | None  # the job table's row
    started_at: datetime | None
    finished_at: datetime | None
    status: str | None
    error: str | None
    rows_deleted: int | None
    run_trigger: str | None
    rows_skipped: int | None
    cascaded_rows: dict[str, int] | None
    success_at: datetime | None
    partial_at: datetime | None
    recent_outcomes: list[str] | None
    consecutive_failures: int | None
    running_since: datetime | None
    running_rows: int | None
    max_runtime: timedelta | None
    fail_after: int | None
    runs: dict[str, int] | None
    recent_backlog: list[int | None] | None
    replica_waited: timedelta | None = None  # absent from an install older than version 5

    @property
    def schedule(self) -> str:
        return str((self.definition or {}).get("schedule") or "")

    @property
    def last_run(self) -> LastRun | None:
        if self.status is None:
            return None
        return LastRun(
            self.started_at,
            self.finished_at,
            self.status,
            self.error,
            self.rows_deleted,
            self.run_trigger,
            self.rows_skipped,
            self.cascaded_rows,
            self.replica_waited,
        )


def status(
    conn: psycopg.Connection[Any],
    config: Config | None = None,
    *,
    schema: str | None = None,
    backlog: bool = False,
) -> Report:
    """The state of every job installed in ``schema``, and the overall pass / warn / fail.

    The jobs are read from the database, whatever ``config`` says: a health
    check runs where no configuration is. ``config`` supplies the schema (unless
    ``schema`` is given), grace and cron_timezone; when it was read from a file,
    how it differs from what is installed is reported as drift (a warning).

    Bounded in time: each statement may take at most STATEMENT_TIMEOUT. Works
    for the role that installed dbjobs and for a monitoring role granted the
    status functions (see sql/routines.sql).

    ``backlog``: also count each job's rows eligible for deletion now (see
    read_backlog), a query on each job's table: left out by default, so that a
    readiness probe reads only dbjobs' own history.
    """
    config = config or Config(jobs=())
    schema = schema or config.schema
    compare = config.from_file
    with conn.transaction():
        _bound(conn)
        installed, direct = _installed(conn, schema)
        asked = [job.name for job in config.jobs] if compare else []
        rows = _history(conn, schema, asked) if installed else []
        jobs_here = [row for row in rows if row.installed]
        enabled = jobs_here[0].enabled if jobs_here else config.enabled
        with cron.locate(conn, config, for_changes=False) as site:
            if not site.same_database:
                _bound(site.conn)
            scheduler, now, grace = read_scheduler(site, config)
            names = [row.name for row in jobs_here] + [cron.MAINTENANCE_JOB]
            jobnames = {site.job_name(name): name for name in names}
            registered: dict[str, cron.CronJob] | None = {}
            cron_runs: dict[str, LastRun] = {}
            pending: dict[str, tuple[str, datetime | None]] = {}
            if not installed:
                pass
            elif site.same_database:
                registered, cron_runs, pending = _cron_facts(conn, schema, jobnames)
            elif direct and site.usage:
                registered = site.jobs()
                cron_runs, pending = _cron_latest(site.conn, registered)
            else:  # a monitoring role cannot see pg_cron's rows in another database
                registered, cron_runs = None, {}
            database = site.database
        drift = _drift(conn, config, rows, enabled) if compare and installed else []
    backlogs = read_backlog(conn, schema, [row.name for row in jobs_here]) if backlog else {}

    known = registered is not None
    jobs = []
    for row in jobs_here:
        cron_run = cron_runs.get(row.name)
        failure = cron_run if cron_run and cron_run.status == "failed" else None
        facts = JobFacts(
            registered.get(row.name) if registered is not None else None,
            row.installed_at,
            row.max_age,
            row.last_run,
            row.success_at,
            failure,
            row.partial_at,
            tuple(row.recent_outcomes or ()),
            row.consecutive_failures,
            row.fail_after,
            row.running_since,
            row.running_rows,
            row.max_runtime,
            row.runs,
            recent_backlog=tuple(row.recent_backlog or ()),
            batch_size=(row.definition or {}).get("batch_size"),
            cron_pending=pending[row.name][0] if row.name in pending else None,
            cron_pending_start=pending[row.name][1] if row.name in pending else None,
            cron_previous_end=cron_run.finished_at if cron_run else None,
            retry=_retry_settings(conn, row.definition),
        )
        job = job_status(
            row.name,
            row.schedule,
            facts,
            now,
            grace,
            enabled=enabled,
            known=known,
            timezone=scheduler.timezone,
        )
        if row.name in backlogs:
            job.backlog_rows, job.backlog_exact, job.oldest_expired_at, job.backlog_error = backlogs[row.name]
        jobs.append(job)

    # dbjobs' maintenance job runs plain SQL, so pg_cron's history is its only
    # history, and only its latest 2,000 runs are read: it is reported ok or
    # failing from its latest run seen there, pending when none is, never stale.
    # Where pg_cron's rows cannot be read at all, it is left out.
    if known and installed:
        cron_run = cron_runs.get(cron.MAINTENANCE_JOB)
        success_at = cron_run.finished_at if cron_run and cron_run.status == "succeeded" else None
        assert registered is not None
        facts = JobFacts(registered.get(cron.MAINTENANCE_JOB), None, None, cron_run, success_at, None)
        jobs.append(
            job_status(
                cron.MAINTENANCE_JOB,
                cron.MAINTENANCE_SCHEDULE,
                facts,
                now,
                grace,
                enabled=True,
                timezone=scheduler.timezone,
            )
        )

    overall = max((j.status for j in jobs), key=SEVERITY.__getitem__, default="pass")
    if drift or scheduler.paused:
        overall = max(overall, "warn", key=SEVERITY.__getitem__)
    if not installed or scheduler.running is False:
        overall = "fail"
    return Report(overall, now, database, scheduler, jobs, installed, schema, drift, backlog)


def job_status(
    name: str,
    schedule_: str,
    facts: JobFacts,
    now: datetime,
    grace: timedelta,
    *,
    enabled: bool,
    known: bool = True,
    timezone: str = "UTC",
) -> JobStatus:
    """The state of one installed job from the facts (pure: no database).

    ``known`` is false when pg_cron's rows could not be read (a monitoring role,
    pg_cron in another database): registration is then taken on trust and
    staleness still catches a job that does not run. ``timezone`` is the zone
    pg_cron fires schedules in.
    """
    last = facts.last_run
    # A failure only pg_cron saw counts when it is newer than dbjobs' own latest
    # run, or could not be placed in time at all (pg_cron never started it).
    failure = facts.cron_failure
    if failure and (last is None or failure.at is None or (last.finished_at or last.at or now) < failure.at):
        last = failure

    stale_at = _stale_at(schedule_, facts, grace, timezone)
    active = facts.registered.active if facts.registered else (enabled if not known else False)
    error = last.error if last else None
    if known and facts.registered is None:
        state = "missing"
        error = "installed by dbjobs but not registered in pg_cron: run `dbjobs install`"
    elif facts.registered is not None and not facts.registered.role_exists:
        state = "failing"  # every run fails to connect, whatever the last one did
        error = (
            f"pg_cron runs it as role {facts.registered.username!r}, which no longer exists: "
            "run `dbjobs install` as an existing role"
        )
    elif not enabled:
        state = "inactive"
    elif not active:  # switched off in pg_cron behind dbjobs' back: it will not run
        state = "stale"
        error = "inactive in pg_cron although installed enabled: run `dbjobs install`"
    elif last is not None and last.status == "failed":
        state = "failing"
    elif stale_at is not None and now > stale_at:
        state = "stale"
    elif last is None:
        state = "pending"
    else:
        state = "ok"  # a partial run is progress: the next run goes on from it

    job_status_ = STATE_STATUS[state]
    warnings = []
    failures = facts.consecutive_failures
    if state == "failing" and facts.fail_after is not None and (failures or 0) >= facts.fail_after:
        job_status_ = "fail"
        warnings.append(f"{failures} consecutive failed runs (fail_after = {facts.fail_after})")
    recent = facts.recent_outcomes
    if state == "ok" and len(recent) >= PARTIAL_STREAK and all(o == "partial" for o in recent):
        warnings.append(
            f"the last {len(recent)} runs all stopped at max_runtime with rows left: the job is not "
            "catching up (raise max_runtime, or run it more often)"
        )
    if facts.running_since is not None and facts.max_runtime is not None and state not in ("inactive",):
        overdue = facts.running_since + facts.max_runtime + grace
        if now > overdue:
            warnings.append(
                f"a run has been running since {_moment(facts.running_since)}, past max_runtime "
                f"({_span(facts.max_runtime)}) plus grace ({_span(grace)}): it is not stopping between "
                "batches (one batch or a lock wait is holding it)"
            )
    growth = _backlog_growth(facts)
    if growth and state not in ("inactive", "missing"):
        warnings.append(growth)
    stuck = _stuck(schedule_, facts, now, grace, timezone)
    if stuck and state not in ("inactive", "missing"):
        warnings.append(stuck)
    if warnings and job_status_ == "pass":
        job_status_ = "warn"

    duration = None
    if last is not None and last.at is not None and last.finished_at is not None:
        duration = round((last.finished_at - last.at).total_seconds() * 1000, 1)
    scheduled = state not in ("inactive", "missing")
    return JobStatus(
        name=name,
        schedule=schedule_,
        active=active if known else None,
        state=state,
        status=job_status_,
        last_run_at=last.at if last else None,
        last_run_status=last.status if last else None,
        last_trigger=last.trigger if last else None,
        last_success_at=facts.last_success_at,
        last_error=error,
        last_rows_deleted=last.rows_deleted if last else None,
        last_rows_skipped=last.rows_skipped if last else None,
        cascaded_rows=last.cascaded_rows if last else None,
        last_replica_wait_seconds=(
            last.replica_waited.total_seconds() if last and last.replica_waited is not None else None
        ),
        last_duration_ms=duration,
        next_run_at=schedule.next_fire(schedule_, now, timezone) if scheduled else None,
        stale_at=stale_at if scheduled else None,
        consecutive_failures=failures,
        fail_after=facts.fail_after,
        running_since=facts.running_since,
        running_rows=facts.running_rows,
        max_runtime_seconds=facts.max_runtime.total_seconds() if facts.max_runtime is not None else None,
        runs_total=facts.runs_total,
        retry_at=retry_at(facts) if scheduled else None,
        warnings=warnings,
    )


def _backlog_growth(facts: JobFacts) -> str | None:
    """Why the job is not keeping up, when each of its latest BACKLOG_GROWTH_RUNS finished runs
    left more rows eligible than the one before, the newest at least a batch of them."""
    left = facts.recent_backlog[:BACKLOG_GROWTH_RUNS]
    if len(left) < BACKLOG_GROWTH_RUNS or any(n is None for n in left):
        return None
    counts = [n for n in left if n is not None]
    if not all(newer > older for newer, older in itertools.pairwise(counts)):
        return None
    if counts[0] < (facts.batch_size or 1):
        return None  # less than the next run's first batch clears: noise (rows locked, say)
    return (
        f"the backlog grew over the last {len(counts)} runs (they left "
        f"{', '.join(str(n) for n in reversed(counts))} rows eligible, newest last): the job is not "
        "keeping up (run it more often, or raise batch_size or max_runtime)"
    )


def _stuck(schedule_: str, facts: JobFacts, now: datetime, grace: timedelta, timezone: str) -> str | None:
    """Why pg_cron looks stuck, when its latest run of the job is still starting, connecting or
    sending longer than STUCK_AFTER (or grace, when shorter) after it was due.

    pg_cron stamps no time on a run before it is running, so it was due, at the
    latest, at the first fire time after the job's previous run ended (its
    previous pg_cron run, or dbjobs' latest run, or the install, whichever is
    last): the time it has waited is at least the time since then.
    """
    if facts.cron_pending is None:
        return None
    since = facts.cron_pending_start
    if since is None:
        ends = [
            t
            for t in (
                facts.cron_previous_end,
                facts.last_run.finished_at if facts.last_run else None,
                facts.installed_at,
            )
            if t is not None
        ]
        if not ends or not schedule_:
            return None
        since = schedule.next_fire(schedule_, max(ends), timezone)
    bound = min(STUCK_AFTER, grace)
    if now - since <= bound:
        return None
    return (
        f"pg_cron's run of it has been {facts.cron_pending} since {_moment(since)} or earlier, longer "
        f"than {_span(bound)}: pg_cron gives up on a connection after 10 s, so its scheduler is stuck "
        "(pg_stat_activity shows what the 'pg_cron scheduler' waits for)"
    )


def retry_at(facts: JobFacts) -> datetime | None:
    """When dbjobs' _retry job runs the job again, by the rule of retries() in sql/routines.sql: its
    latest run (in dbjobs' history) failed, n runs in a row, and retry_after * 2^(n - 1) after it
    ended comes at least a minute before one period after the minute it started."""
    last = facts.last_run
    if facts.retry is None or last is None or last.status != "failed" or not last.at or not last.finished_at:
        return None
    after, cap = facts.retry
    failures = max(facts.consecutive_failures or 1, 1)
    seconds = after.total_seconds() * 2.0 ** min(failures - 1, 100)
    before_next = last.at.replace(second=0, microsecond=0) + cap - timedelta(minutes=1) - last.finished_at
    if seconds > before_next.total_seconds():
        return None
    return last.finished_at + timedelta(seconds=seconds)


def _retry_settings(
    conn: psycopg.Connection[Any], definition: dict[str, Any] | None
) -> tuple[timedelta, timedelta] | None:
    """A job's retry_after and retry_cap, from its row as status_history() returns it (intervals as text)."""
    after, cap = (definition or {}).get("retry_after"), (definition or {}).get("retry_cap")
    if after is None or cap is None:
        return None
    oid = conn.adapters.types["interval"].oid
    loader = conn.adapters.get_loader(oid, pq.Format.TEXT)
    assert loader is not None
    load = loader(oid, conn).load
    return load(str(after).encode()), load(str(cap).encode())


def _moment(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _span(interval: timedelta) -> str:
    seconds = interval.total_seconds()
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def _stale_at(schedule_: str, facts: JobFacts, grace: timedelta, timezone: str) -> datetime | None:
    """When the job becomes stale without a new success.

    Schedule-aware: the first fire time after the last success (or after the
    install, when it never succeeded) plus ``grace``. With ``max_age``, the
    last success (or install) plus that fixed bound instead.
    """
    # A partial run is progress as much as a success is.
    progress = [t for t in (facts.last_success_at, facts.partial_at) if t is not None]
    since = max(progress) if progress else facts.installed_at
    if since is None:
        return None
    if facts.max_age is not None:
        return since + facts.max_age
    return schedule.next_fire(schedule_, since, timezone) + grace


def _bound(conn: psycopg.Connection[Any]) -> None:
    """Keep a health check cheap and bounded: a statement timeout, and no parallel workers to start."""
    conn.execute(
        f"SET {'LOCAL ' if conn.info.transaction_status else ''}statement_timeout = '{STATEMENT_TIMEOUT}';"
        f"SET {'LOCAL ' if conn.info.transaction_status else ''}max_parallel_workers_per_gather = 0"
    )


Backlog = tuple[int | None, bool | None, datetime | None, str | None]


def read_backlog(conn: psycopg.Connection[Any], schema: str, names: list[str]) -> dict[str, Backlog]:
    """Each job's backlog, through the SECURITY DEFINER status_backlog() (sql/routines.sql):
    (rows eligible now, whether counted exactly, the oldest one's expiry time, None), or
    (None, None, None, why not).

    One statement per job, each in a savepoint with a statement timeout of
    BACKLOG_TIMEOUT, all of them within BACKLOG_BUDGET: a job whose table is too
    slow to count (no index on an expiry column) is reported unknown, and the
    others still are counted.
    """
    found: dict[str, Backlog] = {}
    call = sql.SQL("SELECT * FROM {}(%s)").format(sql.Identifier(schema, "status_backlog"))
    started = time.monotonic()
    with conn.transaction():
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        for name in names:
            timeout = min(BACKLOG_TIMEOUT, BACKLOG_BUDGET - (time.monotonic() - started))
            if timeout < 0.01:
                why = f"not counted: status' {BACKLOG_BUDGET:g} s for the backlog went to the jobs before it"
                found[name] = (None, None, None, why)
                continue
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL statement_timeout = {round(timeout * 1000)}")
                    row = conn.execute(call, [name]).fetchone()
            except psycopg.errors.QueryCanceled:
                why = (
                    f"not counted within {timeout:g} s: it reads too much of the table "
                    "(`dbjobs doctor` checks for an index on each expires column)"
                )
                found[name] = (None, None, None, why)
                continue
            except psycopg.errors.InsufficientPrivilege as exc:
                grant = f"GRANT EXECUTE ON FUNCTION {_qualified(schema, 'status_backlog')}(text)"
                found[name] = (None, None, None, f"{one_line_error(str(exc))}: {grant} to this role")
                continue
            except psycopg.Error as exc:
                found[name] = (None, None, None, one_line_error(str(exc)))
                continue
            assert row is not None
            found[name] = (row[0], row[1], row[2], None)
    return found


def _installed(conn: psycopg.Connection[Any], schema: str) -> tuple[bool, bool]:
    """(dbjobs is installed, this role may read pg_cron's rows of dbjobs' jobs directly)."""
    row = conn.execute(sqlfiles.query("status.sql", "installed"), {"schema": schema}).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def _history(conn: psycopg.Connection[Any], schema: str, asked: list[str]) -> list[InstalledJob]:
    """Every installed job (and each name in ``asked``) with its latest run and success."""
    with conn.cursor(row_factory=class_row(InstalledJob)) as cur:
        query = sql.SQL("SELECT * FROM {}(%s)").format(sql.Identifier(schema, "status_history"))
        return cur.execute(query, [asked]).fetchall()


# What status compares between a configuration file and the job table.
_COMPARED = (
    "table", "expires", "retain", "where", "batch_size", "schedule", "max_age", "partitions",
    "max_runtime", "fail_after", "retry_after", "max_replica_lag", "batch_pause", "archive",
)  # fmt: skip


def _drift(
    conn: psycopg.Connection[Any], config: Config, rows: list[InstalledJob], enabled: bool
) -> list[str]:
    """How ``config`` differs from what is installed, one line per job; [] when it does not.

    The server resolves the table names and spells the intervals, as install
    would, so that "24 hours" and "1 day" compare as the server stores them.
    """
    source = config.source
    installed = {row.name: row.definition or {} for row in rows if row.installed}
    lines = []
    try:
        with conn.transaction():
            resolved = conn.execute(
                sqlfiles.query("status.sql", "resolve_config"),
                {
                    "tables": [job.table for job in config.jobs],
                    "retains": [job.retain for job in config.jobs],
                    "max_ages": [job.max_age for job in config.jobs],
                    "max_runtimes": [job.max_runtime for job in config.jobs],
                    "retry_afters": [job.retry_after for job in config.jobs],
                    "lags": [job.max_replica_lag for job in config.jobs],
                    "pauses": [job.batch_pause for job in config.jobs],
                    "archives": [job.archive for job in config.jobs],
                },
            ).fetchall()
    except psycopg.Error as exc:
        return [f"{source} cannot be compared with what is installed: {one_line_error(str(exc))}"]
    for job, (table, retain, max_age, max_runtime, retry_after, lag, pause, archive) in zip(
        config.jobs, resolved, strict=True
    ):
        have = installed.pop(job.name, None)
        if have is None:
            lines.append(f"job {job.name!r} is in {source} but not installed: run `dbjobs install`")
            continue
        want = {
            "table": _qualified(*table) if table else None,
            "expires": list(job.expires),
            "retain": retain,
            "where": job.where,
            "batch_size": job.batch_size,
            "schedule": job.schedule,
            "max_age": max_age,
            "partitions": job.partitions,
            "max_runtime": max_runtime,
            "fail_after": job.fail_after,
            "retry_after": retry_after,
            "max_replica_lag": lag,
            "batch_pause": pause,
            "archive": archive,
        }
        stored = dict(
            have, table=_qualified(have["table_schema"], have["table_name"]), where=have["predicate"]
        )
        diffs = [
            f"{key} {stored.get(key)!r} -> {want[key]!r}" for key in _COMPARED if stored.get(key) != want[key]
        ]
        if diffs:
            lines.append(f"job {job.name!r} differs from {source} ({', '.join(diffs)}): run `dbjobs install`")
    lines += [
        f"job {name!r} is installed but not in {source}: run `dbjobs install` to remove it"
        for name in sorted(installed)
    ]
    if any(row.installed for row in rows) and enabled != config.enabled:
        lines.append(
            f"enabled is {str(enabled).lower()} as installed, {str(config.enabled).lower()} in {source}: "
            "run `dbjobs install`"
        )
    return lines


def _qualified(schema: str, name: str) -> str:
    return sql.Identifier(schema, name).as_string(None)


Pending = dict[str, tuple[str, datetime | None]]


def _cron_facts(
    conn: psycopg.Connection[Any], schema: str, jobnames: dict[str, str]
) -> tuple[dict[str, cron.CronJob], dict[str, LastRun], Pending]:
    """pg_cron's jobs, latest finished runs and runs not yet running (starting, connecting,
    sending), through the SECURITY DEFINER status function (same database)."""
    rows = conn.execute(
        sql.SQL("SELECT * FROM {}(%s, %s)").format(sql.Identifier(schema, "status_cron")),
        [list(jobnames), CRON_RUN_WINDOW],
    ).fetchall()
    registered, runs, pending = {}, {}, {}
    database = conn.info.dbname
    for row in rows:
        jobid, jobname, schedule_, active, username, role_exists, run_status, message, start, end = row[:10]
        name = jobnames[jobname]
        registered[name] = cron.CronJob(
            jobid, jobname, schedule_, "", database, active, username, role_exists
        )
        if run_status is not None:
            runs[name] = _last_run(run_status, message, start, end)
        if row[10] is not None:
            pending[name] = (row[10], row[11])
    return registered, runs, pending


def _cron_latest(
    conn: psycopg.Connection[Any], registered: dict[str, cron.CronJob]
) -> tuple[dict[str, LastRun], Pending]:
    """The same as _cron_facts' runs, read directly where pg_cron lives in another database."""
    if not registered:
        return {}, {}
    last = conn.execute(sqlfiles.query("status.sql", "cron_last_runid")).fetchone()
    by_id = {job.jobid: name for name, job in registered.items()}
    rows = conn.execute(
        sqlfiles.query("status.sql", "cron_latest_runs"),
        {"floor": (last[0] if last else 0) - CRON_RUN_WINDOW, "jobids": list(by_id)},
    ).fetchall()
    runs, pending = {}, {}
    for jobid, status_, message, start, end, pending_status, pending_start in rows:
        if status_ is not None:
            runs[by_id[jobid]] = _last_run(status_, message, start, end)
        if pending_status is not None:
            pending[by_id[jobid]] = (pending_status, pending_start)
    return runs, pending


def _last_run(run_status: str, message: str | None, start: datetime | None, end: datetime | None) -> LastRun:
    error = f"pg_cron: {one_line_error(message)}" if run_status == "failed" else None
    deleted = re.fullmatch(r"DELETE (\d+)", message or "")  # the command tag of a plain DELETE
    return LastRun(start or end, end, run_status, error, int(deleted[1]) if deleted else None)


def read_scheduler(site: cron.CronSite, config: Config) -> tuple[Scheduler, datetime, timedelta]:
    """pg_cron's launcher, its settings, and the server's clock (the history's timestamps come from it).

    Also what doctor reports of the scheduler, so that both say the same.
    """
    row = site.conn.execute(sqlfiles.query("status.sql", "scheduler"), {"grace": config.grace}).fetchone()
    assert row is not None
    standby, seen, may_see, now, grace_interval, may_read_settings, settings, started = row
    settings = settings or {}
    library = _library_version(site, started)
    label = cron.version_label(library, site.version)
    timezone, source = _timezone(library, label, config, settings)
    paused = None if not may_read_settings else settings.get("cron.launch_active_jobs") == "off"
    log_run = None if not may_read_settings else settings.get("cron.log_run", "on") != "off"
    running: bool | None
    advice = None
    if standby:
        running, state = None, "hot standby: pg_cron's scheduler runs on the primary"
    elif seen and paused:
        running, state = True, "pg_cron scheduler is paused: cron.launch_active_jobs = off, so no job starts"
        advice = "set it to on and reload (SELECT pg_reload_conf())"
    elif seen:
        running, state = True, "pg_cron scheduler is running"
    elif not may_see:
        running, state = None, "cannot see pg_cron's scheduler"
        advice = "GRANT pg_read_all_stats to this role"
    elif library >= (1, 6):
        running, state = False, "pg_cron scheduler is not running"
        advice = (
            "pg_cron 1.6.1+ restarts it within a second, so it keeps failing: read the server log, and "
            f"check that database {site.cron_database!r} exists and cron.database_name names it"
        )
    else:
        running, state = False, "pg_cron scheduler is not running"
        advice = (
            "check shared_preload_libraries and cron.database_name, then restart PostgreSQL "
            f"(pg_cron {label} does not restart a launcher that was terminated)"
        )
    detail = f"{state}: {advice}" if advice else state
    scheduler = Scheduler(running, detail, timezone, source, paused, log_run, state, advice)
    return scheduler, now, grace_interval


# The pg_cron library's (major, minor) per server start: it cannot change while
# the server runs, and telling it takes a few round trips (see cron.library_version)
# that a readiness probe every few seconds need not pay.
_LIBRARY_VERSIONS: dict[tuple[str, str, datetime], tuple[int, int]] = {}


def _library_version(site: cron.CronSite, started: datetime) -> tuple[int, int]:
    key = (site.conn.info.host, str(site.conn.info.port), started)
    if key not in _LIBRARY_VERSIONS:
        _LIBRARY_VERSIONS[key] = site.library_version
    return _LIBRARY_VERSIONS[key]


# The source of a time zone status could not read and was not told.
ASSUMED_DEFAULT = "pg_cron's default, assumed"


def _timezone(
    library: tuple[int, int], label: str, config: Config, settings: dict[str, str]
) -> tuple[str, str]:
    """The zone pg_cron fires schedules in, and where that came from.

    pg_cron 1.5+ reads cron.timezone (default GMT), which only superusers and
    pg_read_all_settings may read; before 1.5 it runs in UTC.
    """
    if library < (1, 5):
        return "UTC", f"pg_cron {label} runs schedules in UTC"
    setting = settings.get("cron.timezone")
    unreadable = "cron.timezone cannot be read by this role"
    if setting is not None:
        try:
            schedule.zone(setting)
            return setting, "cron.timezone"
        except schedule.ScheduleError:  # a POSIX zone string, which zoneinfo cannot compute with
            unreadable = f"cron.timezone {setting!r} is not a zone name dbjobs can compute with"
    if config.cron_timezone:
        return config.cron_timezone, f"cron_timezone in the configuration; {unreadable}"
    return "GMT", f"{ASSUMED_DEFAULT}; {unreadable}: set cron_timezone"
