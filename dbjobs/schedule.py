"""pg_cron schedule expressions: validation and normalisation (no database).

pg_cron takes classic 5-field cron (minute granularity, UTC), the ``@hourly``
family, and from 1.5 on ``N seconds``; the original backend wrote 6-field cron
with a leading seconds field. Fire times come from cronsim: small, pure Python,
maintained by the healthchecks.io author, and it rejects expressions that can
never fire (``0 0 31 2 *``), which croniter accepts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

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
# cronsim understands L, W, # and ?; pg_cron (Vixie cron's parser) does not.
_NOT_PG_CRON = re.compile(r"[LW#?]", re.IGNORECASE)
_NAMES = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat", re.I)


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
    if expr.lower() in NICKNAMES or SECONDS_INTERVAL.match(expr):
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
    try:
        CronSim(expr, datetime.now(UTC))
    except CronSimError as exc:
        raise ScheduleError(f"{expression!r} is not a valid cron expression ({exc})") from None
    return expr


def needs_pg_cron_1_5(expression: str) -> bool:
    """Interval schedules ("30 seconds") arrived in pg_cron 1.5."""
    return bool(SECONDS_INTERVAL.match(expression))


def next_fire(expression: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first time strictly after ``after`` at which pg_cron starts the job, in UTC.

    ``timezone``: the zone pg_cron reads the expression in (cron.timezone,
    pg_cron 1.5+). An ``N seconds`` schedule fires N seconds after ``after``.
    """
    interval = SECONDS_INTERVAL.match(expression)
    if interval:
        return after + timedelta(seconds=int(interval[1]))
    zone = ZoneInfo(timezone)
    local = after.astimezone(zone).replace(second=0, microsecond=0)
    return _next_fire(NICKNAMES.get(expression, expression), local).astimezone(UTC)


@lru_cache(maxsize=1024)
def _next_fire(expression: str, minute: datetime) -> datetime:
    # Cached: status asks the same questions every few seconds, and parsing
    # the expression costs more than the rest of a job's state.
    return next(CronSim(expression, minute))
