"""dbjobs doctor: check every prerequisite and say how to fix what fails."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from . import catalog, cron, schedule, sqlfiles
from .config import Config
from .errors import ConfigError, DbjobsError, one_line_error
from .install import MIN_SERVER_VERSION
from .status import ASSUMED_DEFAULT, SEVERITY, read_scheduler, status


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        lines = [f"{self.status.upper():<5} {self.name}: {self.detail}"]
        if self.fix:
            lines.append(f"      fix: {self.fix}")
        return lines


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=SEVERITY.__getitem__, default="pass")


def doctor(conn: psycopg.Connection[Any], config: Config) -> list[Check]:
    """Every check, in the order a newcomer would fix them."""
    info = conn.info
    checks = [Check("connection", "pass", f"{info.user}@{info.host}:{info.port}/{info.dbname}")]
    major = info.server_version // 10000
    if info.server_version < MIN_SERVER_VERSION:
        checks.append(
            Check("server version", "fail", f"PostgreSQL {major}", "upgrade to PostgreSQL 13 or later")
        )
        return checks
    checks.append(Check("server version", "pass", f"PostgreSQL {major}"))

    preload, may_create = conn.execute(sqlfiles.query("install.sql", "preload")).fetchone() or (None, False)
    try:
        with cron.locate(conn, config, for_changes=False) as site:
            checks += _pg_cron_checks(site, preload, config)
            checks += _cron_history_checks(site)
            cron_jobs = _cron_jobs(site)
    except DbjobsError as exc:
        checks.append(Check("pg_cron", "fail", str(exc)))
        return checks

    try:
        jobs = catalog.validate(conn, config)
    except ConfigError as exc:  # every problem, one check each
        installed = _installed_job_names(conn, config)
        checks += [
            Check("configuration", "fail", problem, _configuration_fix(problem, installed, config))
            for problem in exc.problems
        ]
        return checks
    except DbjobsError as exc:
        checks.append(Check("configuration", "fail", str(exc), "fix the configuration (see the README)"))
        return checks
    checks.append(Check("configuration", "pass", f"{len(jobs)} jobs from {config.source}"))
    checks += _index_checks(conn, jobs)
    checks += _foreign_key_checks(conn, jobs)
    checks += _row_security_checks(conn, jobs)
    checks += _retry_checks(jobs, cron_jobs)

    try:
        report = status(conn, config)
    except (DbjobsError, psycopg.Error) as exc:
        checks.append(Check("jobs", "fail", f"cannot read the status: {' '.join(str(exc).split())}"))
        return checks
    if not report.installed:
        if may_create:
            fix = "run `dbjobs install`"
        else:
            database, role = conn.execute("SELECT current_database(), current_user").fetchone() or ("", "")
            grant = f"GRANT CREATE ON DATABASE {_quoted(database)} TO {_quoted(role)}"
            fix = f"{grant} (dbjobs creates its schema), then `dbjobs install`"
        checks.append(Check("installed", "warn", "dbjobs is not installed in this database", fix))
    else:
        states = {job.name: job.state for job in report.jobs}
        bad = {name: state for name, state in states.items() if state not in ("ok", "pending", "inactive")}
        checks.append(
            Check(
                "jobs",
                worst([Check("", job.status, "") for job in report.jobs]),
                ", ".join(f"{name} {state}" for name, state in states.items()),
                "see `dbjobs status` for each job's error" if bad else None,
            )
        )
    return checks


def _installed_job_names(conn: psycopg.Connection[Any], config: Config) -> set[str]:
    """The jobs installed in dbjobs' schema (none when it is not installed)."""
    try:
        with conn.transaction():
            query = sql.SQL("SELECT name FROM {}").format(sql.Identifier(config.schema, "job"))
            return {row[0] for row in conn.execute(query)}
    except psycopg.Error:
        return set()


def _configuration_fix(problem: str, installed: set[str], config: Config) -> str:
    """How to fix one configuration problem: for a job already installed, the application changed
    under it (a table dropped or renamed, a column dropped or retyped, a privilege revoked), and
    its runs fail until the two match again."""
    match = re.match(r"job '([^']+)': ", problem)
    if match is None or match.group(1) not in installed:
        return "fix the configuration (see the README)"
    name = match.group(1)
    return (
        f"job {name!r} is installed and each of its runs fails until its table matches again: undo the "
        f"change to the table (or the grant), or change [jobs.{name}] in {config.source} to match "
        "(or remove it), then run `dbjobs install`"
    )


def _pg_cron_checks(site: cron.CronSite, preload: str | None, config: Config) -> list[Check]:
    where = "this database" if site.same_database else f"database {site.cron_database!r}"
    checks = [Check("pg_cron", "pass", f"pg_cron {site.version_text} in {where} (found: {site.found_by})")]
    if site.version[:2] < site.library_version:
        checks[0] = Check(
            "pg_cron",
            "warn",
            checks[0].detail,
            f"the extension's SQL is older than the library: run ALTER EXTENSION pg_cron UPDATE in {where}",
        )
    if preload is not None and "pg_cron" not in preload:
        fix = "add pg_cron to shared_preload_libraries and restart PostgreSQL"
        checks.append(Check("preloaded", "fail", f"shared_preload_libraries = {preload!r}", fix))
    scheduler, _, _ = read_scheduler(site, config)
    if scheduler.running is False:
        level = "fail"
    elif scheduler.paused or scheduler.advice:  # paused, or cannot be seen
        level = "warn"
    else:
        level = "pass"
    checks.append(Check("scheduler", level, scheduler.state, scheduler.advice))
    zone = f"schedules fire in {scheduler.timezone} ({scheduler.timezone_source})"
    if scheduler.timezone_source.startswith(ASSUMED_DEFAULT):
        # Fire times, next runs and staleness are only right if pg_cron does run in GMT.
        fix = "set cron_timezone to pg_cron's cron.timezone (ask an administrator: SHOW cron.timezone)"
        checks.append(Check("time zone", "warn", zone, fix))
    else:
        checks.append(Check("time zone", "pass", zone))
    if scheduler.log_run is False:
        checks.append(
            Check(
                "run logging",
                "warn",
                "cron.log_run = off: pg_cron records no runs, so a job it cannot start "
                "(a connection refused, no free worker) fails where nobody sees it",
                "set cron.log_run = on and restart PostgreSQL",
            )
        )

    role = site.conn.execute("SELECT current_user").fetchone()
    grant = cron.GRANT_HINT.format(role=role[0] if role else "<role>")
    if not site.usage:
        checks.append(Check("privileges", "fail", "no USAGE on schema cron", grant))
    elif not site.same_database and not site.may_execute(cron.SCHEDULE_IN_DATABASE, cron.ALTER_JOB):
        checks.append(Check("privileges", "fail", "may not schedule jobs in another database", grant))
    elif not config.enabled and not site.may_execute(cron.ALTER_JOB):
        checks.append(Check("privileges", "fail", "enabled = false needs cron.alter_job, not granted", grant))
    else:
        checks.append(Check("privileges", "pass", "may schedule and change dbjobs' jobs"))
    return checks


# pg_cron's own failures (recorded in cron.job_run_details, never in dbjobs'
# history) and what fixes each: (a fragment of pg_cron's message, the fix).
CRON_FAILURES = (
    (
        "job startup timeout",
        "pg_cron could not start the job in time: raise cron.max_running_jobs (and max_connections), "
        "or spread the jobs' schedules",
    ),
    (
        "could not start background",
        "no free background worker: raise max_worker_processes above cron.max_running_jobs plus "
        "the server's other workers (restart), or set cron.use_background_workers = off",
    ),
    (
        "connection failed",
        "pg_cron connects to cron.host as the job's role for each run: set "
        "cron.use_background_workers = on, or let that role in (a .pgpass for the server's OS user, "
        "or a pg_hba.conf rule from cron.host)",
    ),
    (
        "fe_sendauth",
        "the same: pg_cron's connection needs a password (.pgpass, pg_hba.conf), or use background workers",
    ),
    (
        "password authentication failed",
        "pg_cron's connection is refused: a .pgpass or pg_hba.conf rule for the job's role",
    ),
    (
        "no pg_hba.conf entry",
        "add a pg_hba.conf rule for the job's role from cron.host, or use background workers",
    ),
)


# dbjobs' pg_cron jobs that pg_cron would run over a connection to another port than this
# server's: pg_cron stores the host (cron.host) and port of the server a job was scheduled on
# in cron.job (nodename, nodeport), and connects there for every run unless it runs jobs in
# background workers. A job scheduled before a failover or a restore onto a server listening
# on another port then fails every run with "connection failed".
_CRON_ADDRESSES = """
SELECT j.jobid, j.jobname::text, j.nodename, j.nodeport, current_setting('port')::int
  FROM cron.job j
 WHERE j.jobname = ANY(%(jobnames)s::text[])
   AND j.nodeport <> current_setting('port')::int
   AND coalesce(current_setting('cron.use_background_workers', true), 'off') <> 'on'
 ORDER BY j.jobid
"""


def _cron_jobs(site: cron.CronSite) -> dict[str, cron.CronJob] | None:
    """dbjobs' pg_cron jobs for this database (None: this role may not read them)."""
    try:
        with site.conn.transaction():
            return site.jobs()
    except psycopg.Error:
        return None


def _retry_checks(jobs: list[catalog.ResolvedJob], cron_jobs: dict[str, cron.CronJob] | None) -> list[Check]:
    """retry_after needs dbjobs' _retry job in pg_cron; a job run every minute is never retried."""
    retrying = [job for job in jobs if job.retry_after is not None]
    if not retrying:
        return []
    names = ", ".join(job.name for job in retrying)
    every_minute = [job.name for job in retrying if schedule.period(job.job.schedule) <= timedelta(minutes=1)]
    note = (
        f"; {', '.join(every_minute)} run every minute or more often, so their schedule retries them"
        if every_minute
        else ""
    )
    if cron_jobs is not None and cron.RETRY_JOB not in cron_jobs:
        return [
            Check(
                "retries",
                "warn",
                f"{names} set retry_after, but dbjobs' {cron.RETRY_JOB} job is not in pg_cron: "
                f"failed runs wait for the schedule{note}",
                "run `dbjobs install`",
            )
        ]
    registered = f" ({cron_jobs[cron.RETRY_JOB].jobname})" if cron_jobs else ""
    return [
        Check(
            "retries",
            "pass",
            f"failed runs of {names} are run again after retry_after, doubling, by pg_cron's "
            f"{cron.RETRY_JOB} job{registered}, every minute{note}",
        )
    ]


def _cron_address_checks(site: cron.CronSite, names: list[str]) -> list[Check]:
    """dbjobs' jobs that pg_cron would run on another server's port (see _CRON_ADDRESSES)."""
    try:
        with site.conn.transaction():
            rows = site.conn.execute(_CRON_ADDRESSES, {"jobnames": names}).fetchall()
    except psycopg.errors.InsufficientPrivilege:  # cron.use_background_workers unreadable: unknown
        return []
    if not rows:
        return []
    jobids = ", ".join(str(row[0]) for row in rows)
    jobid, jobname, host, port, here = rows[0]
    detail = (
        f"pg_cron runs job {jobid} ({jobname}){' and others' if len(rows) > 1 else ''} by connecting "
        f"to {host}:{port}, where it was scheduled, but this server listens on port {here} (a failover "
        "or a restore onto another port?): every run fails with 'connection failed'"
    )
    fix = (
        f"SELECT cron.unschedule(jobid) FROM cron.job WHERE jobid IN ({jobids}); then `dbjobs install` "
        "schedules them on this server again (the history stays); or set cron.use_background_workers = on"
    )
    return [Check("pg_cron job address", "fail", detail, fix)]


def _cron_history_checks(site: cron.CronSite) -> list[Check]:
    """What pg_cron's history and job list say of dbjobs' jobs that dbjobs' own history cannot."""
    if not site.usage:
        return []
    names = [site.job_name(name) for name in site.jobs()]
    checks = _cron_address_checks(site, names)
    orphans = site.conn.execute(sqlfiles.query("status.sql", "cron_orphans"), {"jobnames": names}).fetchall()
    rows = site.conn.execute(sqlfiles.query("status.sql", "cron_failures"), {"jobnames": names}).fetchall()
    for message, count, last in rows:
        fix = next((fix for fragment, fix in CRON_FAILURES if fragment in (message or "")), None)
        if checks and "connection failed" in (message or ""):
            fix = "pg_cron connects to the address its jobs were scheduled on: see 'pg_cron job address'"
        elif orphans and "connection failed" in (message or ""):
            fix = "pg_cron connects as the role that scheduled the job, now gone: see 'pg_cron job owner'"
        if fix is None:
            continue  # a failure of the cleanup itself: `dbjobs status` shows it per job
        when = last.strftime("%Y-%m-%d %H:%M") if last else "time unknown"
        detail = (
            f"{count} recent run(s) failed before the cleanup ran (last {when}): {one_line_error(message)}"
        )
        checks.append(Check("pg_cron runs", "fail", detail, fix))
    for jobid, jobname, username in orphans:
        checks.append(
            Check(
                "pg_cron job owner",
                "fail",
                f"pg_cron job {jobid} ({jobname}) runs as role {username!r}, which no longer exists "
                "(pg_cron 1.6 restarts its launcher over and over on such a job)",
                f"a superuser runs SELECT cron.unschedule({jobid}); "
                "then `dbjobs install` as an existing role",
            )
        )
    return checks


def _index_checks(conn: psycopg.Connection[Any], jobs: list[catalog.ResolvedJob]) -> list[Check]:
    checks = []
    for job in jobs:
        missing = [column for column in job.job.expires if not _indexed(conn, job, column)]
        name = f"index for {job.name}"
        if not missing:
            checks.append(Check(name, "pass", f"{', '.join(job.job.expires)} indexed"))
            continue
        table = job.qualified_table
        columns = [sql.Identifier(column).as_string(None) for column in missing]
        fixes = _create_index(table, columns, partitioned=job.partitioned)
        detail = f"no index leads with {', '.join(missing)}: each run reads the whole of {table}"
        checks.append(Check(name, "warn", detail, fixes))
    return checks


def _create_index(table: str, columns: list[str], *, partitioned: bool) -> str:
    """The statements that add one index per entry of ``columns`` (each quoted, or a quoted list)."""
    if partitioned:  # CONCURRENTLY is refused on a partitioned table
        return "; ".join(f"CREATE INDEX ON ONLY {table} ({column})" for column in columns) + (
            ", then on each partition CREATE INDEX CONCURRENTLY and ALTER INDEX ... ATTACH PARTITION"
        )
    return "; ".join(f"CREATE INDEX CONCURRENTLY ON {table} ({column})" for column in columns)


def _indexed(conn: psycopg.Connection[Any], job: catalog.ResolvedJob, column: str) -> bool:
    """A complete index leads with ``column``, or a partial one that the planner uses for the job's rule."""
    query = sqlfiles.query("install.sql", "index_for_column")
    row = conn.execute(query, {"table": job.qualified_table, "column": column}).fetchone()
    if row is None:
        return False
    complete, partial = bool(row[0]), set(row[1] or [])
    return complete or bool(partial and partial & _indexes_used(conn, job, column))


def _indexes_used(conn: psycopg.Connection[Any], job: catalog.ResolvedJob, column: str) -> set[str]:
    """The indexes the planner picks for an index-driven batch over ``column``, seq scans discouraged.

    The query is that batch's (see index_batch in routines.sql): the next rows
    in the column's order below the cutoff that match the whole rule, `where`
    included, under the predicate's search_path. A partial index appears in
    the plan only when the planner proved that the rule implies its predicate.
    """
    expires = [sql.Identifier(c) for c in job.job.expires]
    cutoff = sql.SQL("now() - {}::interval").format(sql.Literal(job.retain))
    rule = sql.SQL("({})").format(sql.SQL(" OR ").join(sql.SQL("{} < {}").format(c, cutoff) for c in expires))
    if job.job.where is not None:
        rule = sql.SQL("{} AND ({}\n)").format(rule, sql.SQL(job.job.where))
    query = sql.SQL(
        "EXPLAIN (FORMAT JSON) SELECT ctid FROM {table} WHERE {column} < {cutoff} AND {rule}"
        " ORDER BY {column} LIMIT {limit}"
    ).format(
        table=sql.Identifier(job.table_schema, job.table_name),
        column=sql.Identifier(column),
        cutoff=cutoff,
        rule=rule,
        limit=sql.Literal(job.job.batch_size),
    )
    used: set[str] = set()
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL enable_seqscan = off")
            catalog.use_predicate_search_path(conn, job.table_schema)
            row = conn.execute(query).fetchone()
    except psycopg.Error:
        return used
    plan = row[0] if row else []
    if isinstance(plan, str):
        plan = json.loads(plan)
    _index_names(plan, used)
    return used


def _index_names(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        if "Index Name" in node:
            found.add(str(node["Index Name"]))
        for value in node.values():
            _index_names(value, found)
    elif isinstance(node, list):
        for item in node:
            _index_names(item, found)


# Every foreign key that a delete from the job's table makes PostgreSQL check
# or act on: those referencing the table, and, down ON DELETE CASCADE, those
# referencing each table it cascades to (a cascaded delete checks and cascades
# in turn). For each: whether a valid, complete btree index of the referencing
# table leads with the referencing columns (in any order): without one, every
# deleted row costs a scan of the referencing table (that made one 3,000-row
# batch of GoTrue's sessions take seconds). Partition clones of a key are
# left out (conparentid): the key itself is reported once.
_FOREIGN_KEYS = """
WITH RECURSIVE chain(relid) AS (
    SELECT %(oid)s::oid
    UNION
    SELECT c.conrelid FROM chain JOIN pg_constraint c ON c.confrelid = chain.relid
     WHERE c.contype = 'f' AND c.confdeltype = 'c' AND c.conparentid = 0
)
SELECT n.nspname::text, t.relname::text, c.conname::text, t.relkind = 'p',
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, i)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
              ORDER BY k.i),
       rn.nspname::text, r.relname::text,
       EXISTS (SELECT FROM pg_index i
                 JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
                WHERE i.indrelid = c.conrelid AND i.indisvalid AND i.indpred IS NULL
                  AND i.indnkeyatts >= cardinality(c.conkey)
                  AND (SELECT array_agg(k ORDER BY k)
                         FROM unnest((i.indkey::int2[])[0:cardinality(c.conkey) - 1]) AS k)
                      = (SELECT array_agg(k ORDER BY k) FROM unnest(c.conkey) AS k))
  FROM pg_constraint c
  JOIN chain ON c.confrelid = chain.relid
  JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
 WHERE c.contype = 'f' AND c.conparentid = 0
 ORDER BY 1, 2, 3
"""


def _foreign_key_checks(conn: psycopg.Connection[Any], jobs: list[catalog.ResolvedJob]) -> list[Check]:
    """One check per job whose table other tables reference; none for the others."""
    checks = []
    for job in jobs:
        keys = conn.execute(_FOREIGN_KEYS, {"oid": job.relid}).fetchall()
        if not keys:
            continue
        name = f"foreign keys to {job.name}"
        if all(key[-1] for key in keys):
            plural = "" if len(keys) == 1 else "s"
            detail = f"{len(keys)} foreign key{plural} to {job.qualified_table} or its cascades, each indexed"
            checks.append(Check(name, "pass", detail))
            continue
        details, fixes = [], []
        for schema, table, key, partitioned, columns, ref_schema, ref_table, indexed in keys:
            if indexed:
                continue
            quoted = sql.Identifier(schema, table).as_string(None)
            referenced = sql.Identifier(ref_schema, ref_table).as_string(None)
            details.append(f"{quoted} ({', '.join(columns)}) of key {key} to {referenced}")
            listed = ", ".join(sql.Identifier(column).as_string(None) for column in columns)
            fixes.append(_create_index(quoted, [listed], partitioned=partitioned))
        detail = (
            f"no index leads with {'; '.join(details)}: each row deleted there scans the referencing table"
        )
        checks.append(Check(name, "warn", detail, "; ".join(fixes)))
    return checks


def _row_security_checks(conn: psycopg.Connection[Any], jobs: list[catalog.ResolvedJob]) -> list[Check]:
    """One check per job whose table has row-level security that applies to this role.

    Policies that hide every row make the configuration invalid (catalog
    refuses them); policies that may hide some rows are a warning: the rows
    they hide are never deleted, and neither dbjobs nor the role can see them.
    """
    checks = []
    for job in jobs:
        states = catalog.row_security(conn, job)
        if not states:
            continue
        name = f"row-level security for {job.name}"
        hidden = [s for s in states if s.hidden]
        filtering = [s for s in states if s.filtering]
        if hidden:
            checks.append(Check(name, "fail", hidden[0].refusal()))
        elif filtering:
            first = filtering[0]
            detail = (
                f"policies {', '.join(first.filtering)} on {first.relation} may hide rows from role "
                f"{first.role}: expired rows they hide are never deleted"
            )
            fix = (
                f"CREATE POLICY dbjobs_cleanup ON {first.relation} TO {first.role} USING (true), "
                f"or ALTER ROLE {first.role} BYPASSRLS, or install as the table's owner"
            )
            checks.append(Check(name, "warn", detail, fix))
        else:
            relations = ", ".join(s.relation for s in states)
            role = states[0].role
            detail = f"applies to role {role} on {relations}; its policies let it see and delete every row"
            checks.append(Check(name, "pass", detail))
    return checks


def _quoted(name: str) -> str:
    return sql.Identifier(name).as_string(None)
