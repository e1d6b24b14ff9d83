"""Everything about pg_cron: where it lives, which jobs are dbjobs', and changing them.

pg_cron's scheduler runs in one database per server (``cron.database_name``).
When that is the application's database, jobs are made with ``cron.schedule``;
otherwise dbjobs connects to the pg_cron database and makes them with
``cron.schedule_in_database`` for the application's database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from . import sqlfiles
from .config import Config
from .connection import connect, with_database
from .errors import ConnectError, PrerequisiteError

NAME_PREFIX = "dbjobs:"
# dbjobs' own job, which prunes pg_cron's history; configured job names start
# with a letter, so this one never collides with them.
MAINTENANCE_JOB = "_maintenance"
MAINTENANCE_SCHEDULE = "47 * * * *"
# dbjobs' retry job, scheduled only while some job sets retry_after: each minute,
# in the application's database, it runs the jobs whose retry is due.
RETRY_JOB = "_retry"
RETRY_SCHEDULE = "* * * * *"
SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text,text,text,text,text,boolean)"
ALTER_JOB = "cron.alter_job(bigint,text,text,text,text,boolean)"
MAX_JOBNAME_BYTES = 63  # pg_cron before 1.5 cuts job names to NAMEDATALEN - 1
# pg_cron's launcher names itself so in pg_stat_activity, and runs as the
# bootstrap superuser (OID 10) in pg_cron's database: a row every role may see.
SCHEDULER_APPLICATION_NAME = "pg_cron scheduler"
BOOTSTRAP_SUPERUSER = 10
SCHEDULER_FOUND = "pg_cron's scheduler runs there"  # how the pg_cron database was found
# install's lock (see install.INSTALL_LOCK), taken in the pg_cron database for the application's.
CRON_LOCK = "SELECT pg_advisory_xact_lock(hashtext('dbjobs.install'), hashtext(%s))"
# Settings that only a newer pg_cron library defines, newest first: what the
# library can do, where the extension's version may lag (pg_cron 1.6.0 kept
# reporting 1.5 until ALTER EXTENSION pg_cron UPDATE).
LIBRARY_SETTINGS = (((1, 6), "cron.launch_active_jobs"), ((1, 5), "cron.timezone"))


@dataclass(frozen=True)
class CronJob:
    jobid: int
    jobname: str
    schedule: str
    command: str
    database: str
    active: bool
    username: str = ""  # the role pg_cron runs it as
    role_exists: bool = True  # False: that role was dropped, and every run fails to connect


@dataclass
class CronSite:
    """A connection to the database where pg_cron lives, for jobs that run in ``database``."""

    conn: psycopg.Connection[Any]
    database: str
    same_database: bool
    version: tuple[int, ...]  # the extension's (pg_extension.extversion: '1.4-1' is (1, 4, 1))
    cron_database: str
    usage: bool = True  # USAGE on schema cron, which pg_cron does not grant to PUBLIC
    # How cron_database was found: "this database", "cron_dsn", "pg_cron's scheduler runs
    # there", "cron.database_name" or "the default".
    found_by: str = "this database"
    _library: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def version_text(self) -> str:
        """pg_cron's version as dbjobs writes it everywhere (see ``version_label``)."""
        return version_label(self.library_version, self.version)

    @property
    def library_version(self) -> tuple[int, int]:
        """(major, minor) of the pg_cron library the server runs, which is what decides the
        schedules it accepts and how its scheduler behaves; see ``library_version``."""
        if self._library is None:
            self._library = library_version(self.conn, self.version)
        return self._library

    @property
    def library_version_text(self) -> str:
        return ".".join(map(str, self.library_version))

    def job_name(self, job: str) -> str:
        return cron_job_name(self.database, job)

    def jobs(self) -> dict[str, CronJob]:
        """dbjobs' pg_cron jobs for this database, by dbjobs job name."""
        rows = self.conn.execute(
            """
            SELECT jobid, jobname, schedule, command, database, active, username,
                   EXISTS (SELECT FROM pg_roles r WHERE r.rolname = j.username)
              FROM cron.job j
             WHERE (database = %s OR jobname = %s) AND left(jobname, length(%s)) = %s
             ORDER BY jobid
            """,
            [self.database, self.job_name(MAINTENANCE_JOB), NAME_PREFIX, NAME_PREFIX],
        ).fetchall()
        jobs = {}
        for row in rows:
            job = row[1].rpartition(":")[2]
            # Only the exact name this database's job would have: a job named
            # for another database is not this database's to manage.
            if row[1] == self.job_name(job):
                jobs[job] = CronJob(*row)
        return jobs

    def schedule(self, job: str, schedule: str, command: str, active: bool) -> int:
        """Create a job: in the application's database, but dbjobs' maintenance job in pg_cron's own."""
        if self.same_database:
            row = self.conn.execute(
                "SELECT cron.schedule(job_name => %s, schedule => %s, command => %s)",
                [self.job_name(job), schedule, command],
            ).fetchone()
            assert row is not None
            if not active:
                self.alter(row[0], active=False)
            return int(row[0])
        row = self.conn.execute(
            """
            SELECT cron.schedule_in_database(job_name => %s, schedule => %s, command => %s,
                                             database => %s, active => %s)
            """,
            [
                self.job_name(job),
                schedule,
                command,
                self.cron_database if job == MAINTENANCE_JOB else self.database,
                active,
            ],
        ).fetchone()
        assert row is not None
        return int(row[0])

    def update(self, existing: CronJob, schedule: str, command: str, active: bool) -> None:
        """Change a job in place, keeping its jobid."""
        if self.same_database and existing.active == active:
            # cron.schedule upserts on (jobname, username) and needs no extra grant.
            self.conn.execute(
                "SELECT cron.schedule(job_name => %s, schedule => %s, command => %s)",
                [existing.jobname, schedule, command],
            )
        else:
            self.alter(existing.jobid, schedule=schedule, command=command, active=active)

    def alter(
        self,
        jobid: int,
        *,
        schedule: str | None = None,
        command: str | None = None,
        active: bool | None = None,
    ) -> None:
        self.conn.execute(
            "SELECT cron.alter_job(job_id => %s, schedule => %s, command => %s, active => %s)",
            [jobid, schedule, command, active],
        )

    def unschedule(self, jobid: int) -> None:
        self.conn.execute("SELECT cron.unschedule(job_id => %s)", [jobid])

    def may_execute(self, *functions: str) -> bool:
        row = self.conn.execute(
            "SELECT bool_and(has_function_privilege(f, 'EXECUTE')) FROM unnest(%s::text[]) AS f",
            [list(functions)],
        ).fetchone()
        return bool(row and row[0])


def cron_job_name(database: str, job: str) -> str:
    """``dbjobs:<database>:<job>``: unique per target database, since pg_cron's
    names are unique per role across all databases. A database name too long
    for pg_cron 1.4's 63 bytes is replaced by a digest of it."""
    name = f"{NAME_PREFIX}{database}:{job}"
    if len(name.encode()) > MAX_JOBNAME_BYTES:
        name = f"{NAME_PREFIX}~{hashlib.sha1(database.encode()).hexdigest()[:12]}:{job}"
    return name


def maintenance_command(database: str, retention: str) -> str:
    """The SQL that pg_cron runs for dbjobs' maintenance job (sql/maintenance.sql)."""
    text = sqlfiles.read("maintenance.sql")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return body.strip().format(
        database=sql.Literal(database).as_string(None),
        maintenance_job=sql.Literal(cron_job_name(database, MAINTENANCE_JOB)).as_string(None),
        retention=sql.Literal(retention).as_string(None),
    )


def command(schema: str, job: str) -> str:
    """The SQL that pg_cron runs for a job."""
    return f"CALL {sql.Identifier(schema).as_string(None)}.run_job({sql.Literal(job).as_string(None)})"


def retry_command(schema: str) -> str:
    """The SQL that pg_cron runs for dbjobs' retry job (see retry_due in sql/routines.sql)."""
    return f"CALL {sql.Identifier(schema).as_string(None)}.retry_due()"


USAGE_HINT = "a superuser must run: GRANT USAGE ON SCHEMA cron TO {role}"
GRANT_HINT = (
    "a superuser must run: GRANT USAGE ON SCHEMA cron TO {role}; GRANT EXECUTE ON FUNCTION "
    "cron.schedule_in_database(text,text,text,text,text,boolean), "
    "cron.alter_job(bigint,text,text,text,text,boolean) TO {role}"
)


@contextmanager
def locate(
    conn: psycopg.Connection[Any], config: Config, *, for_changes: bool = True, schedule_grants: bool = True
) -> Iterator[CronSite]:
    """The pg_cron database for ``conn``'s database.

    pg_cron is looked for in ``conn``'s database, then in ``cron_dsn`` when the
    configuration sets it, else in the database where pg_cron's scheduler runs
    (visible to every role), else in ``cron.database_name`` (where this role may
    read it), else in ``postgres``. When that is another database, its
    connection is opened here and, with ``for_changes``, checked for the grants
    that scheduling there needs and held in a transaction of its own. Raises
    PrerequisiteError, naming pg_cron and the fix in one line, when pg_cron
    cannot be found.
    """
    here = _probe(conn)
    database, role = here.database, here.role
    if here.ext_version is not None:
        if for_changes:
            here.require_usage()
        yield CronSite(conn, database, True, _version(here.ext_version), database, here.usage)
        return

    if config.cron_dsn:
        cron_dsn, found_by = config.cron_dsn, "cron_dsn"
    else:
        name, found_by = find_cron_database(conn)
        cron_dsn = with_database(conn, name)
    try:
        cron_conn = connect(cron_dsn, autocommit=not for_changes)
    except ConnectError as exc:
        if found_by == "cron_dsn":
            raise
        reason = str(exc).removesuffix(" (set --dsn, DBJOBS_DSN or DATABASE_URL)")
        if found_by == "cron.database_name" and f'database "{name}" does not exist' in reason:
            # Renamed or dropped under pg_cron: its launcher cannot start (it retries each
            # second from pg_cron 1.6.1; 1.4 waits for a restart), so no job runs.
            # Not "pg_cron is not installed": uninstall must not go on without its jobs.
            raise PrerequisiteError(
                f"cron.database_name names database {name!r}, which does not exist (renamed or "
                f"dropped?), and pg_cron is not in database {database!r}: pg_cron's scheduler cannot "
                "run, so no job runs; rename the database back, or set cron.database_name to the "
                "database holding pg_cron's extension and restart PostgreSQL (or set cron_dsn to it)"
            ) from None
        raise PrerequisiteError(
            f"pg_cron is not installed in database {database!r}, and looking for it in database "
            f"{name!r} ({found_by}) failed: {reason}; set cron_dsn to the database where pg_cron lives"
        ) from None
    with cron_conn:
        there = _probe(cron_conn)
        cron_db = there.database
        if there.ext_version is None and found_by == SCHEDULER_FOUND:
            # The library is loaded and its scheduler runs: only the extension is missing
            # (not created yet, or dropped, which took every pg_cron job with it).
            where = f"database {database!r}" + (f" nor in {cron_db!r}" if cron_db != database else "")
            raise PrerequisiteError(
                f"pg_cron is not installed in {where} ({found_by}): its library is loaded and its "
                f"scheduler runs in database {cron_db!r}, but the extension is not created there "
                f"(or was dropped, with every pg_cron job): run CREATE EXTENSION pg_cron in database "
                f"{cron_db!r}, then `dbjobs install` to schedule dbjobs' jobs again "
                "(or set cron_dsn to where pg_cron lives)"
            )
        if there.ext_version is None:
            raise PrerequisiteError(
                f"pg_cron is not installed in database {database!r} nor in {cron_db!r} ({found_by}): "
                "add shared_preload_libraries = 'pg_cron' and cron.database_name to postgresql.conf, "
                "restart, then run CREATE EXTENSION pg_cron in that database "
                "(or set cron_dsn to where pg_cron lives)"
            )
        site = CronSite(
            cron_conn, database, False, _version(there.ext_version), cron_db, there.usage, found_by
        )
        if not for_changes:
            yield site
            return
        there.require_usage(GRANT_HINT if schedule_grants else USAGE_HINT)
        if schedule_grants and not site.may_execute(SCHEDULE_IN_DATABASE, ALTER_JOB):
            raise PrerequisiteError(
                f"pg_cron runs in database {cron_db!r}, so role {role!r} needs to schedule jobs in "
                f"database {database!r}: " + GRANT_HINT.format(role=role)
            )
        with cron_conn.transaction():
            # Serialize with every other install and uninstall for this database on this side
            # too: they commit here after the application's database, so one that holds only the
            # application's lock could read pg_cron's jobs before another's commit here, and
            # leave dbjobs' schema without its jobs, or its jobs without the schema.
            cron_conn.execute(CRON_LOCK, [database])
            yield site


def find_cron_database(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """The database pg_cron lives in, as any role can tell, and how it was found.

    pg_cron's scheduler (its launcher) shows in pg_stat_activity, with its
    database, to every role; cron.database_name is readable only by superusers
    and members of pg_read_all_settings; 'postgres' is pg_cron's default. The
    scheduler is not there on a hot standby, or when it is down.
    """
    row = conn.execute(
        """
        SELECT datname FROM pg_stat_activity
         WHERE application_name = %s AND usesysid = %s AND datname IS NOT NULL
         ORDER BY backend_start LIMIT 1
        """,
        [SCHEDULER_APPLICATION_NAME, BOOTSTRAP_SUPERUSER],
    ).fetchone()
    if row:
        return row[0], SCHEDULER_FOUND
    setting = _cron_database_name(conn)
    if setting:
        return setting, "cron.database_name"
    return "postgres", "the default"


def version_label(library: tuple[int, ...], ext_version: tuple[int, ...]) -> str:
    """ "1.6": the library's major.minor, which decides what pg_cron does; "1.6 (extension 1.5)"
    when the extension's SQL lags behind it (ALTER EXTENSION pg_cron UPDATE brings it level)."""
    text = ".".join(map(str, library[:2]))
    if tuple(ext_version[:2]) < tuple(library[:2]):
        text += f" (extension {'.'.join(map(str, ext_version[:2]))})"
    return text


def library_version(conn: psycopg.Connection[Any], ext_version: tuple[int, ...] = ()) -> tuple[int, int]:
    """(major, minor) of the pg_cron library this server runs.

    The extension's version (``ext_version``, from pg_extension) can lag behind
    the library: pg_cron 1.6.0 reported 1.5 until ALTER EXTENSION pg_cron
    UPDATE, and a library upgraded without that keeps the old SQL. A newer
    library is told by the settings it defines (cron.launch_active_jobs from
    1.6, cron.timezone from 1.5), which show even to roles that may not read
    their values.
    """
    major, minor = (*ext_version, 0, 0)[:2]
    for version, setting in LIBRARY_SETTINGS:
        if (major, minor) >= version:
            break
        if _setting_defined(conn, setting):
            return version
    return (major, minor)


def _setting_defined(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether the server defines setting ``name`` (current_setting's missing_ok gives NULL only for
    an unknown setting: one this role may not read raises an error instead)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return True
    return bool(row and row[0] is not None)


@dataclass(frozen=True)
class _Probe:
    database: str
    role: str
    ext_version: str | None  # pg_cron's, when the extension is in this database
    usage: bool  # USAGE on schema cron, which pg_cron does not grant to PUBLIC

    def require_usage(self, hint: str = USAGE_HINT) -> None:
        if not self.usage:
            raise PrerequisiteError(
                f"role {self.role!r} may not use pg_cron's schema in database {self.database!r}: "
                + hint.format(role=self.role)
            )


def _probe(conn: psycopg.Connection[Any]) -> _Probe:
    row = conn.execute(
        """
        SELECT current_database(), current_user,
               (SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'),
               CASE WHEN to_regnamespace('cron') IS NOT NULL THEN has_schema_privilege('cron', 'USAGE') END
        """
    ).fetchone()
    assert row is not None
    return _Probe(row[0], row[1], row[2], bool(row[3]))


def _cron_database_name(conn: psycopg.Connection[Any]) -> str | None:
    """cron.database_name, when this role may read it (superusers only, on most servers)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return row[0] if row and row[0] else None


def _version(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "0").replace("-", ".").split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)
