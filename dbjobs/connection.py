"""Where to connect, and connecting with a bounded wait and no leaked password."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectError

DEFAULT_CONNECT_TIMEOUT = 5  # seconds; libpq's own default is to wait forever
# SQLAlchemy-style URLs (postgresql+psycopg://) are common in DATABASE_URL.
_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[a-z0-9_]+://", re.IGNORECASE)


def resolve_dsn(dsn: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """--dsn, else DBJOBS_DSN, else DATABASE_URL, else "" (libpq reads PGHOST, ...)."""
    env = os.environ if environ is None else environ
    chosen = dsn or env.get("DBJOBS_DSN") or env.get("DATABASE_URL") or ""
    return _DRIVER_SUFFIX.sub(r"\1://", chosen)


def with_database(conn: psycopg.Connection[Any], dbname: str) -> str:
    """A conninfo for another database of the same server, same credentials."""
    params = conninfo_to_dict(conn.info.dsn)
    if conn.info.password:
        params["password"] = conn.info.password
    params["dbname"] = dbname
    return make_conninfo("", **params)


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg.connect with a connect timeout, raising ConnectError with no password in it."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's parse errors quote the offending text, which may be the password.
        reason = redact(str(exc), dsn)
        if "password" in dsn.lower() or "@" in dsn:
            reason = reason.split(":")[0] if ":" in reason else "unparsable"
        raise ConnectError(
            f"invalid connection string ({reason}): check --dsn, DBJOBS_DSN or DATABASE_URL"
        ) from None
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise ConnectError(
            f"cannot connect to {describe(dsn)}: {redact(reason, dsn)} "
            "(set --dsn, DBJOBS_DSN or DATABASE_URL)"
        ) from None


def describe(dsn: str) -> str:
    """host:port/dbname for messages, never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the server"
    host = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "(default)"
    return f"{host}:{port}/{dbname}"


def redact(text: str, dsn: str) -> str:
    """Remove any password the DSN or the environment holds from a message."""
    secrets = set()
    with contextlib.suppress(psycopg.ProgrammingError):
        secrets.add(conninfo_to_dict(dsn).get("password"))
    secrets.add(os.environ.get("PGPASSWORD"))
    for secret in filter(None, secrets):
        text = text.replace(str(secret), "********")
    # Whatever could not be parsed: URL credentials and password= settings.
    text = _URL_PASSWORD.sub(r"\1********@", text)
    return _KEYWORD_PASSWORD.sub(r"\1********", text)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
