"""Render a status Report for people (text) and programs (json, health+json, Prometheus)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from .status import Report

HEALTH_CONTENT_TYPE = "application/health+json"
# Readiness: warn still serves traffic (HTTP 200); only fail takes the app out (503).
HTTP_STATUS = {"pass": 200, "warn": 200, "fail": 503}


def as_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def health(report: Report) -> dict[str, Any]:
    """The IETF "Health Check Response Format for HTTP APIs" document for a report."""
    data = report.to_dict()
    checks: dict[str, list[dict[str, Any]]] = {
        "pg_cron:scheduler": [
            {
                "componentType": "system",
                "observedValue": data["scheduler"]["running"],
                "status": "fail" if data["scheduler"]["running"] is False else "pass",
                "time": data["checked_at"],
                "output": data["scheduler"]["detail"],
            }
        ]
    }
    for job in data["jobs"]:
        check: dict[str, Any] = {
            "componentId": job["name"],
            "componentType": "cleanup-job",
            "status": job["status"],
            "time": job["last_success_at"] or data["checked_at"],
            "observedValue": job["state"],
        }
        if job["state"] != "ok":
            check["output"] = job["last_error"] or _STATE_OUTPUT.get(job["state"], job["state"])
        checks[f"{job['name']}:last_success"] = [check]
    document: dict[str, Any] = {
        "status": data["status"],
        "description": f"dbjobs cleanup jobs in database {data['database']}",
        "checks": checks,
    }
    if not report.installed:
        document["output"] = "dbjobs is not installed in this database: run `dbjobs install`"
    return document


def unknown_health(reason: str) -> dict[str, Any]:
    """The health document when the status could not be read at all."""
    return {"status": "fail", "description": "dbjobs cleanup jobs", "output": reason}


_STATE_OUTPUT = {
    "stale": "no successful run since a run was due",
    "pending": "installed, not run yet",
    "inactive": "disabled by configuration",
    "missing": "not registered in pg_cron: run `dbjobs install`",
}


def as_health(report: Report) -> str:
    return json.dumps(health(report), indent=2)


def as_prometheus(report: Report | None) -> str:
    """Text exposition format, for node_exporter's textfile collector; ``None``: the status was unknown."""
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

    per_job = ("job",)
    last_success = gauge(
        "dbjobs_job_last_success_timestamp_seconds", "End of the last successful run", per_job
    )
    last_run = gauge("dbjobs_job_last_run_timestamp_seconds", "Start of the last finished run", per_job)
    duration = gauge("dbjobs_job_last_duration_seconds", "Duration of the last finished run", per_job)
    rows = gauge("dbjobs_job_last_rows_deleted", "Rows deleted by the last finished run", per_job)
    stale = gauge("dbjobs_job_stale", "1 when no successful run happened since one was due", per_job)
    failing = gauge("dbjobs_job_failing", "1 when the last run failed", per_job)
    missing = gauge("dbjobs_job_missing", "1 when the job is configured but not in pg_cron", per_job)
    for job in report.jobs:
        _set_timestamp(last_success.labels(job.name), job.last_success_at)
        _set_timestamp(last_run.labels(job.name), job.last_run_at)
        if job.last_duration_ms is not None:
            duration.labels(job.name).set(job.last_duration_ms / 1000)
        if job.last_rows_deleted is not None:
            rows.labels(job.name).set(job.last_rows_deleted)
        stale.labels(job.name).set(int(job.state == "stale"))
        failing.labels(job.name).set(int(job.state == "failing"))
        missing.labels(job.name).set(int(job.state == "missing"))
    return generate_latest(registry).decode()


def _set_timestamp(gauge: Gauge, when: datetime | None) -> None:
    if when is not None:
        gauge.set(when.timestamp())


_COLOURS = {"pass": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}
_RESET = "\033[0m"


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def as_text(report: Report, colour: bool = False) -> str:
    data = report.to_dict()

    def paint(text: str, status: str) -> str:
        return f"{_COLOURS[status]}{text}{_RESET}" if colour else text

    overall = paint(data["status"].upper(), data["status"])
    lines = [
        f"dbjobs {overall} in {data['database']} at {data['checked_at']}",
        f"scheduler: {data['scheduler']['detail']}",
    ]
    if not report.installed:
        lines.append("dbjobs is not installed in this database: run `dbjobs install`")
    header = ("job", "state", "schedule", "last run", "last success", "rows", "next run", "stale at")
    rows = [header] + [
        (
            j["name"],
            j["state"],
            j["schedule"],
            _short(j["last_run_at"]),
            _short(j["last_success_at"]),
            "-" if j["last_rows_deleted"] is None else str(j["last_rows_deleted"]),
            _short(j["next_run_at"]),
            _short(j["stale_at"]),
        )
        for j in data["jobs"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    statuses = [""] + [j["status"] for j in data["jobs"]]
    for row, status in zip(rows, statuses, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if status:
            cells[1] = paint(cells[1], status)
        lines.append("  ".join(cells).rstrip())
    lines += [f"{j['name']}: {j['last_error']}" for j in data["jobs"] if j["state"] == "failing"]
    return "\n".join(lines)


def _short(timestamp: str | None) -> str:
    return timestamp[:16].replace("T", " ") if timestamp else "-"


FORMATS: dict[str, Callable[[Report], str]] = {
    "text": as_text,
    "json": as_json,
    "health": as_health,
    "prometheus": as_prometheus,
}
