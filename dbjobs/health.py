"""A readiness check for web applications: (HTTP status, application/health+json body).

Framework-agnostic; a FastAPI, Flask or Django endpoint is three lines (see the README).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from .config import Config, load_config
from .connection import connect, describe, redact, resolve_dsn
from .errors import DbjobsError
from .formats import HEALTH_CONTENT_TYPE, HTTP_STATUS, health, unknown_health
from .status import Report, status

__all__ = ["HEALTH_CONTENT_TYPE", "StatusUnknown", "read_status", "readiness"]


DEADLINE = 10.0  # seconds: a readiness probe must get an answer, even from a server that stalls


class StatusUnknown(DbjobsError):
    """The status could not be read."""

    exit_code = 3


def read_status(dsn: str, config: Config, *, deadline: float = DEADLINE, connect_timeout: int = 5) -> Report:
    """Connect and read the status, or raise StatusUnknown: never waits past ``deadline``.

    The server's statement timeout cannot help when the server or the network
    stops answering after the connection was made, so the work runs in a
    thread that is abandoned at the deadline (tcp_user_timeout lets its socket
    give up soon after).
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            with connect(
                dsn, autocommit=True, connect_timeout=connect_timeout, tcp_user_timeout=int(deadline * 1000)
            ) as conn:
                outcome["report"] = status(conn, config)
        except (DbjobsError, psycopg.Error) as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="dbjobs-status", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise StatusUnknown(f"no answer from {describe(dsn)} within {deadline:g} s")
    if "error" in outcome:
        raise StatusUnknown(redact(" ".join(str(outcome["error"]).split()), dsn))
    report: Report = outcome["report"]
    return report


def readiness(
    dsn: str | None = None, config: Config | None = None, *, deadline: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """Check dbjobs now: 200 for pass and warn, 503 for fail or when the status cannot be read.

    ``dsn`` defaults to DBJOBS_DSN / DATABASE_URL / PG* and ``config`` to load_config().
    Never takes longer than ``deadline`` seconds. It opens a connection per call
    (tens of milliseconds): fine for a probe every few seconds.
    """
    resolved = resolve_dsn(dsn)
    try:
        report = read_status(resolved, config or load_config(), deadline=deadline, connect_timeout=3)
    except DbjobsError as exc:
        return 503, unknown_health(str(exc))
    return HTTP_STATUS[report.status], health(report)
