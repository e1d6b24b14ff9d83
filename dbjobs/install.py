"""install and uninstall: desired state vs installed state -> a plan -> applied in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from . import catalog, cron, schedule, sqlfiles
from . import schema as dbschema
from .catalog import ResolvedJob
from .config import Config
from .errors import ConfigError, DbjobsError, PrerequisiteError

MIN_SERVER_VERSION = 130000
INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('dbjobs.install'), hashtext(%s))"

Action = Literal["create", "update", "remove"]


@dataclass(frozen=True)
class Target:
    """Where a plan is applied: the application's connection, pg_cron's, dbjobs' schema."""

    conn: psycopg.Connection[Any]
    site: cron.CronSite
    schema: str


@dataclass(frozen=True)
class Change:
    """One operation of a plan: the line it prints and what it applies (``apply``), so that
    ``--dry-run`` prints exactly what install then does."""

    action: Action
    kind: Literal["schema", "job", "setting", "table"]
    name: str
    detail: str = ""
    apply: Callable[[Target], None] | None = field(default=None, compare=False, repr=False)

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

    def apply(self, target: Target) -> None:
        """Every change, in the order printed."""
        for change in self.changes:
            if change.apply is not None:
                change.apply(target)


@dataclass(frozen=True)
class StoredJob:
    """A job as dbjobs' job table holds it: what install writes, and reads back by column name
    to compare (the configuration's side comes from ``ResolvedJob``)."""

    name: str
    table_schema: str
    table_name: str
    expires: list[str]
    retain: str
    predicate: str | None
    batch_size: int
    schedule: str
    max_age: str | None
    partitions: str
    max_runtime: str | None = None  # the job's own, else the top-level one
    fail_after: int | None = None
    retry_after: str | None = None  # the job's own, else the top-level one
    retry_cap: str | None = None  # the schedule's period, when retry_after is set
    max_replica_lag: str | None = None  # the job's own, else the top-level one
    batch_pause: str | None = None  # the job's own, else the top-level one
    archive: str | None = None  # schema.table, quoted where needed

    @classmethod
    def of(cls, job: ResolvedJob) -> StoredJob:
        return cls(
            job.name,
            job.table_schema,
            job.table_name,
            list(job.job.expires),
            job.retain,
            job.job.where,
            job.job.batch_size,
            job.job.schedule,
            job.max_age,
            job.job.partitions,
            job.max_runtime,
            job.job.fail_after,
            job.retry_after,
            job.retry_cap,
            job.max_replica_lag,
            job.batch_pause,
            job.archive,
        )

    def differences(self, other: StoredJob) -> list[str]:
        """``field old -> new`` for each column that differs (the schedule is pg_cron's to compare)."""
        return [
            f"{name} {_shown(getattr(self, name))} -> {_shown(getattr(other, name))}"
            for name in self.__dataclass_fields__
            if name != "schedule" and getattr(self, name) != getattr(other, name)
        ]


def _shown(value: object) -> str:
    """A stored value in a plan line: quoted as in the configuration, ``unset`` for none."""
    return "unset" if value is None else repr(value)


# What install keeps in dbjobs' meta table for the cleanup procedure and status to read.
SETTINGS = ("history_retention", "enabled", "batch_timeout")


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
        settings = {
            "history_retention": config.history_retention,
            "enabled": str(config.enabled).lower(),
            "batch_timeout": str(catalog.batch_timeout_ms(conn, config)),
        }
        schema_change = _schema_change(conn, config.schema, settings)
        if schema_change:
            plan.changes.append(schema_change)
        exists = schema_change is None or schema_change.action == "update"
        if exists:
            plan.changes += _setting_changes(conn, config.schema, settings)
        installed = _installed_jobs(conn, config.schema) if exists else {}
        plan.changes += _archive_changes(jobs)
        cron_jobs = site.jobs()
        _plan_jobs(plan, config, jobs, installed, cron_jobs)
        _plan_maintenance(plan, config, site, cron_jobs)
        _plan_retry(plan, config, jobs, cron_jobs)
        _require_alter(site, config, jobs, cron_jobs)
        if plan.changed and not dry_run:
            plan.apply(Target(conn, site, config.schema))
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


def _schema_change(conn: psycopg.Connection[Any], schema: str, settings: dict[str, str]) -> Change | None:
    state = _schema_state(conn, schema)
    quoted = sql.Identifier(schema).as_string(None)
    if not state.marked:
        if state.has_objects:
            raise ConfigError(
                f"schema: {schema!r} already exists and holds objects that are not dbjobs': "
                "set schema to a name of dbjobs' own"
            )

        if not state.exists:
            _require_create_on_database(conn, quoted)

        def create(target: Target) -> None:
            dbschema.apply(target.conn, target.schema)
            _write_meta(target, {**settings, "sql_digest": dbschema.routines_digest()}, installed_at=True)

        return Change("create", "schema", quoted, dbschema.create_detail(), create)
    detail = dbschema.pending(conn, schema)

    def upgrade(target: Target) -> None:
        dbschema.apply(target.conn, target.schema)
        _write_meta(target, {"sql_digest": dbschema.routines_digest()})

    return None if detail is None else Change("update", "schema", quoted, detail, upgrade)


def _require_create_on_database(conn: psycopg.Connection[Any], quoted_schema: str) -> None:
    """Creating dbjobs' schema takes CREATE on the database: say which grant, before anything changes."""
    row = conn.execute(
        "SELECT has_database_privilege(current_database(), 'CREATE'), current_database(), current_user"
    ).fetchone()
    assert row is not None
    may_create, database, role = row
    if not may_create:
        raise PrerequisiteError(
            f"role {role!r} may not create schema {quoted_schema} in database {database!r}: "
            f"GRANT CREATE ON DATABASE {sql.Identifier(database).as_string(None)} "
            f"TO {sql.Identifier(role).as_string(None)} (or create the schema beforehand, owned by it)"
        )


def _write_meta(target: Target, values: dict[str, str], *, installed_at: bool = False) -> None:
    if installed_at:  # when dbjobs was installed: staleness of a job never run counts from it
        values = {**values, "installed_at": _now_epoch(target.conn)}
    target.conn.execute(
        sql.SQL(
            "INSERT INTO {} (key, value) SELECT * FROM unnest(%s::text[], %s::text[]) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ).format(sql.Identifier(target.schema, "meta")),
        [list(values), list(values.values())],
    )


def _now_epoch(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT extract(epoch FROM now())::text").fetchone()
    return str(row[0]) if row else "0"


def _setting_changes(conn: psycopg.Connection[Any], schema: str, settings: dict[str, str]) -> list[Change]:
    """The settings the cleanup procedure and status read from dbjobs' meta table
    (history_retention, enabled, batch_timeout in ms), where they differ from the configuration."""
    have = dict(
        conn.execute(
            sql.SQL("SELECT key, value FROM {} WHERE key = ANY(%s)").format(sql.Identifier(schema, "meta")),
            [list(SETTINGS)],
        ).fetchall()
    )
    changes = []
    for key, value in settings.items():
        if have.get(key) != value:
            unit = " ms" if key == "batch_timeout" else ""
            before = f"{have[key]}{unit}" if key in have else "none"

            def write(target: Target, key: str = key, value: str = value) -> None:
                _write_meta(target, {key: value})

            changes.append(Change("update", "setting", key, f"{before} -> {value}{unit}", write))
    return changes


def _installed_jobs(conn: psycopg.Connection[Any], schema: str) -> dict[str, StoredJob]:
    with conn.cursor(row_factory=class_row(StoredJob)) as cur:
        rows = cur.execute(
            sql.SQL(
                """
                SELECT name, table_schema, table_name, expires::text[] AS expires, retain::text AS retain,
                       predicate, batch_size, schedule, max_age::text AS max_age,
                       -- read before an upgrade from an early install adds the column
                       coalesce(to_jsonb(j) ->> 'partitions', 'drop') AS partitions,
                       -- (as the server spells the interval; absent before version 2)
                       (to_jsonb(j) ->> 'max_runtime')::interval::text AS max_runtime,
                       (to_jsonb(j) ->> 'fail_after')::integer AS fail_after,
                       -- (absent before version 4)
                       (to_jsonb(j) ->> 'retry_after')::interval::text AS retry_after,
                       (to_jsonb(j) ->> 'retry_cap')::interval::text AS retry_cap,
                       -- (absent before version 5)
                       (to_jsonb(j) ->> 'max_replica_lag')::interval::text AS max_replica_lag,
                       (to_jsonb(j) ->> 'batch_pause')::interval::text AS batch_pause,
                       to_jsonb(j) ->> 'archive' AS archive
                  FROM {} AS j ORDER BY name
                """
            ).format(sql.Identifier(schema, "job"))
        ).fetchall()
    return {row.name: row for row in rows}


def _plan_jobs(
    plan: Plan,
    config: Config,
    jobs: list[ResolvedJob],
    installed: dict[str, StoredJob],
    cron_jobs: dict[str, cron.CronJob],
) -> None:
    for job in jobs:
        want = StoredJob.of(job)
        have = installed.get(job.name)
        registered = cron_jobs.get(job.name)
        command = cron.command(config.schema, job.name)
        write = partial(_write_job, want=want, registered=registered, command=command, active=config.enabled)
        if have is None:
            state = "" if config.enabled else " (inactive: enabled = false)"
            detail = f"delete from {job.qualified_table} {_rule_text(job)}, schedule '{want.schedule}'{state}"
            if job.archive:
                detail = f"move into {job.archive}, " + detail
            plan.changes.append(Change("create", "job", job.name, detail, write))
            continue
        diffs = have.differences(want) + _cron_diffs(registered, want.schedule, command, config.enabled)
        if registered is not None and not registered.role_exists:
            diffs = [_orphan_line(registered)]
        if diffs:
            plan.changes.append(Change("update", "job", job.name, ", ".join(diffs), write))
    # dbjobs' retry job is _plan_retry's (it removes it too).
    configured = {job.name for job in jobs} | {cron.MAINTENANCE_JOB, cron.RETRY_JOB}
    for name in sorted((set(installed) | set(cron_jobs)) - configured):
        registered = cron_jobs.get(name)
        detail = f"pg_cron job {registered.jobid} ({registered.jobname})" if registered else "not in pg_cron"
        plan.changes.append(
            Change("remove", "job", name, detail, partial(_remove_job, registered=registered, name=name))
        )


def _archive_changes(jobs: list[ResolvedJob]) -> list[Change]:
    """The archive tables to create: the source's columns and types (LIKE, which copies NOT NULL
    and nothing else: no key, check, foreign key or unique index that a moved row could fail),
    and a plain index on each expiry column, for a job that cleans the archive in turn."""
    changes: list[Change] = []
    for job in jobs:
        if job.archive is None or job.archive_exists or any(c.name == job.archive for c in changes):
            continue

        def create(target: Target, job: ResolvedJob = job) -> None:
            assert job.archive is not None
            archive = sql.SQL(job.archive)  # quoted by catalog
            target.conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {})").format(archive, sql.SQL(job.qualified_table))
            )
            for column in job.job.expires:
                target.conn.execute(
                    sql.SQL("CREATE INDEX ON {} ({})").format(archive, sql.Identifier(column))
                )

        detail = f"archive of job {job.name!r}, with the columns of {job.qualified_table}"
        changes.append(Change("create", "table", job.archive, detail, create))
    return changes


def _orphan_line(registered: cron.CronJob) -> str:
    return (
        f"pg_cron job {registered.jobid} runs as role {registered.username!r}, which no longer exists: "
        "scheduled again as this role"
    )


def _write_job(
    target: Target, *, want: StoredJob, registered: cron.CronJob | None, command: str, active: bool
) -> None:
    """The job's row, then its pg_cron job: created, or changed in place (keeping its jobid).

    A pg_cron job whose role was dropped cannot be changed in place (pg_cron would
    still run it as that role): it is unscheduled, and scheduled again as this role.
    """
    columns = list(StoredJob.__dataclass_fields__)
    target.conn.execute(
        sql.SQL(
            """
            INSERT INTO {table} ({columns}) VALUES ({values})
            ON CONFLICT (name) DO UPDATE SET ({columns}, installed_at) = ({excluded}, now())
            """  # installed_at: staleness counts from the latest definition
        ).format(
            table=sql.Identifier(target.schema, "job"),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=sql.SQL(", ").join(sql.Placeholder(name) for name in columns),
            excluded=sql.SQL(", ").join(sql.Identifier("excluded", name) for name in columns),
        ),
        vars(want),
    )
    if registered is not None and not registered.role_exists:
        target.site.unschedule(registered.jobid)
        registered = None
    if registered is None:
        target.site.schedule(want.name, want.schedule, command, active)
    elif _cron_diffs(registered, want.schedule, command, active):
        target.site.update(registered, want.schedule, command, active)


def _remove_job(target: Target, *, registered: cron.CronJob | None, name: str) -> None:
    if registered is not None:
        target.site.unschedule(registered.jobid)
    target.conn.execute(
        sql.SQL("DELETE FROM {} WHERE name = %s").format(sql.Identifier(target.schema, "job")), [name]
    )


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

        def create(target: Target) -> None:
            target.site.schedule(cron.MAINTENANCE_JOB, cron.MAINTENANCE_SCHEDULE, command, True)

        plan.changes.append(Change("create", "job", cron.MAINTENANCE_JOB, detail, create))
        return
    diffs = _cron_diffs(registered, cron.MAINTENANCE_SCHEDULE, command, True)
    if registered.command != command:  # say what changed, not the whole statement
        retention = f"{sql.Literal(config.history_retention).as_string(None)}::interval"
        what = "history_retention changed" if retention not in registered.command else "command upgraded"
        diffs = [d if not d.startswith("command") else what for d in diffs]
    if not registered.role_exists:
        diffs = [_orphan_line(registered)]
    if diffs:

        def update(target: Target, registered: cron.CronJob = registered) -> None:
            if registered.role_exists:
                target.site.update(registered, cron.MAINTENANCE_SCHEDULE, command, True)
            else:  # pg_cron would go on running it as the dropped role
                target.site.unschedule(registered.jobid)
                target.site.schedule(cron.MAINTENANCE_JOB, cron.MAINTENANCE_SCHEDULE, command, True)

        plan.changes.append(Change("update", "job", cron.MAINTENANCE_JOB, ", ".join(diffs), update))


def _plan_retry(
    plan: Plan, config: Config, jobs: list[ResolvedJob], cron_jobs: dict[str, cron.CronJob]
) -> None:
    """dbjobs' retry job, while some job sets retry_after (README "Retry with backoff"):
    once a minute, in the application's database, as this role, like the cleanups."""
    registered = cron_jobs.get(cron.RETRY_JOB)
    retrying = [job.name for job in jobs if job.retry_after is not None]
    if not retrying:
        if registered is not None:

            def remove(target: Target, registered: cron.CronJob = registered) -> None:
                target.site.unschedule(registered.jobid)

            detail = f"pg_cron job {registered.jobid} ({registered.jobname}): no job sets retry_after"
            plan.changes.append(Change("remove", "job", cron.RETRY_JOB, detail, remove))
        return
    command = cron.retry_command(config.schema)
    if registered is not None and registered.role_exists:
        diffs = _cron_diffs(registered, cron.RETRY_SCHEDULE, command, config.enabled)
    elif registered is not None:
        diffs = [_orphan_line(registered)]
    else:
        diffs = []

    def write(target: Target) -> None:
        if registered is not None and registered.role_exists:
            target.site.update(registered, cron.RETRY_SCHEDULE, command, config.enabled)
            return
        if registered is not None:  # pg_cron would go on running it as the dropped role
            target.site.unschedule(registered.jobid)
        target.site.schedule(cron.RETRY_JOB, cron.RETRY_SCHEDULE, command, config.enabled)

    if registered is None:
        state = "" if config.enabled else " (inactive: enabled = false)"
        detail = (
            f"run the failed runs of {', '.join(retrying)} again after retry_after, "
            f"schedule '{cron.RETRY_SCHEDULE}'{state}"
        )
        plan.changes.append(Change("create", "job", cron.RETRY_JOB, detail, write))
    elif diffs:
        plan.changes.append(Change("update", "job", cron.RETRY_JOB, ", ".join(diffs), write))


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
