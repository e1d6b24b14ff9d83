"""Render a status Report for people (text) and programs (json, health+json, Prometheus)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from .status import Report

HEALTH_CONTENT_TYPE = "application/health+json"
# Readiness: warn still serves traffic (HTTP 200); only fail takes the app out (503).
HTTP_STATUS = {"pass": 200, "warn": 200, "fail": 503}


def as_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def as_unknown(format_: str, reason: str) -> str:
    """What ``status --format`` prints when the status could not be read (exit 3)."""
    if format_ == "prometheus":
        return as_prometheus(None)
    if format_ == "health":
        return json.dumps(unknown_health(reason), indent=2) + "\n"
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps({"status": "unknown", "checked_at": now, "error": reason}, indent=2) + "\n"


def health(report: Report) -> dict[str, Any]:
    """The health document of draft-inadarei-api-health-check-06 ("Health Check Response
    Format for HTTP APIs"): ``time`` is when each value was observed, ``output``
    only where the status is warn or fail, componentType from the draft's
    vocabulary (``system``, ``component``)."""
    data = report.to_dict()
    observed = data["checked_at"]
    scheduler = data["scheduler"]
    scheduler_status = "fail" if scheduler["running"] is False else "warn" if scheduler["paused"] else "pass"
    checks: dict[str, list[dict[str, Any]]] = {
        "pg_cron:scheduler": [
            _check(
                {"componentType": "system", "observedValue": scheduler["running"], "time": observed},
                scheduler_status,
                scheduler["detail"],
            )
        ]
    }
    for job, status in zip(report.jobs, data["jobs"], strict=True):
        check: dict[str, Any] = {"componentId": job.name, "componentType": "component", "time": observed}
        if job.last_success_at is not None:
            # How long ago the job last succeeded: what staleness is judged on.
            check["observedValue"] = round((report.checked_at - job.last_success_at).total_seconds())
            check["observedUnit"] = "s"
        output = "; ".join(
            [*([status["last_error"]] if status["last_error"] else []), *job.warnings]
        ) or _STATE_OUTPUT.get(job.state, job.state)
        checks[f"{job.name}:last_success"] = [_check(check, job.status, output)]
    if report.drift:
        checks["dbjobs:configuration"] = [
            _check({"componentType": "component", "time": observed}, "warn", "; ".join(report.drift))
        ]
    document: dict[str, Any] = {
        "status": data["status"],
        "description": f"dbjobs cleanup jobs in database {data['database']}",
    }
    if not report.installed:
        document["output"] = "dbjobs is not installed in this database: run `dbjobs install`"
    elif data["status"] != "pass":
        document["output"] = _summary(checks)
    document["checks"] = checks
    return document


def _check(check: dict[str, Any], status: str, output: str) -> dict[str, Any]:
    check["status"] = status
    if status != "pass":
        check["output"] = output
    return check


def _summary(checks: dict[str, list[dict[str, Any]]]) -> str:
    """The top-level output: what is not passing, one clause per check."""
    return "; ".join(
        f"{key.partition(':')[0]}: {check['output']}"
        for key, values in checks.items()
        for check in values
        if check["status"] != "pass"
    )


def unknown_health(reason: str) -> dict[str, Any]:
    """The health document when the status could not be read at all."""
    return {"status": "fail", "description": "dbjobs cleanup jobs", "output": reason}


_STATE_OUTPUT = {
    "stale": "no successful run since a run was due",
    "pending": "installed, not run yet",
    "inactive": "installed with enabled = false",
    "missing": "not registered in pg_cron: run `dbjobs install`",
}
STATES = ("ok", "failing", "stale", "pending", "inactive", "missing")


def as_health(report: Report) -> str:
    return json.dumps(health(report), indent=2)


def as_prometheus(report: Report | None) -> str:
    """Text exposition format, for node_exporter's textfile collector; ``None``: the status was unknown.

    A job that never ran (or never succeeded) has no timestamp series at all,
    so that an alert on ``time() - dbjobs_job_last_success_timestamp_seconds``
    does not fire for it: alert on ``dbjobs_job_state{state="pending"}`` or on
    staleness instead.
    """
    # Imported here: a text status need not load prometheus_client.
    from prometheus_client import CollectorRegistry, Gauge, generate_latest
    from prometheus_client.core import CounterMetricFamily

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    up = gauge("dbjobs_up", "1 when dbjobs could read the status")
    up.set(0 if report is None else 1)
    if report is None:
        return generate_latest(registry).decode()
    scheduler = gauge(
        "dbjobs_scheduler_running", "1 when pg_cron's scheduler runs, 0 when not, -1 when unknown"
    )
    running = report.scheduler.running
    scheduler.set(-1 if running is None else int(running))
    if report.scheduler.paused is not None:
        paused = gauge("dbjobs_scheduler_paused", "1 when cron.launch_active_jobs is off")
        paused.set(int(report.scheduler.paused))
    drift = gauge("dbjobs_config_drift", "How many differences the configuration has from what is installed")
    drift.set(len(report.drift))

    per_job = ("job",)
    last_success = gauge(
        "dbjobs_job_last_success_timestamp_seconds", "End of the last successful run", per_job
    )
    last_run = gauge("dbjobs_job_last_run_timestamp_seconds", "Start of the last finished run", per_job)
    duration = gauge("dbjobs_job_last_duration_seconds", "Duration of the last finished run", per_job)
    rows = gauge("dbjobs_job_last_rows_deleted", "Rows deleted by the last finished run", per_job)
    skipped = gauge(
        "dbjobs_job_last_rows_skipped", "Rows the last finished run left for later (locked)", per_job
    )
    replica_wait = gauge(
        "dbjobs_job_last_replica_wait_seconds",
        "Time the last finished run waited for lagging standbys (max_replica_lag)",
        per_job,
    )
    cascaded = gauge(
        "dbjobs_job_last_cascaded_rows",
        "Rows the last finished run deleted by ON DELETE CASCADE, per child table",
        ("job", "table"),
    )
    stale = gauge("dbjobs_job_stale", "1 when no successful run happened since one was due", per_job)
    failing = gauge("dbjobs_job_failing", "1 when the last run failed", per_job)
    missing = gauge("dbjobs_job_missing", "1 when the job is installed but not in pg_cron", per_job)
    state = gauge("dbjobs_job_state", "1 for the job's current state, 0 for the others", ("job", "state"))
    failures = gauge(
        "dbjobs_job_consecutive_failures",
        "Failed runs since the job's latest success or partial run",
        per_job,
    )
    running_since = gauge(
        "dbjobs_job_running_since_timestamp_seconds", "Start of the run in progress, if one is", per_job
    )
    warned = gauge(
        "dbjobs_job_warning", "1 when the job warns although its state passes (see status)", per_job
    )
    if report.backlog:
        backlog = gauge(
            "dbjobs_job_backlog_rows",
            "Rows eligible for deletion now (exact up to a threshold, else the planner's estimate)",
            per_job,
        )
        exact = gauge(
            "dbjobs_job_backlog_exact", "1 when dbjobs_job_backlog_rows was counted exactly", per_job
        )
        oldest = gauge(
            "dbjobs_job_oldest_expired_timestamp_seconds",
            "Expiry time of the oldest row eligible for deletion (its earliest expires column)",
            per_job,
        )
        for job in report.jobs:
            if job.backlog_rows is not None:
                backlog.labels(job.name).set(job.backlog_rows)
                exact.labels(job.name).set(int(bool(job.backlog_exact)))
            if job.oldest_expired_at is not None:
                oldest.labels(job.name).set(_seconds(job.oldest_expired_at))
    # A counter family, not Counter: no _created sample stamped with the time of this scrape.
    runs = CounterMetricFamily(
        "dbjobs_job_runs", "Runs of the job by outcome, since install", labels=("job", "outcome")
    )
    for job in report.jobs:
        if job.last_success_at is not None:
            last_success.labels(job.name).set(_seconds(job.last_success_at))
        if job.last_run_at is not None:
            last_run.labels(job.name).set(_seconds(job.last_run_at))
        if job.last_duration_ms is not None:
            duration.labels(job.name).set(round(job.last_duration_ms / 1000, 4))
        if job.last_rows_deleted is not None:
            rows.labels(job.name).set(job.last_rows_deleted)
        if job.last_rows_skipped is not None:
            skipped.labels(job.name).set(job.last_rows_skipped)
        if job.last_replica_wait_seconds is not None:
            replica_wait.labels(job.name).set(job.last_replica_wait_seconds)
        for table, count in (job.cascaded_rows or {}).items():
            cascaded.labels(job.name, table).set(count)
        stale.labels(job.name).set(int(job.state == "stale"))
        failing.labels(job.name).set(int(job.state == "failing"))
        missing.labels(job.name).set(int(job.state == "missing"))
        for name in STATES:
            state.labels(job.name, name).set(int(job.state == name))
        if job.consecutive_failures is not None:
            failures.labels(job.name).set(job.consecutive_failures)
        if job.running_since is not None:
            running_since.labels(job.name).set(_seconds(job.running_since))
        warned.labels(job.name).set(int(bool(job.warnings)))
        for outcome, count in sorted((job.runs_total or {}).items()):
            runs.add_metric((job.name, outcome), count)
    registry.register(_Fixed([runs]))
    return generate_latest(registry).decode()


class _Fixed:
    """A collector of metric families computed already."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _seconds(when: datetime) -> float:
    """A Unix timestamp to the millisecond: no float noise in the exposition."""
    return round(when.timestamp(), 3)


_COLOURS = {"pass": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}
_RESET = "\033[0m"


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal that has it: never with NO_COLOR (https://no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def as_text(report: Report, colour: bool = False) -> str:
    data = report.to_dict()

    def paint(text: str, status: str) -> str:
        return f"{_COLOURS[status]}{text}{_RESET}" if colour else text

    overall = paint(data["status"].upper(), data["status"])
    scheduler = data["scheduler"]
    lines = [
        f"dbjobs {overall} in {data['database']} (schema {data['schema']}) at {data['checked_at']}",
        f"scheduler: {scheduler['detail']}",
        f"schedules fire in {scheduler['timezone']} ({scheduler['timezone_source']})",
    ]
    if not report.installed:
        lines.append("dbjobs is not installed in this database: run `dbjobs install`")
    header = (
        "job", "state", "schedule", "last run", "by", "last success", "rows", "fails", "next run", "stale at",
    )  # fmt: skip
    rows = [header] + [
        (
            j["name"],
            j["state"],
            j["schedule"],
            _short(j["last_run_at"]),
            j["last_trigger"] or "-",
            _short(j["last_success_at"]),
            "-" if j["last_rows_deleted"] is None else str(j["last_rows_deleted"]),
            "-" if j["consecutive_failures"] is None else str(j["consecutive_failures"]),
            _short(j["next_run_at"]),
            _short(j["stale_at"]),
        )
        for j in data["jobs"]
    ]
    if report.installed and not data["jobs"]:
        lines.append("no jobs are installed")
    elif data["jobs"]:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        statuses = [""] + [j["status"] for j in data["jobs"]]
        for row, status in zip(rows, statuses, strict=True):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            if status:
                cells[1] = paint(cells[1], status)
            lines.append("  ".join(cells).rstrip())
    lines += [
        f"{j['name']}: {j['last_error']}" for j in data["jobs"] if j["status"] != "pass" and j["last_error"]
    ]
    lines += [
        f"{j['name']}: running since {_short(j['running_since'])}, {j['running_rows'] or 0} rows so far"
        for j in data["jobs"]
        if j["running_since"]
    ]
    lines += [f"{j['name']}: {warning}" for j in data["jobs"] for warning in j["warnings"]]
    if report.backlog:
        # Cleanup jobs only: dbjobs' _maintenance job prunes pg_cron's history, it has no backlog.
        counted = [j for j in data["jobs"] if j["backlog_rows"] is not None or j["backlog_error"]]
        lines += [f"{j['name']}: {_backlog(j)}" for j in counted]
    lines += [f"drift: {line}" for line in data["drift"]]
    return "\n".join(lines)


def _backlog(job: dict[str, Any]) -> str:
    """One job's backlog, as ``status --backlog`` prints it."""
    if job["backlog_rows"] is None:
        return f"backlog unknown: {job['backlog_error']}"
    rows = job["backlog_rows"]
    line = f"backlog {rows} rows" if job["backlog_exact"] else f"backlog about {rows} rows (estimated)"
    if job["oldest_expired_at"]:
        line += f", the oldest expired {_short(job['oldest_expired_at'])}"
    return line


def _short(timestamp: str | None) -> str:
    return timestamp[:16].replace("T", " ") if timestamp else "-"


FORMATS: dict[str, Callable[[Report], str]] = {
    "text": as_text,
    "json": as_json,
    "health": as_health,
    "prometheus": as_prometheus,
}
