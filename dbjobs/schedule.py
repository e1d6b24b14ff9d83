"""pg_cron schedule expressions: validation, normalisation and fire times (no database).

pg_cron takes classic 5-field cron (minute granularity), the ``@hourly`` family,
from 1.5 on ``N seconds`` (every N seconds, 1-59), and from 1.6 on ``$`` as the
whole day-of-month field (the last day of the month); the original backend wrote
6-field cron with a leading seconds field. Fire times come from cronsim: small,
pure Python, maintained by the healthchecks.io author, and it rejects
expressions that can never fire (``0 0 31 2 *``), which croniter accepts.

pg_cron 1.5+ fires in ``cron.timezone`` (default GMT; 1.4 in UTC). Its launcher
walks real time minute by minute and starts a job in each minute whose wall-clock
time in that zone matches the schedule, so across a DST change a wall time that
is skipped never fires and one that happens twice fires twice. ``next_fire``
follows exactly that.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SECONDS_INTERVAL = re.compile(r"^([1-9]|[1-5][0-9]) seconds?$")
LAST_DAY = "$"  # pg_cron 1.6: the whole day-of-month field, the month's last day
# cronsim understands L, W, # and ?; pg_cron (Vixie cron's parser) does not.
_NOT_PG_CRON = re.compile(r"[LW#?]", re.IGNORECASE)
_NAMES = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat", re.I)
_MINUTE = timedelta(minutes=1)
_DAY = timedelta(days=1)
# Zones whose offset never changes: no DST handling needed (cron.timezone defaults to GMT).
_FIXED_UTC = {"utc", "gmt", "z", "zulu", "etc/utc", "etc/gmt", "universal", "etc/universal", "uct"}


class ScheduleError(ValueError):
    pass


def normalize(expression: str) -> str:
    """The expression as pg_cron should receive it, or ScheduleError saying why not.

    A 6-field expression must have ``0`` seconds: pg_cron runs at most once a
    minute, and silently dropping other seconds would change when a job runs.
    """
    expr = " ".join(expression.split())
    if not expr:
        raise ScheduleError("empty schedule")
    if expr.lower() in NICKNAMES or SECONDS_INTERVAL.match(expr.lower()):
        return expr.lower()
    fields = expr.split(" ")
    if len(fields) == 6:
        seconds, *rest = fields
        if seconds not in ("0", "00"):
            raise ScheduleError(
                f"{expression!r} has seconds field {seconds!r}: pg_cron runs at most once a minute, "
                "so the seconds field must be 0"
            )
        fields = rest
    if len(fields) != 5:
        raise ScheduleError(f"{expression!r} is not a cron expression (5 fields, or 6 with seconds 0)")
    expr = " ".join(fields)
    if _NOT_PG_CRON.search(_NAMES.sub("", expr)):
        raise ScheduleError(f"{expression!r} uses L, W, # or ?, which pg_cron does not support")
    if LAST_DAY in expr and fields[2] != LAST_DAY:
        # pg_cron's parser takes '$' only as the whole day-of-month field.
        raise ScheduleError(
            f"{expression!r}: '$' (the last day of the month) must be the whole day-of-month field, "
            "as in '0 3 $ * *'"
        )
    try:
        CronSim(_cronsim_form(expr), datetime.now(UTC))
    except CronSimError as exc:
        raise ScheduleError(f"{expression!r} is not a valid cron expression ({exc})") from None
    return expr


def needs_pg_cron_1_5(expression: str) -> bool:
    """Interval schedules ("30 seconds") arrived in pg_cron 1.5."""
    return bool(SECONDS_INTERVAL.match(expression))


def needs_pg_cron_1_6(expression: str) -> bool:
    """The last day of the month ('$' as the day-of-month field) arrived in pg_cron 1.6."""
    fields = expression.split()
    return len(fields) == 5 and fields[2] == LAST_DAY


def required_pg_cron(expression: str) -> tuple[tuple[int, int], str] | None:
    """The pg_cron version a (normalized) schedule needs beyond 1.4, and the feature that needs it."""
    if needs_pg_cron_1_6(expression):
        return (1, 6), "'$' (the last day of the month)"
    if needs_pg_cron_1_5(expression):
        return (1, 5), "intervals in seconds"
    return None


def interval_seconds(expression: str) -> int | None:
    """N for an ``N seconds`` schedule, else None."""
    match = SECONDS_INTERVAL.match(expression)
    return int(match.group(1)) if match else None


def next_fire(expression: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first time strictly after ``after`` at which pg_cron starts the job, as an aware UTC datetime.

    ``timezone`` is the IANA zone pg_cron fires in (``cron.timezone``; UTC for
    pg_cron 1.4). For ``N seconds`` it is ``after`` plus N seconds: such a job
    is due again one interval after its last start. A naive ``after`` is read as
    UTC. Raises ScheduleError for a zone zoneinfo does not know.
    """
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    seconds = interval_seconds(expression)
    if seconds is not None:
        return after.astimezone(UTC) + timedelta(seconds=seconds)
    minute = after.astimezone(UTC).replace(second=0, microsecond=0)
    return _next_fire(NICKNAMES.get(expression, expression), minute, timezone)


# period() looks at this many fire times, over at most this long, from a fixed
# start: the same schedule always gives the same period (install compares it).
_PERIOD_FIRES = 5000
_PERIOD_SPAN = timedelta(days=5 * 366)
_PERIOD_FROM = datetime(2025, 1, 1)


def period(expression: str) -> timedelta:
    """The shortest time between two fire times of a (normalized) schedule, in UTC.

    What a retry's backoff is capped at (README "Retry with backoff"): one
    period for a regular schedule (``*/15 * * * *``: 15 minutes), the shortest
    gap for an irregular one (``0 2,3 * * *``: 1 hour). Read over the first
    5,000 fire times or 5 years from a fixed date, whichever comes first; a
    schedule that fires once in that span (``0 0 29 2 *``) gives the span.
    """
    seconds = interval_seconds(expression)
    if seconds is not None:
        return timedelta(seconds=seconds)
    return _period(_cronsim_form(NICKNAMES.get(expression, expression)))


@lru_cache(maxsize=256)
def _period(expression: str) -> timedelta:
    end = _PERIOD_FROM + _PERIOD_SPAN
    shortest, previous = _PERIOD_SPAN, None
    for n, fire in enumerate(CronSim(expression, _PERIOD_FROM)):
        if fire > end or n >= _PERIOD_FIRES:
            break
        if previous is not None:
            shortest = min(shortest, fire - previous)
            if shortest <= _MINUTE:  # nothing fires more often than once a minute
                break
        previous = fire
    return shortest


def zone(name: str) -> tzinfo:
    """The zone a ``cron.timezone`` value names (case-insensitively, as PostgreSQL reads it)."""
    return _zone(name)


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    if name.lower() in _FIXED_UTC:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    for known in available_timezones():
        if known.lower() == name.lower():
            return ZoneInfo(known)
    raise ScheduleError(f"unknown time zone {name!r}: cron.timezone must name an IANA zone such as 'UTC'")


@lru_cache(maxsize=1024)
def _next_fire(expression: str, minute: datetime, timezone: str) -> datetime:
    # Cached: status asks the same questions every few seconds, and parsing
    # the expression costs more than the rest of a job's state.
    tz = _zone(timezone)
    fields = expression.split()
    if fields[2] != LAST_DAY:
        if tz is UTC:
            return next(CronSim(expression, minute.replace(tzinfo=None))).replace(tzinfo=UTC)
        return _walk(expression, minute, tz)
    # pg_cron's '$' holds on a day when 24 hours later it is the 1st: the
    # calendar's last day (cronsim's 'L'), except next to a change of UTC
    # offset, where it may be the day before instead, or neither.
    fire = _walk(_cronsim_form(expression), minute, tz)
    change = _next_change(tz, minute)
    if change is None or change > fire + _DAY:
        return fire
    fields[2] = "27-31"  # every day that can be either, filtered by pg_cron's own test
    return _walk(" ".join(fields), minute, tz, last_day=True)


def _walk(expression: str, minute: datetime, tz: tzinfo, *, last_day: bool = False) -> datetime:
    """The first minute after ``minute`` (UTC) whose wall-clock time in ``tz`` matches.

    Real time is walked in stretches of constant UTC offset: within one, wall
    time is real time plus the offset, and cronsim finds the next matching wall
    time. ``last_day``: the day-of-month field is '$', tested as pg_cron does.
    """
    after = minute
    while True:
        start = after + _MINUTE  # the first instant that may fire
        offset = _offset(tz, start)
        change = _next_change(tz, start)  # where this stretch ends
        sim = CronSim(expression, (after + offset).replace(tzinfo=None))
        for wall in sim:
            instant = (wall - offset).replace(tzinfo=UTC)
            if change is not None and instant >= change:
                after = change - _MINUTE  # go on from the change, in the new offset
                break
            if last_day and not _pg_cron_day_matches(sim, wall, instant, tz):
                continue
            return instant


def _offset(tz: tzinfo, instant: datetime) -> timedelta:
    return instant.astimezone(tz).utcoffset() or timedelta(0)


def _next_change(tz: tzinfo, start: datetime) -> datetime | None:
    """The first instant after ``start`` at which ``tz``'s UTC offset changes (None: not in 2 years;
    a schedule reaches that far only when it fires once a year, in a zone with no changes)."""
    if tz is UTC:
        return None
    for year in range(start.year, start.year + 3):
        for change in _changes(tz, year):
            if change > start:
                return change
    return None


@lru_cache(maxsize=256)
def _changes(tz: tzinfo, year: int) -> tuple[datetime, ...]:
    """The instants (to the minute) in (1 January ``year``, 1 January ``year + 1``] at which the UTC
    offset of ``tz`` changes: offsets sampled a day apart (no zone changes twice within a day),
    each change then found by bisection."""
    changes = []
    t, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    before = _offset(tz, t)
    while t < end:
        probe = min(t + _DAY, end)
        if _offset(tz, probe) != before:
            low, high = t, probe  # low has the old offset, high the new one
            while high - low > _MINUTE:
                mid = low + (high - low) // 2 // _MINUTE * _MINUTE
                if _offset(tz, mid) == before:
                    low = mid
                else:
                    high = mid
            changes.append(high)
            before = _offset(tz, probe)
        t = probe
    return tuple(changes)


def _pg_cron_day_matches(sim: CronSim, wall: datetime, instant: datetime, tz: tzinfo) -> bool:
    """pg_cron 1.6's day test for a '$' schedule: the day-of-month matches when 24 hours later
    it is the 1st; ANDed with the day-of-week when that field starts with '*', else ORed."""
    is_last_day = (instant + _DAY).astimezone(tz).day == 1
    this_dow = sim.match_dow(wall.date())
    return (is_last_day and this_dow) if sim.day_and else (is_last_day or this_dow)


def _cronsim_form(expression: str) -> str:
    """The expression as cronsim reads it: pg_cron's '$' is cronsim's 'L'."""
    fields = expression.split()
    if len(fields) == 5 and fields[2] == LAST_DAY:
        fields[2] = "L"
    return " ".join(fields)
