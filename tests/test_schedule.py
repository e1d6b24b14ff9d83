"""Schedules: pg_cron's forms ('$', 'N seconds') and fire times in pg_cron's time zone (no database).

The reference for fire times is pg_cron 1.6.7's own rule (src/pg_cron.c, ShouldRunTask), written out
below as a brute-force search over real time, minute by minute: next_fire must agree with it.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dbjobs import schedule
from dbjobs.schedule import ScheduleError, next_fire, normalize


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: str, *args: int, fold: int = 0) -> datetime:
    """A wall-clock time in ``zone``, as a UTC instant (aware datetimes in a DST fold never compare
    equal across zones)."""
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)  # type: ignore[misc]


# --- pg_cron's rule, written out -------------------------------------------------------------


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            first, last = low, high
        elif "-" in rng:
            first, last = map(int, rng.split("-"))
        else:
            first = last = int(rng)
            if step:
                last = high
        values.update(range(first, last + 1, int(step or 1)))
    return values


def pg_cron_next(expression: str, after: datetime, zone: str) -> datetime:
    """The first minute strictly after ``after`` in which pg_cron 1.6.7 starts a job: its launcher
    visits every minute of real time and tests the wall-clock time in cron.timezone."""
    minute_f, hour_f, dom_f, month_f, dow_f = expression.split()
    minutes, hours, months = _field(minute_f, 0, 59), _field(hour_f, 0, 23), _field(month_f, 1, 12)
    doms = set() if dom_f == "$" else _field(dom_f, 1, 31)
    dows = {d % 7 for d in _field(dow_f, 0, 7)}
    star = dom_f.startswith("*") or dow_f.startswith("*")
    tz = ZoneInfo(zone)
    t = after.astimezone(UTC).replace(second=0, microsecond=0)
    for _ in range(60 * 24 * 400):
        t += timedelta(minutes=1)
        wall = t.astimezone(tz)
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            continue
        last_day = dom_f == "$" and (t + timedelta(days=1)).astimezone(tz).day == 1
        this_dom = wall.day in doms or last_day
        this_dow = wall.isoweekday() % 7 in dows
        if (this_dom and this_dow) if star else (this_dom or this_dow):
            return t
    raise AssertionError("no fire within 400 days")


# --- forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0 3 $ * *", "0 3 $ * *"),
        ("0 0 3 $ * *", "0 3 $ * *"),  # 6-field, seconds 0
        ("30 23 $ 2 *", "30 23 $ 2 *"),
        ("0 3 $ * 1-5", "0 3 $ * 1-5"),
        ("30 seconds", "30 seconds"),
        ("1 second", "1 second"),
        ("59 Seconds", "59 seconds"),
    ],
)
def test_forms_pg_cron_1_5_and_1_6_accept(given: str, stored: str) -> None:
    assert normalize(given) == stored


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("0 3 $,1 * *", "must be the whole day-of-month field"),  # pg_cron: '$' then a blank
        ("0 3 1-$ * *", "must be the whole day-of-month field"),
        ("$ 3 * * *", "must be the whole day-of-month field"),
        ("0 3 * $ *", "must be the whole day-of-month field"),
        ("0 3 L * *", "L, W, # or ?"),
        ("60 seconds", "not a cron expression"),
        ("0 seconds", "not a cron expression"),
    ],
)
def test_forms_pg_cron_refuses(given: str, why: str) -> None:
    with pytest.raises(ScheduleError, match=why.replace("?", r"\?")):
        normalize(given)


def test_required_pg_cron() -> None:
    assert schedule.required_pg_cron("0 3 $ * *") == ((1, 6), "'$' (the last day of the month)")
    assert schedule.required_pg_cron("30 seconds") == ((1, 5), "intervals in seconds")
    assert schedule.required_pg_cron("0 3 * * *") is None
    assert schedule.required_pg_cron("@hourly") is None


# --- fire times --------------------------------------------------------------------------------


def test_utc_by_default_and_strictly_after() -> None:
    assert next_fire("0 * * * *", utc(2025, 1, 1, 10, 0)) == utc(2025, 1, 1, 11, 0)
    assert next_fire("0 * * * *", utc(2025, 1, 1, 10, 0, 59)) == utc(2025, 1, 1, 11, 0)
    assert next_fire("@daily", utc(2025, 1, 1, 10, 0)) == utc(2025, 1, 2, 0, 0)
    assert next_fire("0 * * * *", datetime(2025, 1, 1, 10, 0)) == utc(2025, 1, 1, 11, 0)  # naive = UTC
    # any aware input, UTC output
    fire = next_fire("0 * * * *", local("Asia/Kolkata", 2025, 1, 1, 15, 45))
    assert fire == utc(2025, 1, 1, 11, 0) and fire.tzinfo is UTC


def test_half_hour_zone() -> None:
    """pg_cron 1.5+ with cron.timezone = 'Asia/Kolkata' (UTC+05:30): an hourly job fires at :30 UTC."""
    after = utc(2025, 1, 1, 10, 0)
    assert next_fire("0 * * * *", after, "Asia/Kolkata") == utc(2025, 1, 1, 10, 30)
    assert next_fire("0 3 * * *", after, "Asia/Kolkata") == local("Asia/Kolkata", 2025, 1, 2, 3, 0)
    assert next_fire("0 3 * * *", after, "Asia/Kolkata") == utc(2025, 1, 1, 21, 30)
    assert next_fire("@hourly", after, "UTC") == utc(2025, 1, 1, 11, 0)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_last_day_of_february(zone: str) -> None:
    assert next_fire("0 3 $ * *", utc(2024, 2, 1), zone) == local(zone, 2024, 2, 29, 3, 0)  # leap year
    assert next_fire("0 3 $ * *", utc(2023, 2, 1), zone) == local(zone, 2023, 2, 28, 3, 0)
    assert next_fire("0 3 $ 2 *", utc(2023, 3, 1), zone) == local(zone, 2024, 2, 29, 3, 0)
    assert next_fire("0 3 $ * *", local(zone, 2023, 2, 28, 3, 0), zone) == local(zone, 2023, 3, 31, 3, 0)


def test_last_day_with_a_day_of_week_is_either() -> None:
    """As for any day-of-month (Vixie cron): with a day of week too, either day fires."""
    assert next_fire("0 3 $ * 1", utc(2025, 3, 1)) == utc(2025, 3, 3, 3, 0)  # Monday the 3rd
    assert next_fire("0 3 $ * 1", utc(2025, 3, 29)) == utc(2025, 3, 31, 3, 0)  # Monday and the last day
    assert next_fire("0 3 $ * 1", utc(2025, 4, 28, 4)) == utc(2025, 4, 30, 3, 0)  # Wednesday, last day
    # A day-of-week field starting with '*' makes both hold: 30 April 2025 is a Wednesday (3).
    assert next_fire("0 3 $ * */2", utc(2025, 4, 1)) == utc(2025, 5, 31, 3, 0)  # a Saturday (6)


def test_dst_gap_and_fold() -> None:
    """pg_cron tests each minute of real time: a wall time the clocks skip never fires, one they go
    through twice fires twice."""
    berlin = "Europe/Berlin"  # 2025-03-30 02:00 -> 03:00; 2025-10-26 03:00 -> 02:00
    assert next_fire("30 2 * * *", utc(2025, 3, 29, 12), berlin) == local(berlin, 2025, 3, 31, 2, 30)
    assert next_fire("30 3 * * *", utc(2025, 3, 29, 12), berlin) == local(berlin, 2025, 3, 30, 3, 30)
    first = next_fire("30 2 * * *", utc(2025, 10, 25, 12), berlin)
    assert first == local(berlin, 2025, 10, 26, 2, 30) == utc(2025, 10, 26, 0, 30)
    second = next_fire("30 2 * * *", first, berlin)
    assert second == local(berlin, 2025, 10, 26, 2, 30, fold=1) == utc(2025, 10, 26, 1, 30)
    assert next_fire("30 2 * * *", second, berlin) == local(berlin, 2025, 10, 27, 2, 30)
    # hourly jobs: one fire per real hour, whatever the clocks say
    assert next_fire("0 * * * *", utc(2025, 10, 26, 0, 0), berlin) == utc(2025, 10, 26, 1, 0)
    assert next_fire("0 * * * *", utc(2025, 3, 30, 0, 0), berlin) == utc(2025, 3, 30, 1, 0)


def test_last_day_next_to_a_dst_change_as_pg_cron() -> None:
    """pg_cron's '$' asks whether 24 hours later it is the 1st. Europe fell back on Sunday
    2021-10-31: at 00:00 that day, 24 hours later is still the 31st, so pg_cron skips October."""
    berlin = "Europe/Berlin"
    assert next_fire("0 0 $ * *", utc(2021, 10, 29), berlin) == local(berlin, 2021, 11, 30, 0, 0)
    assert next_fire("0 3 $ * *", utc(2021, 10, 29), berlin) == local(berlin, 2021, 10, 31, 3, 0)


def test_interval_schedules_are_due_one_interval_later() -> None:
    after = utc(2025, 1, 1, 10, 0, 5, 500)
    assert next_fire("30 seconds", after) == after + timedelta(seconds=30)
    assert next_fire("1 second", after, "Asia/Kolkata") == after + timedelta(seconds=1)


def test_unknown_zone() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        next_fire("0 * * * *", utc(2025, 1, 1), "Mars/Olympus")
    # PostgreSQL reads zone names case-insensitively, and so does this.
    assert next_fire("0 * * * *", utc(2025, 1, 1, 10), "asia/kolkata") == utc(2025, 1, 1, 10, 30)
    assert next_fire("0 * * * *", utc(2025, 1, 1, 10), "GMT") == utc(2025, 1, 1, 11, 0)


ZONES = [
    "UTC",
    "Asia/Kolkata",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
]
EXPRESSIONS = [
    "0 * * * *",
    "*/7 * * * *",
    "30 2 * * *",
    "0 0 * * *",
    "15 1-3 * * *",
    "0 3 $ * *",
    "30 23 $ * *",
    "0 0 $ * *",
    "45 1 $ * 0",
    "30 2 * * 0",
    "0 12 1 * *",
    "5 4 * * 1-5",
]


def test_agrees_with_pg_cron_rule_around_dst_changes() -> None:
    """Random times within a day and a half of each zone's offset changes in 2021 and 2025, and a few
    anywhere, each with three of the expressions."""
    rng = random.Random(20251026)
    cases = 0
    for zone in ZONES:
        tz = ZoneInfo(zone)
        changes = [c for year in (2021, 2025) for c in schedule._changes(tz, year)]
        moments = [c + timedelta(minutes=rng.randint(-36 * 60, 36 * 60)) for c in changes]
        moments += [utc(2024, 1, 1) + timedelta(minutes=rng.randint(0, 2 * 365 * 1440)) for _ in range(2)]
        for after in moments:
            for expression in rng.sample(EXPRESSIONS, 3):
                assert next_fire(expression, after, zone) == pg_cron_next(expression, after, zone), (
                    expression,
                    after,
                    zone,
                )
                cases += 1
    assert cases > 50


def test_cached_and_fast() -> None:
    """status calls next_fire for every job every few seconds: a repeated call is a cache hit."""
    after = utc(2025, 6, 1, 12, 0, 1)
    for expression in EXPRESSIONS:
        next_fire(expression, after, "Asia/Kolkata")
    started = time.perf_counter()
    for _ in range(100):
        for expression in EXPRESSIONS:
            next_fire(expression, after, "Asia/Kolkata")
    assert (time.perf_counter() - started) / (100 * len(EXPRESSIONS)) < 50e-6
