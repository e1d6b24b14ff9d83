"""Status over many databases at once (README: "Many databases").

Each database is read in a thread of its own, on a connection of its own, and
all of them share one deadline: a fleet of fifty takes about as long as its
slowest member, and a database that does not answer is reported ``unknown``
when the deadline passes instead of holding up the others. The worst status
of them all is the overall one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import formats
from .config import Config, Database
from .connection import connect, describe, redact
from .errors import DbjobsError
from .status import Report, status

# The fleet's statuses, best first: a database that cannot be read is worse
# than one that warns, and better than one known to fail.
WORST = ("pass", "warn", "unknown", "fail")
EXIT_CODE = {"pass": 0, "warn": 1, "fail": 2, "unknown": 3}
RUNS_PER_JOB = 30  # the runs serve charts per job (status_runs returns at most status_runs_max)

T = TypeVar("T")


@dataclass(frozen=True)
class Run:
    """One finished run, as status_runs() returns it."""

    started_at: datetime
    finished_at: datetime | None
    status: str
    rows_deleted: int
    error: str | None

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds() * 1000, 1)


@dataclass
class Reading:
    """One database's status, or why it could not be read."""

    database: Database
    report: Report | None = None
    error: str | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)  # per job, oldest first
    runs_problem: str | None = None  # why the runs could not be read (the status still could)

    @property
    def status(self) -> str:
        return self.report.status if self.report is not None else "unknown"

    def to_dict(self) -> dict[str, Any]:
        if self.report is None:
            return {"status": "unknown", "error": self.error}
        return self.report.to_dict()


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=WORST.index, default="pass")


def in_parallel(calls: Sequence[Callable[[], T]], deadline: float) -> list[T | BaseException | None]:
    """Run each call in a daemon thread; its result, its exception, or None where it was still
    running at the deadline (the thread is abandoned: a stalled socket cannot hold up the rest)."""
    results: list[T | BaseException | None] = [None] * len(calls)

    def work(i: int, call: Callable[[], T]) -> None:
        try:
            results[i] = call()
        except BaseException as exc:
            results[i] = exc

    threads = [
        threading.Thread(target=work, args=(i, call), name=f"dbjobs-fleet-{i}", daemon=True)
        for i, call in enumerate(calls)
    ]
    end = time.monotonic() + deadline
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return [None if thread.is_alive() else results[i] for i, thread in enumerate(threads)]


def read_one(
    database: Database,
    config: Config,
    *,
    deadline: float,
    runs: int = 0,
    schema: str | None = None,
    backlog: bool = False,
) -> Reading:
    """Connect to one database and read its status (and with ``runs``, each job's latest runs)."""
    with connect(
        database.dsn,
        autocommit=True,
        connect_timeout=max(1, int(deadline)),
        tcp_user_timeout=int(deadline * 1000),
    ) as conn:
        report = status(conn, config, schema=schema, backlog=backlog)
        reading = Reading(database, report)
        if runs and report.installed:
            reading.runs, reading.runs_problem = _recent_runs(conn, report, runs)
    return reading


def _recent_runs(
    conn: psycopg.Connection[Any], report: Report, per_job: int
) -> tuple[dict[str, list[Run]], str | None]:
    """Each job's latest finished runs, through status_runs() (what a monitoring role may call)."""
    names = [job.name for job in report.jobs]
    query = sql.SQL("SELECT * FROM {}(%s, %s)").format(sql.Identifier(report.schema, "status_runs"))
    try:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '2s'")
            rows = conn.execute(query, [names, per_job]).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return {}, (
            "recent runs not readable: "
            f"GRANT EXECUTE ON FUNCTION {report.schema}.status_runs(text[], integer)"
        )
    except psycopg.errors.UndefinedFunction:
        return {}, "recent runs not readable: dbjobs is older here, run `dbjobs install` to update it"
    found: dict[str, list[Run]] = {}
    for job, started, finished, outcome, rows_deleted, error in rows:
        found.setdefault(job, []).append(Run(started, finished, outcome, int(rows_deleted or 0), error))
    return found, None


def read_all(
    databases: Sequence[Database],
    config: Config,
    *,
    deadline: float,
    runs: int = 0,
    schema: str | None = None,
    config_problem: str | None = None,
    backlog: bool = False,
) -> list[Reading]:
    """Every database's status, read in parallel, all within ``deadline`` seconds."""
    calls = [
        (lambda d=d: read_one(d, config, deadline=deadline, runs=runs, schema=schema, backlog=backlog))
        for d in databases
    ]
    readings = []
    for database, outcome in zip(databases, in_parallel(calls, deadline), strict=True):
        if isinstance(outcome, Reading):
            if config_problem and outcome.report is not None:
                outcome.report.drift.insert(0, config_problem)
                outcome.report.status = worst([outcome.report.status, "warn"])
            readings.append(outcome)
        elif outcome is None:
            readings.append(
                Reading(database, error=f"no answer from {describe(database.dsn)} within {deadline:g} s")
            )
        elif isinstance(outcome, DbjobsError | psycopg.Error):
            readings.append(Reading(database, error=redact(" ".join(str(outcome).split()), database.dsn)))
        else:  # a bug: raised in the caller's thread, not hidden as "unknown"
            raise outcome
    return readings


def all_databases(dsn: str, schema: str, *, deadline: float = 10.0) -> list[Database]:
    """Every database of the server ``dsn`` points at where dbjobs is installed in ``schema``,
    named by its database name. Databases this role may not connect to are left out."""
    with connect(dsn, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
            )
        ]
    candidates = [Database(name, make_conninfo(dsn, dbname=name)) for name in names]

    def has_dbjobs(database: Database) -> bool:
        with connect(database.dsn, autocommit=True, connect_timeout=max(1, int(deadline))) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s"
                " AND obj_description(oid, 'pg_namespace') LIKE 'dbjobs:%%')",
                [schema],
            ).fetchone()
            return bool(row and row[0])

    found = []
    calls = [(lambda d=d: has_dbjobs(d)) for d in candidates]
    for database, outcome in zip(candidates, in_parallel(calls, deadline), strict=True):
        # Not answering is not "not installed": kept, so that status says it is unknown.
        if outcome is True or outcome is None:
            found.append(database)
        elif isinstance(outcome, BaseException) and not isinstance(outcome, DbjobsError | psycopg.Error):
            raise outcome
    return found


def overall(readings: Sequence[Reading]) -> str:
    return worst([r.status for r in readings])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def as_json(readings: Sequence[Reading]) -> str:
    """``{"status": worst, "checked_at", "databases": {name: the database's own status document}}``."""
    document = {
        "status": overall(readings),
        "checked_at": _now(),
        "databases": {r.database.name: r.to_dict() for r in readings},
    }
    return json.dumps(document, indent=2)


def health(readings: Sequence[Reading]) -> dict[str, Any]:
    """One health document: a check per database (``<name>:status``); unknown counts as fail."""
    checks: dict[str, list[dict[str, Any]]] = {}
    for r in readings:
        if r.report is None:
            check = {"componentType": "datastore", "status": "fail", "output": r.error or "unknown"}
        else:
            own = formats.health(r.report)
            check = {"componentType": "datastore", "status": own["status"]}
            if "output" in own:
                check["output"] = own["output"]
        checks[f"{r.database.name}:status"] = [check]
    status_ = overall(readings)
    document: dict[str, Any] = {
        "status": "fail" if status_ == "unknown" else status_,
        "description": f"dbjobs cleanup jobs in {len(readings)} databases",
    }
    problems = [
        f"{key.partition(':')[0]}: {c['output']}" for key, (c,) in checks.items() if c["status"] != "pass"
    ]
    if problems:
        document["output"] = "; ".join(problems)
    document["checks"] = checks
    return document


def as_health(readings: Sequence[Reading]) -> str:
    return json.dumps(health(readings), indent=2)


def as_prometheus(readings: Sequence[Reading]) -> str:
    """Each database's metrics (formats.as_prometheus) with a ``database`` label, merged."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Any] = {}
    for r in readings:
        text = formats.as_prometheus(r.report)
        for family in text_string_to_metric_families(text):
            target = merged.setdefault(family.name, family)
            samples = [s._replace(labels={"database": r.database.name, **s.labels}) for s in family.samples]
            if target is family:
                family.samples = samples
            else:
                target.samples.extend(samples)

    class Merged:
        def collect(self) -> list[Any]:
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    return generate_latest(registry).decode()


def as_text(readings: Sequence[Reading], colour: bool = False) -> str:
    lines = [f"dbjobs {overall(readings).upper()} over {len(readings)} databases at {_now()}"]
    for r in readings:
        lines.append("")
        lines.append(f"== {r.database.name}")
        if r.report is None:
            lines.append(f"dbjobs UNKNOWN: {r.error}")
        else:
            lines.append(formats.as_text(r.report, colour=colour))
    return "\n".join(lines)


FORMATS: dict[str, Callable[[Sequence[Reading]], str]] = {
    "json": as_json,
    "health": as_health,
    "prometheus": as_prometheus,
}
