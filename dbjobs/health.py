"""A readiness check for web applications: (HTTP status, application/health+json body).

Framework-agnostic; a FastAPI, Flask or Django endpoint is three lines (see the README).
"""

from __future__ import annotations

from typing import Any

import psycopg

from .config import Config, load_config
from .connection import connect, redact, resolve_dsn
from .errors import DbjobsError
from .formats import HEALTH_CONTENT_TYPE, HTTP_STATUS, health, unknown_health
from .status import status

__all__ = ["HEALTH_CONTENT_TYPE", "readiness"]


def readiness(
    dsn: str | None = None, config: Config | None = None, *, connect_timeout: int = 3
) -> tuple[int, dict[str, Any]]:
    """Check dbjobs now: 200 for pass and warn, 503 for fail or when the status cannot be read.

    ``dsn`` defaults to DBJOBS_DSN / DATABASE_URL / PG* and ``config`` to load_config().
    Bounded in time by ``connect_timeout`` and the status' own statement timeout.
    """
    resolved = resolve_dsn(dsn)
    try:
        with connect(resolved, autocommit=True, connect_timeout=connect_timeout) as conn:
            report = status(conn, config or load_config())
    except (DbjobsError, psycopg.Error) as exc:
        return 503, unknown_health(redact(" ".join(str(exc).split()), resolved))
    return HTTP_STATUS[report.status], health(report)
