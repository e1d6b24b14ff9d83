"""dbjobs' own schema in the database: its tables at a recorded version, brought forward by
numbered migrations, and its routines, created again whenever they change.

* ``sql/tables.sql``: the tables in their current complete shape, for a fresh install; it
  records their version, meta's ``schema_version``, the number of the last migration;
* ``sql/migrations/NNNN_<what>.sql``: each takes the tables from version NNNN - 1 to NNNN
  (0001 from an install made before versions, which has no ``schema_version``: version 0);
* ``sql/routines.sql``: every routine, dropped and created again on every install that
  changes it, in the same transaction (meta's ``sql_digest`` is its digest).

A version newer than this dbjobs knows is refused: there are no downgrades.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import sqlfiles
from .errors import PrerequisiteError

TABLES_FILE = "tables.sql"
ROUTINES_FILE = "routines.sql"
# What a fresh install creates, as the plan says it.
CREATE_DETAIL = "tables (version {version}), functions and the cleanup procedure"


@dataclass(frozen=True)
class Migration:
    version: int  # the version it takes the tables to, from version - 1
    path: str  # under sql/

    @property
    def name(self) -> str:
        return self.path.removeprefix("migrations/").removesuffix(".sql")


def migrations() -> list[Migration]:
    """Every migration, in order; their numbers run from 1 without a gap."""
    found = [Migration(number, path) for number, path in sqlfiles.migrations()]
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"sql/{migration.path}: expected migration number {expected:04d}")
    return found


def latest_version() -> int:
    """The version of the tables this dbjobs creates: the last migration's number."""
    return migrations()[-1].version


def routines_digest() -> str:
    """Identifies the routines of this dbjobs (meta's sql_digest): a different one is replaced."""
    return sqlfiles.digest(ROUTINES_FILE)


def create_detail() -> str:
    return CREATE_DETAIL.format(version=latest_version())


@dataclass(frozen=True)
class Installed:
    """What a dbjobs schema holds: its tables' version (0: from before versions), its routines' digest."""

    version: int
    routines_digest: str | None


def installed(conn: psycopg.Connection[Any], schema: str) -> Installed:
    rows = dict(
        conn.execute(
            sql.SQL("SELECT key, value FROM {} WHERE key IN ('schema_version', 'sql_digest')").format(
                sql.Identifier(schema, "meta")
            )
        ).fetchall()
    )
    return Installed(int(rows.get("schema_version", 0)), rows.get("sql_digest"))


def pending(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """What an install would do to dbjobs' schema ``schema``, as the plan's line says it;
    None when its tables and routines are this dbjobs' already."""
    have = installed(conn, schema)
    latest = latest_version()
    if have.version > latest:
        raise PrerequisiteError(
            f"schema {sql.Identifier(schema).as_string(None)} holds dbjobs' tables at version "
            f"{have.version}, newer than this dbjobs knows ({latest}): use a dbjobs at least as new "
            "as the one that installed them (there are no downgrades)"
        )
    if have.version == latest:
        if have.routines_digest == routines_digest():
            return None
        tables = f"tables unchanged at version {latest}"
    else:
        steps = ", ".join(m.name for m in migrations() if m.version > have.version)
        before = "an install without versions" if have.version == 0 else f"version {have.version}"
        tables = f"tables upgraded from {before} to version {latest} ({steps})"
    return f"SQL objects upgraded to this version of dbjobs, {tables}"


def apply(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create dbjobs' schema, or bring it to this version: the tables (all of them, or the
    migrations past their version), then the routines. In the caller's transaction."""
    meta = conn.execute("SELECT to_regclass(%s)", [sql.Identifier(schema, "meta").as_string(None)]).fetchone()
    if meta is None or meta[0] is None:
        conn.execute(sqlfiles.with_schema(TABLES_FILE, schema))
    else:
        version = installed(conn, schema).version
        for migration in migrations():
            if migration.version > version:
                conn.execute(sqlfiles.with_schema(migration.path, schema))
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                    ).format(sql.Identifier(schema, "meta")),
                    [str(migration.version)],
                )
    _replace_routines(conn, schema)


def _replace_routines(conn: psycopg.Connection[Any], schema: str) -> None:
    """routines.sql drops every routine and creates it again: EXECUTE granted to a monitoring
    role is granted again (on the routines this version still has)."""
    grants = conn.execute(sqlfiles.query("install.sql", "routine_grants"), {"schema": schema}).fetchall()
    conn.execute(sqlfiles.with_schema(ROUTINES_FILE, schema))
    present = {
        row[0]
        for row in conn.execute(
            "SELECT proname::text FROM pg_proc WHERE pronamespace = to_regnamespace(%s)",
            [sql.Identifier(schema).as_string(None)],
        )
    }
    for routine, grantee in grants:
        if routine not in present:
            continue
        conn.execute(
            sql.SQL("GRANT EXECUTE ON ROUTINE {} TO {}").format(
                sql.Identifier(schema, routine),
                sql.SQL(grantee),  # regrole text is already quoted
            )
        )
