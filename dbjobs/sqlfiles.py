"""The SQL that dbjobs deploys, read from ``sql/`` (shipped in the wheel as ``dbjobs/sql``)."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from psycopg import sql

SCHEMA_PLACEHOLDER = "@schema@"


def _sql_dir() -> Traversable:
    packaged = resources.files("dbjobs") / "sql"
    if packaged.is_dir():
        return packaged
    # A source checkout (or an editable install): the top-level sql/ folder.
    return Path(__file__).resolve().parent.parent / "sql"


@cache
def read(name: str) -> str:
    return (_sql_dir() / name).read_text(encoding="utf-8")


def with_schema(name: str, schema: str) -> sql.SQL:
    """File ``name`` with @schema@ replaced by the quoted schema name, like an extension's @extschema@."""
    quoted = sql.Identifier(schema).as_string(None)
    return sql.SQL(read(name).replace(SCHEMA_PLACEHOLDER, quoted))


@cache
def queries(name: str) -> dict[str, str]:
    """The named queries of a file, each headed by a ``-- name: <query>`` line."""
    found: dict[str, str] = {}
    current = None
    for line in read(name).splitlines():
        if line.startswith("-- name: "):
            current = line.removeprefix("-- name: ").strip()
            found[current] = ""
        elif current is not None:
            found[current] += line + "\n"
    return {key: text.strip() for key, text in found.items()}


def query(file: str, name: str) -> sql.SQL:
    return sql.SQL(queries(file)[name])


def digest(name: str) -> str:
    """Identifies the version of a file, so that install knows whether to upgrade."""
    return hashlib.sha256(read(name).encode()).hexdigest()[:16]
