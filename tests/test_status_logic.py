"""The status state machine, staleness and formats as pure functions: no server, milliseconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbjobs import formats
from dbjobs.cron import CronJob
from dbjobs.errors import one_line_error
from dbjobs.status import JobFacts, LastRun, Report, Scheduler, job_status

NOW = datetime(2026, 3, 10, 12, 7, tzinfo=UTC)
GRACE = timedelta(minutes=10)
REGISTERED = CronJob(1, "dbjobs:app:sessions", "0 * * * *", "CALL ...", "app", True)


def facts(
    *,
    registered: CronJob | None = REGISTERED,
    installed_ago: timedelta = timedelta(minutes=30),
    last: LastRun | None = None,
    success_ago: timedelta | None = None,
    cron_failure: LastRun | None = None,
    max_age: timedelta | None = None,
) -> JobFacts:
    success = NOW - success_ago if success_ago is not None else None
    return JobFacts(registered, NOW - installed_ago, max_age, last, success, cron_failure)


def run(ago: timedelta, status: str = "succeeded", error: str | None = None) -> LastRun:
    return LastRun(NOW - ago - timedelta(seconds=2), NOW - ago, status, error, 3, "scheduled")


def state(
    schedule: str, job_facts: JobFacts, *, enabled: bool = True, known: bool = True, tz: str = "UTC"
) -> str:
    return job_status(
        "sessions", schedule, job_facts, NOW, GRACE, enabled=enabled, known=known, timezone=tz
    ).state


def test_pending_until_the_first_fire_time_plus_grace() -> None:
    # Installed at 11:37; the first fire time after it is 12:00, stale from 12:10.
    assert state("0 * * * *", facts()) == "pending"
    assert state("0 * * * *", facts(installed_ago=timedelta(hours=1))) == "pending"  # 11:07: due 12:00
    assert state("0 * * * *", facts(installed_ago=timedelta(hours=2))) == "stale"  # 10:07: due 11:00


def test_ok_failing_stale() -> None:
    ok = facts(last=run(timedelta(minutes=7)), success_ago=timedelta(minutes=7))
    assert state("0 * * * *", ok) == "ok"
    failing = facts(last=run(timedelta(minutes=7), "failed", "boom"), success_ago=timedelta(hours=3))
    assert state("0 * * * *", failing) == "failing"
    old = facts(last=run(timedelta(hours=2)), success_ago=timedelta(hours=2))
    assert state("0 * * * *", old) == "stale"


def test_a_newer_failure_only_pg_cron_saw_wins() -> None:
    newer = facts(
        last=run(timedelta(minutes=30)),
        success_ago=timedelta(minutes=30),
        cron_failure=LastRun(None, None, "failed", "pg_cron: connection failed"),
    )
    status = job_status("sessions", "0 * * * *", newer, NOW, GRACE, enabled=True)
    assert (status.state, status.last_error) == ("failing", "pg_cron: connection failed")
    older = facts(
        last=run(timedelta(minutes=5)),
        success_ago=timedelta(minutes=5),
        cron_failure=LastRun(NOW - timedelta(hours=1), NOW - timedelta(hours=1), "failed", "x"),
    )
    assert state("0 * * * *", older) == "ok"


def test_inactive_missing_and_switched_off() -> None:
    assert state("0 * * * *", facts(), enabled=False) == "inactive"
    assert state("0 * * * *", facts(registered=None)) == "missing"
    assert (
        state("0 * * * *", facts(registered=None), known=False) == "pending"
    )  # a monitor cannot see pg_cron
    off = CronJob(1, "dbjobs:app:sessions", "0 * * * *", "", "app", False)
    switched = job_status("sessions", "0 * * * *", facts(registered=off), NOW, GRACE, enabled=True)
    assert switched.state == "stale" and "inactive in pg_cron" in (switched.last_error or "")


def test_max_age_replaces_the_schedule() -> None:
    within = facts(last=run(timedelta(hours=5)), success_ago=timedelta(hours=5), max_age=timedelta(hours=6))
    assert state("0 * * * *", within) == "ok"
    past = facts(last=run(timedelta(hours=7)), success_ago=timedelta(hours=7), max_age=timedelta(hours=6))
    assert state("0 * * * *", past) == "stale"


@pytest.mark.parametrize(
    ("schedule", "success_ago", "expected"),
    [
        ("30 seconds", timedelta(seconds=20), "ok"),
        ("30 seconds", timedelta(minutes=10, seconds=29), "ok"),  # interval 30 s + grace 10 min
        ("30 seconds", timedelta(minutes=10, seconds=31), "stale"),
        ("0 3 $ * *", timedelta(days=2), "ok"),  # last day of February 2026 was the 28th: next due 31 March
        ("@hourly", timedelta(minutes=75), "stale"),
    ],
)
def test_staleness_for_every_kind_of_schedule(schedule: str, success_ago: timedelta, expected: str) -> None:
    job_facts = facts(last=run(success_ago), success_ago=success_ago)
    assert state(schedule, job_facts) == expected


def test_fire_times_follow_pg_cron_s_time_zone() -> None:
    """Asia/Kolkata is UTC+5:30: an hourly job fires at :30 UTC there, not at :00."""
    job_facts = facts(last=run(timedelta(minutes=40)), success_ago=timedelta(minutes=40))  # 11:27 UTC
    utc = job_status("sessions", "0 * * * *", job_facts, NOW, GRACE, enabled=True)
    kolkata = job_status(
        "sessions", "0 * * * *", job_facts, NOW, GRACE, enabled=True, timezone="Asia/Kolkata"
    )
    assert utc.next_run_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    assert kolkata.next_run_at == datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    # Succeeded at 11:27 UTC: in UTC the next run was due at 12:00 (stale from 12:10: now 12:07, ok);
    # in Kolkata it was due at 11:30 UTC and stale from 11:40.
    assert (utc.state, kolkata.state) == ("ok", "stale")


def test_one_line_errors() -> None:
    text = (
        'ERROR:  update or delete on table "users" violates foreign key constraint "fk"\n'
        'DETAIL:  Key (id)=(7) is still referenced from table "groups".\n'
        "CONTEXT:  PL/pgSQL function dbjobs.delete_batch(bigint) line 40 at EXECUTE\n"
        'SQL statement "DELETE FROM ..."\n'
    )
    assert one_line_error(text) == (
        'update or delete on table "users" violates foreign key constraint "fk" '
        '(Key (id)=(7) is still referenced from table "groups".)'
    )
    assert len(one_line_error("ERROR:  " + "x" * 2000)) == 500
    assert one_line_error("") == "failed"


def report(*jobs: tuple[str, str, datetime | None]) -> Report:
    statuses = []
    for name, state_, success in jobs:
        facts_ = facts(
            last=run(NOW - success) if success else None,
            success_ago=(NOW - success) if success else None,
        )
        job = job_status(name, "0 * * * *", facts_, NOW, GRACE, enabled=True)
        job.state, job.status = state_, formats_status(state_)
        statuses.append(job)
    overall = max((j.status for j in statuses), key=["pass", "warn", "fail"].index)
    return Report(overall, NOW, "app", Scheduler(True, "pg_cron scheduler is running"), statuses)


def formats_status(state_: str) -> str:
    return {"ok": "pass", "pending": "pass", "stale": "warn", "failing": "warn", "missing": "fail"}[state_]


def test_prometheus_series() -> None:
    text = formats.as_prometheus(
        report(("a", "ok", NOW - timedelta(seconds=90.123456)), ("b", "pending", None))
    )
    samples = {
        (s.name, s.labels.get("job"), s.labels.get("state")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("dbjobs_job_last_success_timestamp_seconds", "a", None)] == round(
        (NOW - timedelta(seconds=90.123456)).timestamp(), 3
    )
    assert ("dbjobs_job_last_success_timestamp_seconds", "b", None) not in samples
    assert samples[("dbjobs_job_state", "b", "pending")] == 1
    assert sum(v for (name, job, _), v in samples.items() if name == "dbjobs_job_state" and job == "a") == 1
    assert formats.as_prometheus(None).strip().endswith("dbjobs_up 0.0")


def test_health_document() -> None:
    document = formats.health(report(("a", "ok", NOW - timedelta(seconds=90)), ("b", "stale", None)))
    assert document["status"] == "warn" and document["output"].startswith("b: ")
    a, b = document["checks"]["a:last_success"][0], document["checks"]["b:last_success"][0]
    assert (a["observedValue"], a["observedUnit"], "output" in a) == (90, "s", False)
    assert b["output"] == "no successful run since a run was due" and "observedValue" not in b
    assert {a["time"], b["time"]} == {"2026-03-10T12:07:00Z"}


def test_json_and_unknown_bodies() -> None:
    data = json.loads(formats.as_json(report(("a", "ok", NOW))))
    assert data["jobs"][0]["last_trigger"] == "scheduled"
    assert data["scheduler"]["timezone"] == "UTC" and data["drift"] == []
    unknown = json.loads(formats.as_unknown("json", "cannot connect"))
    assert (unknown["status"], unknown["error"]) == ("unknown", "cannot connect")
    assert json.loads(formats.as_unknown("health", "x"))["status"] == "fail"
