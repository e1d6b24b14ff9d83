"""``--log-format json``: the CLI's lines as one JSON object per line, for log collectors.

Every object has ``time`` (UTC, ISO 8601), ``level`` (info, warning or
error), ``event`` (change, plan, run, warning or error) and ``message`` (the
line the text format prints), then the fields of its event; the keys are
documented in README's "Alerts" and never renamed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .install import Plan
    from .run import RunResult


def record(event: str, message: str, level: str = "info", **fields: Any) -> str:
    """One line of JSON."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {"time": now, "level": level, "event": event, "message": message, **fields}, default=str
    )


def plan_records(plan: Plan, command: str, nothing: str) -> list[str]:
    """A ``change`` per change of install's (or uninstall's) plan, then the ``plan`` itself."""
    lines = [
        record(
            "change",
            str(change),
            action=change.action,
            kind=change.kind,
            name=change.name,
            detail=change.detail or None,
            dry_run=plan.dry_run,
            database=plan.database or None,
        )
        for change in plan.changes
    ]
    if not plan.changes:
        summary = nothing
    elif plan.dry_run:
        summary = "dry run: nothing was changed"
    else:
        summary = f"{len(plan.changes)} changes made"
    lines.append(
        record(
            "plan",
            summary,
            command=command,
            database=plan.database or None,
            changes=len(plan.changes),
            dry_run=plan.dry_run,
        )
    )
    return lines


def run_record(result: RunResult) -> str:
    """A run's result, as `dbjobs run` prints it."""
    return record(
        "run", result.line(), "error" if result.status == "failed" else "info",
        job=result.job, status=result.status, rows_deleted=result.rows_deleted,
        duration_ms=None if result.duration_ms is None else round(result.duration_ms, 1), error=result.error,
        rows_skipped=result.rows_skipped, partitions_removed=result.partitions_removed,
        started_at=result.started_at.isoformat() if result.started_at else None,
    )  # fmt: skip
