"""Check a configuration against the live catalog, before anything changes.

Every check runs in a savepoint that is rolled back, so a failed check leaves
the caller's transaction usable and nothing behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from . import schedule
from .config import Config, Job
from .errors import ConfigError, collect_problems

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
    relid: int = 0  # the table's oid
    max_runtime: str | None = None  # as the server spells it
    retry_after: str | None = None  # as the server spells it
    retry_cap: str | None = None  # the schedule's period, when retry_after is set
    max_replica_lag: str | None = None  # as the server spells it
    batch_pause: str | None = None  # as the server spells it
    archive: str | None = None  # schema.table, quoted where needed
    archive_exists: bool = True  # False: install creates it

    @property
    def predicate_search_path(self) -> str:
        return predicate_search_path(self.table_schema)

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def qualified_table(self) -> str:
        return sql.Identifier(self.table_schema, self.table_name).as_string(None)


class _Rollback(Exception):
    pass


def predicate_search_path(schema: str) -> str:
    """The search_path a job's ``where`` is evaluated with, at install and in every run.

    The same as routines.sql's (see expired_rule there): pg_catalog first, so that
    an object created in the table's schema cannot stand in for a built-in
    function or operator of the same signature; then the table's schema, where
    the application's own tables, types and functions usually are; pg_temp
    last (left out, it would be searched first for tables and types). Names in
    any other schema are written qualified. Validating with the connection's
    search_path instead let predicates through that then failed every run.
    """
    return f"pg_catalog, {sql.Identifier(schema).as_string(None)}, pg_temp"


def use_predicate_search_path(conn: psycopg.Connection[Any], schema: str) -> None:
    """Set the predicate's search_path until the end of the current transaction (or savepoint)."""
    conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)", [predicate_search_path(schema)])


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
    with collect_problems(problems):
        interval(conn, config.source, "grace", config.grace)
    with collect_problems(problems):
        retention = interval(conn, config.source, "history_retention", config.history_retention)
        row = conn.execute("SELECT %s::interval < interval '1 hour'", [retention]).fetchone()
        if row and row[0]:
            raise ConfigError(
                f"{config.source}: history_retention: {config.history_retention!r} is too short: "
                "keep at least 1 hour of history, or status has nothing to read"
            )
    with collect_problems(problems):
        batch_timeout_ms(conn, config)
    # A bad top-level retry_after is one problem, not one per job that inherits it.
    bad_default = None
    if config.retry_after:
        try:
            resolve_retry_after(conn, config.source, config.retry_after)
        except ConfigError as exc:
            problems.extend(exc.problems)
            bad_default = config.retry_after
    for job in config.jobs:
        with collect_problems(problems):
            resolved.append(_resolve(conn, job, skip_retry=job.retry_after == bad_default))
    if problems:
        raise ConfigError(problems=problems)
    return resolved


# transaction_timeout is an int of milliseconds.
MAX_TIMEOUT_MS = 2**31 - 1


def batch_timeout_ms(conn: psycopg.Connection[Any], config: Config) -> int:
    """batch_timeout in milliseconds, as transaction_timeout takes it (PostgreSQL 17+)."""
    text = interval(conn, config.source, "batch_timeout", config.batch_timeout)
    row = conn.execute("SELECT (extract(epoch FROM %s::interval) * 1000)::bigint", [text]).fetchone()
    ms = int(row[0]) if row else 0
    if not 0 < ms <= MAX_TIMEOUT_MS:
        raise ConfigError(
            f"{config.source}: batch_timeout: {config.batch_timeout!r} "
            "must be more than 0 and less than 24 days"
        )
    return ms


def resolve_retry_after(conn: psycopg.Connection[Any], where: str, text: str) -> str:
    """retry_after as the server spells it: an interval more than 0."""
    value = interval(conn, where, "retry_after", text)
    row = conn.execute("SELECT %s::interval = interval '0'", [value]).fetchone()
    if row and row[0]:
        raise ConfigError(f"{where}: retry_after: must be more than 0 (leave it out for no retries)")
    return value


def _resolve(conn: psycopg.Connection[Any], job: Job, *, skip_retry: bool = False) -> ResolvedJob:
    """One job against the catalog; every problem found is raised together (ConfigError.problems)."""
    where = f"job {job.name!r}"
    problems: list[str] = []
    retain = max_age = None
    with collect_problems(problems):
        retain = interval(conn, where, "retain", job.retain)
    with collect_problems(problems):
        max_age = interval(conn, where, "max_age", job.max_age) if job.max_age else None
    max_runtime = None
    with collect_problems(problems):
        if job.max_runtime:
            max_runtime = interval(conn, where, "max_runtime", job.max_runtime)
            row = conn.execute("SELECT %s::interval = interval '0'", [max_runtime]).fetchone()
            if row and row[0]:
                raise ConfigError(f"{where}: max_runtime: must be more than 0 (leave it out for no bound)")
    retry_after = retry_cap = None
    with collect_problems(problems):
        if job.retry_after and not skip_retry:
            retry_after = resolve_retry_after(conn, where, job.retry_after)
            period = schedule.period(job.schedule)
            retry_cap = interval(conn, where, "schedule", f"{period.days} days {period.seconds} seconds")
    max_replica_lag = batch_pause = None
    with collect_problems(problems):
        if job.max_replica_lag:
            max_replica_lag = _replica_lag(conn, where, job.max_replica_lag)
    with collect_problems(problems):
        if job.batch_pause:
            batch_pause = interval(conn, where, "batch_pause", job.batch_pause)
    with collect_problems(problems):
        resolved = _resolve_table(conn, job, retain or job.retain, max_age)
    if problems:
        raise ConfigError(problems=problems)
    resolved = replace(
        resolved,
        max_runtime=max_runtime,
        retry_after=retry_after,
        retry_cap=retry_cap,
        max_replica_lag=max_replica_lag,
        batch_pause=batch_pause,
    )
    if job.archive:
        resolved = _archive(conn, resolved, job.archive)
    return resolved


_ARCHIVE = """
SELECT n.nspname, coalesce(c.relname, %(name)s), c.oid, c.relkind,
       has_table_privilege(c.oid, 'INSERT'), has_schema_privilege(n.oid, 'CREATE')
  FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %(name)s
 WHERE n.nspname = %(schema)s
"""
# Why an existing archive cannot take a source's rows, for each column of the source (in
# order), and for each column of the archive that an insert of those columns would leave NULL.
_ARCHIVE_FIT = """
SELECT format('has no column %%I (of the source)', s.attname)
  FROM pg_attribute s
 WHERE s.attrelid = %(source)s AND s.attnum > 0 AND NOT s.attisdropped
   AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = %(archive)s AND a.attname = s.attname
                      AND a.attnum > 0 AND NOT a.attisdropped)
UNION ALL
SELECT CASE WHEN a.atttypid <> s.atttypid OR a.atttypmod <> s.atttypmod
            THEN format('has column %%I as %%s, the source as %%s', a.attname,
                        format_type(a.atttypid, a.atttypmod), format_type(s.atttypid, s.atttypmod))
            ELSE format('has column %%I generated, which an insert cannot set', a.attname) END
  FROM pg_attribute s JOIN pg_attribute a ON a.attrelid = %(archive)s AND a.attname = s.attname
 WHERE s.attrelid = %(source)s AND s.attnum > 0 AND NOT s.attisdropped AND a.attnum > 0 AND NOT a.attisdropped
   AND (a.atttypid <> s.atttypid OR a.atttypmod <> s.atttypmod OR a.attgenerated <> '' OR a.attidentity = 'a')
UNION ALL
SELECT format('has column %%I NOT NULL without a default, which the source has not', a.attname)
  FROM pg_attribute a
 WHERE a.attrelid = %(archive)s AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
   AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
   AND NOT EXISTS (SELECT FROM pg_attribute s WHERE s.attrelid = %(source)s AND s.attname = a.attname
                      AND s.attnum > 0 AND NOT s.attisdropped)
"""


def _archive(conn: psycopg.Connection[Any], job: ResolvedJob, text: str) -> ResolvedJob:
    """The job's archive: a table whose columns take the source's rows, or one install may create
    (in an existing schema, like the source). Partitions past retention move into its schema."""
    where = f"job {job.name!r}: archive"
    try:
        with conn.transaction():
            parts = conn.execute("SELECT parse_ident(%s)::text[]", [text]).fetchone()
    except psycopg.Error:
        parts = None
    if not parts or len(parts[0]) not in (1, 2):
        raise ConfigError(f"{where}: {text!r} is not a table name: write schema.table")
    schema, name = parts[0] if len(parts[0]) == 2 else [job.table_schema, parts[0][0]]
    row = conn.execute(_ARCHIVE, {"schema": schema, "name": name}).fetchone()
    if row is None:
        raise ConfigError(f"{where}: schema {schema!r} does not exist: CREATE SCHEMA it first")
    _, _, oid, relkind, may_insert, may_create = row
    qualified = sql.Identifier(schema, name).as_string(None)
    if oid == job.relid:
        raise ConfigError(f"{where}: {qualified} is the job's own table: name another table")
    moves_partitions = job.partitioned and job.job.partitions != "delete"
    if (oid is None or moves_partitions) and not may_create:
        why = "to create the archive" if oid is None else "to move partitions there"
        raise ConfigError(
            f"{where}: the connected role may not create tables in schema {schema!r} ({why}): "
            f"GRANT CREATE ON SCHEMA {sql.Identifier(schema).as_string(None)} to it"
        )
    if oid is None:
        return replace(job, archive=qualified, archive_exists=False)
    if relkind not in ("r", "p"):
        raise ConfigError(f"{where}: {qualified} is not a table")
    if not may_insert:
        raise ConfigError(f"{where}: the connected role needs INSERT on {qualified}: GRANT it")
    misfit = conn.execute(_ARCHIVE_FIT, {"source": job.relid, "archive": oid}).fetchone()
    if misfit:
        raise ConfigError(
            f"{where}: {qualified} {misfit[0]}: it must have every column of {job.qualified_table} "
            "with the same type (fix it, or name a table that does not exist and install creates it)"
        )
    return replace(job, archive=qualified)


def _replica_lag(conn: psycopg.Connection[Any], where: str, text: str) -> str:
    """max_replica_lag, which the role must be able to read: without pg_read_all_stats (or
    pg_monitor) pg_stat_replication hides the standbys' positions, and the throttle would be blind."""
    value = interval(conn, where, "max_replica_lag", text)
    row = conn.execute(
        "SELECT %s::interval = interval '0', pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), "
        "current_user",
        [value],
    ).fetchone()
    assert row is not None
    if row[0]:
        raise ConfigError(f"{where}: max_replica_lag: must be more than 0 (leave it out for no throttle)")
    if not row[1]:
        role = sql.Identifier(row[2]).as_string(None)
        raise ConfigError(
            f"{where}: max_replica_lag: role {row[2]!r} may not read the standbys' replay lag "
            f"(pg_stat_replication): GRANT pg_monitor TO {role}, or leave max_replica_lag out"
        )
    return value


def _resolve_table(conn: psycopg.Connection[Any], job: Job, retain: str, max_age: str | None) -> ResolvedJob:
    """The job's table, columns, predicate and row-level security; each problem of its columns at once."""
    where = f"job {job.name!r}"
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
             WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
            """,
            [oid],
        ).fetchall()
    )
    problems = []
    for column in job.expires:
        if column not in columns:
            problems.append(
                f"{where}: expires: column {column!r} does not exist in {job.table!r}"
                + _column_hint(column, list(columns))
            )
        elif columns[column] not in EXPIRY_TYPES:
            problems.append(
                f"{where}: expires: column {column!r} is {columns[column]}, "
                "not timestamp, timestamptz or date"
            )
    if problems:  # the predicate's probe compares the first expiry column: checked once they are right
        raise ConfigError(problems=problems)

    resolved = ResolvedJob(job, schema, table, retain, max_age, partitioned=relkind == "p", relid=oid)
    if job.where is not None:
        _check_predicate(conn, resolved)
    for rls in row_security(conn, resolved):
        if rls.hidden:
            raise ConfigError(f"{where}: table: {rls.refusal()}")
    return resolved


def _column_hint(column: str, existing: list[str]) -> str:
    """Why an ``expires`` name was not found, when the catalog has a near spelling."""
    if len(column) > 2 and column.startswith('"') and column.endswith('"'):
        bare = column[1:-1].replace('""', '"')
        if bare in existing:
            return f" (write it as the catalog spells it, without SQL quotes: {bare!r})"
    folded = [name for name in existing if name.lower() == column.strip('"').lower()]
    if folded:
        return f" (the catalog spells it {folded[0]!r}: write that, quotes and case as they are there)"
    return ""


@dataclass(frozen=True)
class RowSecurity:
    """Row-level security that applies to the connected role on one relation a job deletes from."""

    relation: str  # schema.name, quoted where needed
    role: str  # the connected role, quoted where needed
    forced_owner: bool  # the role owns it, and FORCE ROW LEVEL SECURITY applies it anyway
    hidden: list[str]  # commands no permissive policy grants: SELECT, UPDATE, DELETE
    filtering: list[str]  # policies that may hide rows: restrictive, or USING other than true

    def refusal(self) -> str:
        fix = (
            f"ALTER TABLE {self.relation} NO FORCE ROW LEVEL SECURITY"
            if self.forced_owner
            else "install as the table's owner"
        )
        return (
            f"row-level security on {self.relation} hides every row from role {self.role} "
            f"(no policy lets it {', '.join(self.hidden)}): every run would delete nothing; "
            f"CREATE POLICY dbjobs_cleanup ON {self.relation} TO {self.role} USING (true), "
            f"or ALTER ROLE {self.role} BYPASSRLS, or {fix}"
        )


# The relations a job deletes from (the table, or each leaf of a partitioned
# table: batches delete from the leaves directly, so theirs is the security
# that applies) where row-level security applies to the connected role: the
# server's row_security_active() decides (not the owner, or FORCE; neither
# superuser nor BYPASSRLS). For each: the commands a batch needs that no
# permissive policy for the role grants (SELECT and DELETE, and UPDATE for the
# row locks of FOR UPDATE SKIP LOCKED; a policy without USING grants nothing):
# with one missing, no row can be deleted. And the policies that may hide
# some rows: restrictive ones, and permissive ones whose USING is not `true`
# when no `USING (true)` one covers the command. routines.sql's next_target
# makes the first check again in every run.
_ROW_SECURITY = """
WITH applying AS (
    SELECT p.* FROM pg_policy p
     WHERE p.polcmd IN ('*', 'r', 'w', 'd')
       AND EXISTS (SELECT FROM unnest(p.polroles) AS g(role)
                    WHERE CASE WHEN g.role = 0 THEN true  -- PUBLIC
                               ELSE pg_has_role(current_user, g.role, 'MEMBER') END)
), commands(n, code, cmd) AS (
    VALUES (1, 'r', 'SELECT'), (2, 'w', 'UPDATE'), (3, 'd', 'DELETE')
)
SELECT format('%%I.%%I', n.nspname, c.relname), quote_ident(current_user),
       c.relforcerowsecurity AND pg_has_role(c.relowner, 'USAGE'),
       ARRAY(SELECT v.cmd FROM commands v
              WHERE NOT EXISTS (SELECT FROM applying p
                                 WHERE p.polrelid = c.oid AND p.polpermissive AND p.polqual IS NOT NULL
                                   AND p.polcmd IN ('*', v.code))
              ORDER BY v.n),
       ARRAY(SELECT p.polname::text FROM applying p
              WHERE p.polrelid = c.oid
                AND ((NOT p.polpermissive AND pg_get_expr(p.polqual, p.polrelid) IS DISTINCT FROM 'true')
                     OR (p.polpermissive AND p.polqual IS NOT NULL
                         AND pg_get_expr(p.polqual, p.polrelid) <> 'true'
                         AND EXISTS (SELECT FROM commands v
                                      WHERE p.polcmd IN ('*', v.code)
                                        AND NOT EXISTS (SELECT FROM applying o
                                                         WHERE o.polrelid = c.oid AND o.polpermissive
                                                           AND pg_get_expr(o.polqual, o.polrelid) = 'true'
                                                           AND o.polcmd IN ('*', v.code)))))
              ORDER BY 1)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid IN (SELECT %(oid)s::oid
                  WHERE NOT EXISTS (SELECT FROM pg_partitioned_table t WHERE t.partrelid = %(oid)s::oid)
                 UNION ALL
                 SELECT t.relid FROM pg_partition_tree(%(oid)s::regclass) t WHERE t.isleaf)
   AND row_security_active(c.oid)
 ORDER BY c.oid
"""


def row_security(conn: psycopg.Connection[Any], job: ResolvedJob) -> list[RowSecurity]:
    """Row-level security that applies to the connected role where ``job`` deletes (empty: none)."""
    rows = conn.execute(_ROW_SECURITY, {"oid": job.relid}).fetchall()
    return [RowSecurity(r[0], r[1], bool(r[2]), list(r[3]), list(r[4])) for r in rows]


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
    ...". Then the exact DELETE that the cleanup will run must plan. Both with
    the search_path every run uses (predicate_search_path), so that a name
    that only the installing connection's search_path finds is refused here,
    not in every run.
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
            # Undone with the savepoint (or transaction) when it rolls back.
            use_predicate_search_path(conn, job.table_schema)
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
        reason = _first_line(exc)
        if isinstance(exc, _UNRESOLVED):
            reason += (
                f" (names in `where` resolve with search_path {job.predicate_search_path}, in every run"
                + (
                    "; only this connection's search_path finds it: qualify the name with its schema)"
                    if _plans(conn, probes)
                    else ")"
                )
            )
        raise ConfigError(f"{where}: where: {predicate!r} is not a valid predicate: {reason}") from None


# A table, function, operator or type that the predicate's search_path does not find.
_UNRESOLVED = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedObject,
)


def _plans(conn: psycopg.Connection[Any], probes: list[sql.Composed]) -> bool:
    """Whether the probes plan with the connection's own search_path."""
    try:
        with conn.transaction():
            with conn.cursor() as cur:
                for probe in probes:
                    cur.execute(probe, prepare=True)
            raise _Rollback
    except _Rollback:
        return True
    except psycopg.Error:
        return False


# String literals and quoted names, whose ';' do not end the expression.
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
