"""A readiness check for web applications: (HTTP status, application/health+json body).

Framework-agnostic; a FastAPI, Flask or Django endpoint is three lines (see the README).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg

from .config import DEFAULT_SCHEMA, Config, load_config
from .connection import connect, describe, redact, resolve_dsn
from .errors import ConfigError, DbjobsError
from .formats import HEALTH_CONTENT_TYPE, HTTP_STATUS, health, unknown_health
from .status import SEVERITY, Report, status

__all__ = ["HEALTH_CONTENT_TYPE", "StatusUnknown", "read_status", "readiness", "status_config"]


DEADLINE = 10.0  # seconds: a readiness probe must get an answer, even from a server that stalls


class StatusUnknown(DbjobsError):
    """The status could not be read."""

    exit_code = 3


def status_config(path: str | None = None, *, schema: str | None = None) -> tuple[Config, str | None]:
    """The configuration status compares with what is installed, and what is wrong with it.

    Status reads its jobs from the database, so a configuration that cannot be
    read (a probe's working directory holds someone's half-edited file) is a
    warning, not a failure: the schema then comes from ``schema``,
    DBJOBS_SCHEMA or the default.
    """
    try:
        return load_config(path, schema=schema), None
    except ConfigError as exc:
        fallback = schema or os.environ.get("DBJOBS_SCHEMA") or DEFAULT_SCHEMA
        problem = f"{exc.problems[0]} (so the configuration was not compared with what is installed)"
        return Config(jobs=(), schema=fallback), problem


def read_status(
    dsn: str,
    config: Config,
    *,
    deadline: float = DEADLINE,
    connect_timeout: int = 5,
    config_problem: str | None = None,
    schema: str | None = None,
    backlog: bool = False,
) -> Report:
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
                outcome["report"] = status(conn, config, schema=schema, backlog=backlog)
        except (DbjobsError, psycopg.Error) as exc:
            outcome["error"] = exc
        except BaseException as exc:  # a bug: raised again in the caller's thread, not lost
            outcome["crash"] = exc

    worker = threading.Thread(target=work, name="dbjobs-status", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise StatusUnknown(f"no answer from {describe(dsn)} within {deadline:g} s")
    if "crash" in outcome:
        raise outcome["crash"]
    if "error" in outcome:
        raise StatusUnknown(redact(" ".join(str(outcome["error"]).split()), dsn))
    report: Report = outcome["report"]
    if config_problem:
        report.drift.insert(0, config_problem)
        report.status = max(report.status, "warn", key=SEVERITY.__getitem__)
    return report


def readiness(
    dsn: str | None = None,
    config: Config | None = None,
    *,
    deadline: float = 5.0,
    schema: str | None = None,
    backlog: bool = False,
) -> tuple[int, dict[str, Any]]:
    """Check dbjobs now: 200 for pass and warn, 503 for fail or when the status cannot be read.

    The jobs are those installed in the database (schema ``schema``, else the
    configuration's, DBJOBS_SCHEMA or dbjobs), wherever this runs. ``dsn``
    defaults to DBJOBS_DSN / DATABASE_URL / PG*; ``config`` to the one found
    as the CLI finds it, if any (a difference from what is installed is a
    warning). Never takes longer than ``deadline`` seconds. It opens a
    connection per call (tens of milliseconds): fine for a probe every few seconds.
    ``backlog``: count each job's backlog too (status(backlog=True)), which
    queries each job's table: off unless asked.
    """
    resolved = resolve_dsn(dsn)
    problem = None
    if config is None:
        config, problem = status_config(schema=schema)
    try:
        report = read_status(
            resolved,
            config,
            deadline=deadline,
            connect_timeout=3,
            config_problem=problem,
            schema=schema,
            backlog=backlog,
        )
    except DbjobsError as exc:
        return 503, unknown_health(str(exc))
    return HTTP_STATUS[report.status], health(report)
