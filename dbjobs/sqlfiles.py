"""The SQL that dbjobs deploys, read from ``sql/`` (shipped in the wheel as ``dbjobs/sql``)."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from psycopg import sql

SCHEMA_PLACEHOLDER = "@schema@"
# `-- define NAME = VALUE`: a constant of the file, written wherever @NAME@ appears in it.
_DEFINE = re.compile(r"^-- define ([a-z_]+) = (.+?)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"@([a-z_]+)@")


def _sql_dir() -> Traversable:
    packaged = resources.files("dbjobs") / "sql"
    if packaged.is_dir():
        return packaged
    # A source checkout (or an editable install): the top-level sql/ folder.
    return Path(__file__).resolve().parent.parent / "sql"


@cache
def read(name: str) -> str:
    """File ``name`` of sql/ ("routines.sql", "migrations/0001_versioned.sql")."""
    path = _sql_dir()
    for part in name.split("/"):
        path = path / part
    return path.read_text(encoding="utf-8")


def with_schema(name: str, schema: str) -> sql.SQL:
    """File ``name`` with @schema@ replaced by the quoted schema name, like an extension's @extschema@,
    and each of its constants' @NAME@ by its value (see ``defines``)."""
    quoted = sql.Identifier(schema).as_string(None)
    return sql.SQL(_expand(name).replace(SCHEMA_PLACEHOLDER, quoted))


@cache
def defines(name: str) -> dict[str, str]:
    """The constants a file defines, ``-- define NAME = VALUE`` lines, as {NAME: VALUE}."""
    found: dict[str, str] = {}
    for key, value in _DEFINE.findall(read(name)):
        if key in found or key == "schema":
            raise ValueError(f"sql/{name}: constant {key!r} defined twice (@schema@ is the schema's name)")
        found[key] = value
    return found


@cache
def _expand(name: str) -> str:
    """File ``name`` with its constants written in. A constant used but not defined, or defined
    but never used, is a mistake in the file: refused, so that no install ever runs it."""
    text, values = read(name), defines(name)
    used = set(_PLACEHOLDER.findall(text)) - {"schema"}
    if used - set(values):
        raise ValueError(f"sql/{name}: @{sorted(used - set(values))[0]}@ is not defined in it")
    if set(values) - used:
        raise ValueError(f"sql/{name}: constant {sorted(set(values) - used)[0]!r} is never used")
    return _PLACEHOLDER.sub(lambda m: m.group(0) if m.group(1) == "schema" else values[m.group(1)], text)


def migrations() -> list[tuple[int, str]]:
    """The files of sql/migrations/, ``NNNN_<what>.sql``, as (NNNN, path under sql/), in order."""
    found = []
    for entry in (_sql_dir() / "migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_[a-z0-9_]+\.sql", entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise ValueError(f"sql/migrations/{entry.name}: not named NNNN_<what>.sql")
            continue
        found.append((int(match.group(1)), f"migrations/{entry.name}"))
    return sorted(found)


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
