"""Check a configuration against the live catalog, before anything changes.

Every check runs in a savepoint that is rolled back, so a failed check leaves
the caller's transaction usable and nothing behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .config import Config, Job
from .errors import ConfigError

EXPIRY_TYPES = {"timestamp without time zone", "timestamp with time zone", "date"}


@dataclass(frozen=True)
class ResolvedJob:
    """A job whose names and intervals are as the server spells them."""

    job: Job
    table_schema: str
    table_name: str
    retain: str
    max_age: str | None
    partitioned: bool = False

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def qualified_table(self) -> str:
        return sql.Identifier(self.table_schema, self.table_name).as_string(None)


class _Rollback(Exception):
    pass


def interval(conn: psycopg.Connection[Any], where: str, key: str, text: str) -> str:
    """The server's canonical text for an interval, which must not be negative."""
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT %(v)s::interval::text, %(v)s::interval < interval '0'", {"v": text}
            ).fetchone()
    except (psycopg.errors.DataError, psycopg.errors.SyntaxError):
        raise ConfigError(f"{where}: {key}: {text!r} is not a PostgreSQL interval (e.g. '30 days')") from None
    assert row is not None
    if row[1]:
        raise ConfigError(f"{where}: {key}: {text!r} is negative")
    return str(row[0])


def validate(conn: psycopg.Connection[Any], config: Config) -> list[ResolvedJob]:
    """Resolve every job of ``config`` against the catalog, or raise ConfigError with every problem."""
    problems: list[str] = []
    resolved = []
    with _collect(problems):
        interval(conn, config.source, "grace", config.grace)
    with _collect(problems):
        retention = interval(conn, config.source, "history_retention", config.history_retention)
        row = conn.execute("SELECT %s::interval < interval '1 hour'", [retention]).fetchone()
        if row and row[0]:
            raise ConfigError(
                f"{config.source}: history_retention: {config.history_retention!r} is too short: "
                "keep at least 1 hour of history, or status has nothing to read"
            )
    for job in config.jobs:
        with _collect(problems):
            resolved.append(_resolve(conn, job))
    if problems:
        raise ConfigError(problems=problems)
    return resolved


@contextmanager
def _collect(problems: list[str]) -> Iterator[None]:
    """Record a ConfigError's lines and go on, so that one pass finds every problem."""
    try:
        yield
    except ConfigError as exc:
        problems.extend(exc.problems)


def _resolve(conn: psycopg.Connection[Any], job: Job) -> ResolvedJob:
    where = f"job {job.name!r}"
    retain = interval(conn, where, "retain", job.retain)
    max_age = interval(conn, where, "max_age", job.max_age) if job.max_age else None

    try:
        with conn.transaction():
            row = conn.execute(
                """
                SELECT n.nspname, c.relname, c.relkind, c.oid,
                       has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'UPDATE')
                           AND has_table_privilege(c.oid, 'DELETE')
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass(%s)
                """,
                [job.table],
            ).fetchone()
    except psycopg.Error as exc:
        raise ConfigError(f"{where}: table: {job.table!r} is not a table name ({_first_line(exc)})") from None
    if row is None:
        raise ConfigError(
            f"{where}: table: relation {job.table!r} does not exist "
            "(create it, or quote mixed-case names like '\"My Table\"')"
        )
    schema, table, relkind, oid, may_delete = row
    if relkind not in ("r", "p"):
        raise ConfigError(f"{where}: table: {job.table!r} is not a table")
    if not may_delete:
        raise ConfigError(
            f"{where}: table: the connected role needs SELECT, UPDATE and DELETE on {job.table!r} "
            "(UPDATE for the row locks that let the cleanup skip rows the application holds): "
            "GRANT them, or install as the table's owner"
        )
    if relkind == "p":
        _check_partitions(conn, job, oid)
    columns = dict(
        conn.execute(
            """
            SELECT attname, format_type(atttypid, NULL)
              FROM pg_attribute
             WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attname = ANY(%s)
            """,
            [oid, list(job.expires)],
        ).fetchall()
    )
    for column in job.expires:
        if column not in columns:
            raise ConfigError(f"{where}: expires: column {column!r} does not exist in {job.table!r}")
        if columns[column] not in EXPIRY_TYPES:
            raise ConfigError(
                f"{where}: expires: column {column!r} is {columns[column]}, "
                "not timestamp, timestamptz or date"
            )

    resolved = ResolvedJob(job, schema, table, retain, max_age, partitioned=relkind == "p")
    if job.where is not None:
        _check_predicate(conn, resolved)
    return resolved


def _check_partitions(conn: psycopg.Connection[Any], job: Job, oid: int) -> None:
    """A partitioned table is cleaned one partition at a time, through each partition.

    Rows are deleted from each leaf partition directly (a ctid is only unique
    within one), which needs the privileges on every leaf; dropping or
    detaching a partition needs to own it and its parent.
    """
    where = f"job {job.name!r}"
    row = conn.execute(
        """
        SELECT (SELECT t.relid::text FROM pg_partition_tree(%(oid)s::regclass) t
                 WHERE t.isleaf AND NOT (has_table_privilege(t.relid, 'SELECT')
                                         AND has_table_privilege(t.relid, 'UPDATE')
                                         AND has_table_privilege(t.relid, 'DELETE'))
                 LIMIT 1),
               (SELECT t.relid::text FROM pg_partition_tree(%(oid)s::regclass) t
                  JOIN pg_class c ON c.oid = t.relid
                 WHERE NOT pg_has_role(c.relowner, 'USAGE')
                 LIMIT 1),
               (SELECT t.relid::text FROM pg_partition_tree(%(oid)s::regclass) t
                  JOIN pg_class c ON c.oid = t.relid
                 WHERE t.isleaf AND c.relkind <> 'r'
                 LIMIT 1)
        """,
        {"oid": oid},
    ).fetchone()
    assert row is not None
    no_privileges, not_owned, foreign = row
    if foreign:
        raise ConfigError(
            f"{where}: table: partition {foreign} of {job.table!r} is a foreign table: "
            "dbjobs cleans local tables only (clean it where it lives)"
        )
    if no_privileges:
        raise ConfigError(
            f"{where}: table: the connected role needs SELECT, UPDATE and DELETE on partition "
            f"{no_privileges} of {job.table!r}: GRANT them, or install as the owner"
        )
    if not_owned and job.partitions != "delete":
        raise ConfigError(
            f"{where}: partitions: {job.partitions} needs the connected role to own {not_owned} "
            f"(a partition of {job.table!r}, or the table): install as its owner, "
            'or set partitions = "delete" to delete rows only'
        )


def _check_predicate(conn: psycopg.Connection[Any], job: ResolvedJob) -> None:
    """The predicate must be one boolean expression over the table's columns.

    Two probes, both planned and never executed. As a select list it must give
    exactly one boolean column: that rejects "a, b", "a) OR (b" and "x; DROP
    ...". Then the exact DELETE that the cleanup will run must plan.
    """
    where = f"job {job.name!r}"
    predicate = job.job.where or ""
    table = sql.Identifier(job.table_schema, job.table_name)
    probes = [
        sql.SQL("SELECT {} \nFROM {} WHERE false").format(sql.SQL(predicate), table),
        sql.SQL("EXPLAIN DELETE FROM {} WHERE {} < now() AND ({}\n)").format(
            table,
            sql.Identifier(job.job.expires[0]),
            sql.SQL(predicate),
        ),
    ]
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                # prepare=True sends one Parse message: the server refuses a
                # second statement smuggled in after a semicolon.
                cur.execute(probes[0], prepare=True)
                described = cur.description or []
                if len(described) != 1 or described[0].type_code != 16:
                    raise ConfigError(f"{where}: where: {predicate!r} must be one boolean expression")
                cur.execute(probes[1], prepare=True)
            raise _Rollback
    except _Rollback:
        pass
    except psycopg.Error as exc:
        if ";" in _QUOTED.sub("", predicate):
            raise ConfigError(
                f"{where}: where: {predicate!r} is not a single expression: "
                "write one boolean SQL expression, without ';'"
            ) from None
        raise ConfigError(
            f"{where}: where: {predicate!r} is not a valid predicate: {_first_line(exc)}"
        ) from None


# String literals and quoted names, whose ';' do not end the expression.
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
