"""Read dbjobs' history and pg_cron's job table into a Report of each job's state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from . import cron, schedule
from .config import Config

# A job's state -> its contribution to the overall status (SPEC section 5).
STATE_STATUS = {
    "ok": "pass",
    "pending": "pass",
    "inactive": "pass",
    "failing": "warn",
    "stale": "warn",
    "missing": "fail",
}
SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class JobStatus:
    name: str
    schedule: str
    active: bool
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


# Latest finished run and latest success per job: one probe each of the
# (job, id DESC) indexes, whatever the size of the history.
HISTORY = """
SELECT j.name, last.started_at, last.status, last.error, last.rows_deleted,
       extract(epoch FROM last.finished_at - last.started_at) * 1000,
       success.finished_at
  FROM unnest(%s::text[]) AS j(name)
  LEFT JOIN LATERAL (
        SELECT started_at, finished_at, status, error, rows_deleted FROM {run} r
         WHERE r.job = j.name AND r.status IN ('succeeded', 'failed')
         ORDER BY r.id DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (
        SELECT finished_at FROM {run} r
         WHERE r.job = j.name AND r.status = 'succeeded'
         ORDER BY r.id DESC LIMIT 1) success ON true
"""


def status(conn: psycopg.Connection[Any], config: Config) -> Report:
    """Each configured job's state, and the overall pass / warn / fail."""
    now = datetime.now(UTC)
    names = [job.name for job in config.jobs]
    with conn.transaction():
        installed = _installed(conn, config.schema)
        history = {}
        if installed:
            query = sql.SQL(HISTORY).format(run=sql.Identifier(config.schema, "run"))
            history = {row[0]: row[1:] for row in conn.execute(query, [names]).fetchall()}
        with cron.locate(conn, config, for_changes=False) as site:
            database = site.database
            registered = site.jobs()
            scheduler = _scheduler(site.conn)

    jobs = []
    for job in config.jobs:
        cron_job = registered.get(job.name)
        last_at, last_status, last_error, rows, duration, success_at = history.get(job.name, (None,) * 6)
        if cron_job is None or not installed:
            state = "missing"
        elif not config.enabled or not cron_job.active:
            state = "inactive"
        elif last_status is None:
            state = "pending"
        elif last_status == "failed":
            state = "failing"
        else:
            state = "ok"
        jobs.append(
            JobStatus(
                name=job.name,
                schedule=job.schedule,
                active=bool(cron_job and cron_job.active),
                state=state,
                status=STATE_STATUS[state],
                last_run_at=last_at,
                last_run_status=last_status,
                last_success_at=success_at,
                last_error=last_error,
                last_rows_deleted=rows,
                last_duration_ms=round(float(duration), 1) if duration is not None else None,
                next_run_at=schedule.next_fire(job.schedule, now) if state != "inactive" else None,
            )
        )

    overall = max((j.status for j in jobs), key=SEVERITY.__getitem__, default="pass")
    if not installed or scheduler.running is False:
        overall = "fail"
    return Report(overall, now, database, scheduler, jobs, installed)


def _installed(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(format('%%I.run', %s::text)) IS NOT NULL", [schema]).fetchone()
    return bool(row and row[0])


def _scheduler(conn: psycopg.Connection[Any]) -> Scheduler:
    row = conn.execute(
        """
        SELECT pg_is_in_recovery(),
               EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pg_cron scheduler'),
               pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
        """
    ).fetchone()
    assert row is not None
    standby, seen, may_see = row
    if standby:
        return Scheduler(None, "hot standby: pg_cron's scheduler runs on the primary")
    if seen:
        return Scheduler(True, "pg_cron scheduler is running")
    if not may_see:
        return Scheduler(None, "cannot see pg_cron's scheduler: GRANT pg_read_all_stats to this role")
    return Scheduler(
        False, "pg_cron scheduler is not running: check shared_preload_libraries and restart PostgreSQL"
    )
