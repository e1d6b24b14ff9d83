"""--log-format json: install's plan, run results and errors as one JSON object per line, stable keys."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import AppDb
from tests.test_events import CONFIG, TABLES

COMMON = ["time", "level", "event", "message"]


def records(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(list(r)[:4] == COMMON and r["time"].endswith("Z") for r in lines)
    return lines


def test_plan_runs_and_errors_as_json_lines(app_same: AppDb, dbjobs_cli: Any, write_config: Any) -> None:
    app = app_same
    app.execute(TABLES)
    config = write_config(CONFIG)
    base = ("--dsn", app.dsn, "--config", config, "--log-format", "json")

    dry = dbjobs_cli(*base, "install", "--dry-run")
    text = dbjobs_cli("--dsn", app.dsn, "--config", config, "install", "--dry-run")
    plan = records(dry.out)
    assert [r["message"] for r in plan] == text.out.splitlines()  # the same lines, each an object
    changes, summary = plan[:-1], plan[-1]
    keys = (*COMMON, "action", "kind", "name", "detail", "dry_run", "database")
    assert {tuple(r) for r in changes} == {keys} and {r["database"] for r in changes} == {app.database}
    assert ("create", "job", "tokens") in {(r["action"], r["kind"], r["name"]) for r in changes}
    assert all(r["event"] == "change" and r["level"] == "info" and r["dry_run"] for r in changes)
    assert summary == {
        **summary, "event": "plan", "message": "dry run: nothing was changed", "command": "install",
        "database": app.database, "changes": len(changes), "dry_run": True,
    }  # fmt: skip

    installed = records(dbjobs_cli(*base, "install").out)
    assert installed[-1]["message"] == f"{len(changes)} changes made" and not installed[-1]["dry_run"]
    [again] = records(dbjobs_cli("--dsn", app.dsn, "--config", config, "install", "--log-format", "json").out)
    assert (again["event"], again["changes"], again["message"]) == (
        "plan", 0, f"nothing to change: dbjobs is up to date in {app.database}"
    )  # fmt: skip

    app.execute("INSERT INTO tokens VALUES (6, now() - interval '2 hours', 0)")
    run = dbjobs_cli(*base, "run", "tokens", "sessions")
    assert run.code == 1
    failed, partial = records(run.out)
    keys = [*COMMON, "job", "status", "rows_deleted", "duration_ms", "error", "rows_skipped",
            "partitions_removed", "started_at"]  # fmt: skip
    assert list(failed) == keys and list(partial) == keys
    assert (failed["level"], failed["status"], failed["job"]) == ("error", "failed", "tokens")
    assert "division by zero" in failed["error"] and failed["message"].startswith("tokens: failed")
    assert (partial["level"], partial["status"], partial["error"]) == ("info", "partial", None)
    assert "(partial: stopped at max_runtime" in partial["message"]

    unknown = dbjobs_cli(*base, "run", "nosuch")
    [error] = records(unknown.err)
    assert unknown.out == "" and (error["level"], error["event"], error["exit_code"]) == ("error", "error", 2)
    assert "nosuch" in error["message"]
    usage = dbjobs_cli("--log-format", "json", "run", "--nope")
    [error] = records(usage.err)
    assert usage.code == error["exit_code"] == 2 and "--nope" in error["message"]

    removed = records(dbjobs_cli(*base, "uninstall").out)
    assert removed[-1]["command"] == "uninstall" and removed[-1]["changes"] == len(removed) - 1
    [nothing] = records(dbjobs_cli(*base, "uninstall").out)
    assert nothing["message"] == "nothing to remove: dbjobs is not installed"
