"""install and uninstall: desired state vs installed state -> a plan -> applied in one transaction."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from . import catalog, cron, schedule, sqlfiles
from . import schema as dbschema
from .catalog import ResolvedJob
from .config import Config
from .errors import ConfigError, DbjobsError, PrerequisiteError

# Its digest, meta's sql_digest, tells whether the routines installed are this version's
# (the tables' version is meta's schema_version: see dbjobs/schema.py).
SCHEMA_FILE = dbschema.ROUTINES_FILE
MIN_SERVER_VERSION = 130000
INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('dbjobs.install'), hashtext(%s))"

Action = Literal["create", "update", "remove"]


@dataclass(frozen=True)
class Change:
    action: Action
    kind: Literal["schema", "job", "setting"]
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Plan:
    """What install did (or, with dry_run, would do)."""

    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False
    database: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        lines = [str(c) for c in self.changes] or [
            f"nothing to change: dbjobs is up to date in {self.database}"
        ]
        if self.dry_run and self.changes:
            lines.append("dry run: nothing was changed")
        return lines


@dataclass(frozen=True)
class _JobRow:
    """A row of dbjobs' job table, comparable between the config and the database."""

    table_schema: str
    table_name: str
    expires: tuple[str, ...]
    retain: str
    predicate: str | None
    batch_size: int
    schedule: str
    max_age: str | None
    partitions: str

    @classmethod
    def of(cls, job: ResolvedJob) -> _JobRow:
        return cls(
            job.table_schema,
            job.table_name,
            job.job.expires,
            job.retain,
            job.job.where,
            job.job.batch_size,
            job.job.schedule,
            job.max_age,
            job.job.partitions,
        )


def install(
    conn: psycopg.Connection[Any],
    config: Config,
    *,
    dry_run: bool = False,
    cron_stack: ExitStack | None = None,
) -> Plan:
    """Validate ``config``, then make dbjobs' SQL objects and pg_cron jobs match it.

    Runs in one transaction (a savepoint when ``conn`` is already in one, as in
    an Alembic migration), serialized with other installs by an advisory lock.
    When pg_cron lives in another database, its changes are committed right
    after the application database's: should that second commit fail, status
    reports the jobs as missing and the next install creates them.

    ``cron_stack``: the caller decides when that transaction ends, by closing
    the stack (commit) or exiting it with an exception (rollback); that is how
    dbjobs.alembic ties it to the migration's own commit.
    """
    own = ExitStack()
    cron_side = own if cron_stack is None else cron_stack
    # ``own`` exits last: the pg_cron database commits after this one.
    with own, conn.transaction(force_rollback=dry_run):
        conn.execute(INSTALL_LOCK, [config.schema])
        _check_server(conn)
        jobs = catalog.validate(conn, config)
        site = cron_side.enter_context(cron.locate(conn, config))
        if not site.same_database:
            site.conn.execute(INSTALL_LOCK, [site.database])
        _check_schedules(jobs, site)
        plan = Plan(dry_run=dry_run, database=site.database)
        schema_change = _schema_change(conn, config.schema)
        if schema_change:
            plan.changes.append(schema_change)
        installed = (
            _installed_jobs(conn, config.schema)
            if schema_change is None or schema_change.action == "update"
            else {}
        )
        cron_jobs = site.jobs()
        batch_timeout = catalog.batch_timeout_ms(conn, config)
        if schema_change is None or schema_change.action == "update":
            _plan_settings(plan, conn, config.schema, batch_timeout)
        _plan_jobs(plan, config, jobs, installed, cron_jobs)
        _plan_maintenance(plan, config, site, cron_jobs)
        _require_alter(site, config, jobs, cron_jobs)
        if plan.changed and not dry_run:
            _apply(
                conn, site, config, plan, jobs, cron_jobs,
                apply_schema=schema_change is not None, batch_timeout=batch_timeout,
            )  # fmt: skip
    return plan


def _check_schedules(jobs: list[ResolvedJob], site: cron.CronSite) -> None:
    """Refuse a schedule the server's pg_cron would reject: '$' needs 1.6, 'N seconds' 1.5.

    What counts is the library the server runs, not the extension's version,
    which may lag (pg_cron 1.6.0 reported 1.5 until ALTER EXTENSION pg_cron UPDATE).
    """
    for job in jobs:
        needed = schedule.required_pg_cron(job.job.schedule)
        if needed is None:
            continue
        version, feature = needed
        if site.library_version < version:
            wanted = ".".join(map(str, version))
            raise ConfigError(
                f"job {job.name!r}: schedule: {job.job.schedule!r} needs pg_cron {wanted} or later "
                f"(this server has {site.version_text}): {feature} arrived in {wanted}"
            )


def _check_server(conn: psycopg.Connection[Any]) -> None:
    if conn.info.server_version < MIN_SERVER_VERSION:
        raise PrerequisiteError(
            f"PostgreSQL {conn.info.server_version // 10000} is too old: dbjobs needs 13 or later"
        )


@dataclass(frozen=True)
class _SchemaState:
    exists: bool
    marked: bool  # carries dbjobs' comment: made by dbjobs
    has_objects: bool
    foreign_objects: list[str]


def _schema_state(conn: psycopg.Connection[Any], schema: str) -> _SchemaState:
    row = conn.execute(sqlfiles.query("install.sql", "schema_state"), {"schema": schema}).fetchone()
    if row is None:
        return _SchemaState(False, False, False, [])
    return _SchemaState(True, bool(row[0]), bool(row[1]), list(row[2]))


def _schema_change(conn: psycopg.Connection[Any], schema: str) -> Change | None:
    state = _schema_state(conn, schema)
    quoted = sql.Identifier(schema).as_string(None)
    if not state.marked:
        if state.has_objects:
            raise ConfigError(
                f"schema: {schema!r} already exists and holds objects that are not dbjobs': "
                "set schema to a name of dbjobs' own"
            )
        return Change("create", "schema", quoted, dbschema.create_detail())
    detail = dbschema.pending(conn, schema)
    return None if detail is None else Change("update", "schema", quoted, detail)


def _installed_jobs(conn: psycopg.Connection[Any], schema: str) -> dict[str, _JobRow]:
    rows = conn.execute(
        sql.SQL(
            """
            SELECT name, table_schema, table_name, expires, retain::text, predicate, batch_size,
                   schedule, max_age::text,
                   -- read before an upgrade adds the column
                   coalesce(to_jsonb(j) ->> 'partitions', 'drop')
              FROM {} AS j ORDER BY name
            """
        ).format(sql.Identifier(schema, "job"))
    ).fetchall()
    return {r[0]: _JobRow(r[1], r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[8], r[9]) for r in rows}


def _plan_jobs(
    plan: Plan,
    config: Config,
    jobs: list[ResolvedJob],
    installed: dict[str, _JobRow],
    cron_jobs: dict[str, cron.CronJob],
) -> None:
    for job in jobs:
        want = _JobRow.of(job)
        have = installed.get(job.name)
        registered = cron_jobs.get(job.name)
        if have is None:
            state = "" if config.enabled else " (inactive: enabled = false)"
            plan.changes.append(
                Change(
                    "create",
                    "job",
                    job.name,
                    f"delete from {job.qualified_table} {_rule_text(job)}, "
                    f"schedule '{job.job.schedule}'{state}",
                )
            )
            continue
        diffs = [
            f"{name} {old!r} -> {new!r}"
            for name, old, new in zip(
                _JobRow.__dataclass_fields__, vars(have).values(), vars(want).values(), strict=True
            )
            if old != new and name != "schedule"
        ]
        diffs += _cron_diffs(
            registered, job.job.schedule, cron.command(config.schema, job.name), config.enabled
        )
        if diffs:
            plan.changes.append(Change("update", "job", job.name, ", ".join(diffs)))
    configured = {job.name for job in jobs} | {cron.MAINTENANCE_JOB}
    for name in sorted((set(installed) | set(cron_jobs)) - configured):
        registered = cron_jobs.get(name)
        detail = f"pg_cron job {registered.jobid} ({registered.jobname})" if registered else "not in pg_cron"
        plan.changes.append(Change("remove", "job", name, detail))


def _plan_settings(plan: Plan, conn: psycopg.Connection[Any], schema: str, batch_timeout: int) -> None:
    """Settings the cleanup procedure reads from dbjobs' meta table."""
    row = conn.execute(
        sql.SQL("SELECT value FROM {} WHERE key = 'batch_timeout'").format(sql.Identifier(schema, "meta"))
    ).fetchone()
    if row is None or row[0] != str(batch_timeout):
        before = f"{row[0]} ms" if row else "none"
        plan.changes.append(Change("update", "setting", "batch_timeout", f"{before} -> {batch_timeout} ms"))


def _rule_text(job: ResolvedJob) -> str:
    """The whole rule, as a person reads it: which rows the job deletes."""
    text = f"where {' or '.join(job.job.expires)} is older than {job.job.retain}"
    if job.job.where:
        text += f" and ({' '.join(job.job.where.split())})"
    return text


def _plan_maintenance(
    plan: Plan, config: Config, site: cron.CronSite, cron_jobs: dict[str, cron.CronJob]
) -> None:
    """dbjobs' own job that prunes pg_cron's history of dbjobs' jobs (pg_cron never does)."""
    registered = cron_jobs.get(cron.MAINTENANCE_JOB)
    command = cron.maintenance_command(site.database, config.history_retention)
    if registered is None:
        detail = (
            f"prune pg_cron's history of these jobs older than {config.history_retention}, "
            f"schedule '{cron.MAINTENANCE_SCHEDULE}' in database {site.cron_database}"
        )
        plan.changes.append(Change("create", "job", cron.MAINTENANCE_JOB, detail))
    else:
        diffs = _cron_diffs(registered, cron.MAINTENANCE_SCHEDULE, command, True)
        if registered.command != command:  # say what changed, not the whole statement
            diffs = [d if not d.startswith("command") else "history_retention changed" for d in diffs]
        if diffs:
            plan.changes.append(Change("update", "job", cron.MAINTENANCE_JOB, ", ".join(diffs)))


def _cron_diffs(registered: cron.CronJob | None, schedule: str, command: str, active: bool) -> list[str]:
    if registered is None:
        return ["missing from pg_cron: schedule it again"]
    diffs = []
    if registered.schedule != schedule:
        diffs.append(f"schedule {registered.schedule!r} -> {schedule!r}")
    if registered.command != command:
        diffs.append(f"command {registered.command!r} -> {command!r}")
    if registered.active != active:
        diffs.append("activate" if active else "deactivate (enabled = false)")
    return diffs


def _require_alter(
    site: cron.CronSite, config: Config, jobs: list[ResolvedJob], cron_jobs: dict[str, cron.CronJob]
) -> None:
    """(De)activating a job needs cron.alter_job, which pg_cron revokes from PUBLIC:
    fail before changing anything rather than half-way."""
    flips = [
        job.name
        for job in jobs
        if (cron_jobs[job.name].active if job.name in cron_jobs else True) != config.enabled
    ]
    if flips and not site.may_execute(cron.ALTER_JOB):
        role = site.conn.execute("SELECT current_user").fetchone()
        raise PrerequisiteError(
            f"enabled = {str(config.enabled).lower()} needs pg_cron's alter_job for job {flips[0]!r}, "
            "which this role may not execute: " + cron.GRANT_HINT.format(role=role[0] if role else "<role>")
        )


def _apply(
    conn: psycopg.Connection[Any],
    site: cron.CronSite,
    config: Config,
    plan: Plan,
    jobs: list[ResolvedJob],
    cron_jobs: dict[str, cron.CronJob],
    *,
    apply_schema: bool,
    batch_timeout: int,
) -> None:
    schema = config.schema
    if apply_schema:
        dbschema.apply(conn, schema)
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (key, value) VALUES ('sql_digest', %s), ('history_retention', %s), "
            "('installed_at', extract(epoch FROM now())::text), ('enabled', %s), ('batch_timeout', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ).format(sql.Identifier(schema, "meta")),
        # enabled: so that status, which reads no configuration, tells inactive from switched off.
        [
            sqlfiles.digest(SCHEMA_FILE),
            config.history_retention,
            str(config.enabled).lower(),
            str(batch_timeout),
        ],
    )
    maintenance = cron_jobs.get(cron.MAINTENANCE_JOB)
    command = cron.maintenance_command(site.database, config.history_retention)
    if maintenance is None:
        site.schedule(cron.MAINTENANCE_JOB, cron.MAINTENANCE_SCHEDULE, command, True)
    elif _cron_diffs(maintenance, cron.MAINTENANCE_SCHEDULE, command, True):
        site.update(maintenance, cron.MAINTENANCE_SCHEDULE, command, True)
    changed = {c.name for c in plan.changes if c.kind == "job"}
    for job in jobs:
        if job.name not in changed:
            continue
        row = _JobRow.of(job)
        conn.execute(
            sql.SQL(
                """
                INSERT INTO {} AS j (name, table_schema, table_name, expires, retain, predicate,
                                     batch_size, schedule, max_age, partitions)
                VALUES (%s, %s, %s, %s, %s::interval, %s, %s, %s, %s::interval, %s)
                ON CONFLICT (name) DO UPDATE SET
                    table_schema = excluded.table_schema, table_name = excluded.table_name,
                    expires = excluded.expires, retain = excluded.retain,
                    predicate = excluded.predicate, batch_size = excluded.batch_size,
                    schedule = excluded.schedule, max_age = excluded.max_age,
                    partitions = excluded.partitions,
                    installed_at = now()  -- staleness counts from the latest definition
                """
            ).format(sql.Identifier(schema, "job")),
            [
                job.name,
                row.table_schema,
                row.table_name,
                list(row.expires),
                row.retain,
                row.predicate,
                row.batch_size,
                row.schedule,
                row.max_age,
                row.partitions,
            ],
        )
        command = cron.command(schema, job.name)
        registered = cron_jobs.get(job.name)
        if registered is None:
            site.schedule(job.name, job.job.schedule, command, config.enabled)
        elif _cron_diffs(registered, job.job.schedule, command, config.enabled):
            site.update(registered, job.job.schedule, command, config.enabled)
    for change in plan.changes:
        if change.kind == "job" and change.action == "remove":
            if change.name in cron_jobs:
                site.unschedule(cron_jobs[change.name].jobid)
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE name = %s").format(sql.Identifier(schema, "job")),
                [change.name],
            )


def uninstall(conn: psycopg.Connection[Any], config: Config, *, cron_stack: ExitStack | None = None) -> Plan:
    """Remove dbjobs' pg_cron jobs for this database and dbjobs' schema. Idempotent.

    Application tables and pg_cron jobs that are not dbjobs' are never touched:
    the schema is dropped only when it carries dbjobs' mark and holds nothing
    that dbjobs did not create. Without pg_cron there are no jobs to remove.
    """
    own = ExitStack()
    cron_side = own if cron_stack is None else cron_stack
    with own, conn.transaction():
        conn.execute(INSTALL_LOCK, [config.schema])
        plan = Plan(database=conn.info.dbname)
        state = _schema_state(conn, config.schema)
        if state.marked and state.foreign_objects:
            raise DbjobsError(
                f"schema {config.schema!r} also holds {', '.join(sorted(state.foreign_objects))}, "
                "which dbjobs did not create: move them out, then run uninstall again"
            )
        try:
            site = cron_side.enter_context(cron.locate(conn, config, schedule_grants=False))
        except PrerequisiteError as exc:
            if "pg_cron is not installed" not in str(exc):
                raise
        else:
            for name, registered in site.jobs().items():
                site.unschedule(registered.jobid)
                plan.changes.append(Change("remove", "job", name, f"pg_cron job {registered.jobid}"))
        if state.marked:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(config.schema)))
            plan.changes.append(Change("remove", "schema", sql.Identifier(config.schema).as_string(None)))
    return plan
