"""Render a status Report for people and programs."""

from __future__ import annotations

import json

from .status import Report


def as_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def as_text(report: Report) -> str:
    data = report.to_dict()
    scheduler = data["scheduler"]
    lines = [
        f"dbjobs {data['status'].upper()} in {data['database']} at {data['checked_at']}",
        f"scheduler: {scheduler['detail']}",
    ]
    if not report.installed:
        lines.append("dbjobs is not installed in this database: run `dbjobs install`")
    header = ("job", "state", "schedule", "last run", "last success", "rows", "next run")
    rows = [header] + [
        (
            j["name"],
            j["state"],
            j["schedule"],
            _short(j["last_run_at"]),
            _short(j["last_success_at"]),
            "-" if j["last_rows_deleted"] is None else str(j["last_rows_deleted"]),
            _short(j["next_run_at"]),
        )
        for j in data["jobs"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"{j['name']}: {j['last_error']}" for j in data["jobs"] if j["state"] == "failing"]
    return "\n".join(lines)


def _short(timestamp: str | None) -> str:
    return timestamp[:16].replace("T", " ") if timestamp else "-"


FORMATS = {"json": as_json, "text": as_text}
