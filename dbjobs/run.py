"""Run cleanups now, through the same procedure that pg_cron calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from .config import Config
from .connection import connect, with_database
from .errors import DbjobsError, NotInstalledError, UnknownJobError, one_line_error


@dataclass(frozen=True)
class RunResult:
    job: str
    status: str  # succeeded | failed | skipped | partial (stopped at max_runtime)
    rows_deleted: int
    started_at: datetime | None
    duration_ms: float | None
    error: str | None
    partitions_removed: int = 0
    partition_rows: int = 0  # the rows they held, as the statistics estimate them
    partitions_mode: str = "drop"  # how they were removed: drop | detach | archive (moved, kept)
    rows_skipped: int = 0  # left for a later run: a lock on them (or on a row their delete cascades to)
    cascaded_rows: dict[str, int] | None = None  # rows deleted by ON DELETE CASCADE, per child table
    replica_wait_seconds: float = 0.0  # waiting for lagging standbys (max_replica_lag)

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "partial")

    def line(self) -> str:
        if self.status in ("succeeded", "partial"):
            rows = "row" if self.rows_deleted == 1 else "rows"
            line = f"{self.job}: deleted {self.rows_deleted} {rows} in {self.duration_ms or 0:.1f} ms"
            if self.partitions_removed:
                done = {"detach": "detached", "archive": "moved to the archive's schema"}.get(
                    self.partitions_mode, "dropped"
                )
                plural = "" if self.partitions_removed == 1 else "s"
                line += (
                    f" and {done} {self.partitions_removed} partition{plural}"
                    f" (about {self.partition_rows} rows)"
                )
            if self.status == "partial":
                line += " (partial: stopped at max_runtime, the next run goes on)"
            return line + self._extras()
        if self.status == "skipped":
            return f"{self.job}: skipped: {self.error}"
        return f"{self.job}: failed after deleting {self.rows_deleted} rows: {self.error}" + self._extras()

    def _extras(self) -> str:
        """What else the run did: rows it left to a later run, rows that went by cascade."""
        notes = []
        if self.partitions_mode == "archive" and self.rows_deleted:
            notes.append("moved into the archive")
        if self.rows_skipped:
            notes.append(f"{self.rows_skipped} skipped: locked, left for a later run")
        if self.cascaded_rows:
            cascaded = ", ".join(f"{table} {n}" for table, n in sorted(self.cascaded_rows.items()))
            notes.append(f"cascaded: {cascaded}")
        if self.replica_wait_seconds:
            notes.append(f"waited {self.replica_wait_seconds:.1f} s for lagging standbys")
        return f" ({'; '.join(notes)})" if notes else ""


def installed_jobs(conn: psycopg.Connection[Any], config: Config) -> list[str]:
    """Names of the jobs registered in dbjobs' schema; NotInstalledError when there is none."""
    row = conn.execute("SELECT to_regclass(format('%%I.job', %s::text))", [config.schema]).fetchone()
    if not row or row[0] is None:
        raise NotInstalledError(
            f"dbjobs is not installed in this database (no schema {config.schema!r}): run `dbjobs install`"
        )
    query = sql.SQL("SELECT name FROM {} ORDER BY name").format(sql.Identifier(config.schema, "job"))
    return [r[0] for r in conn.execute(query).fetchall()]


def require_installed(job: str, installed: list[str], config: Config) -> None:
    """UnknownJobError, saying what to do, unless ``job`` is installed."""
    if job not in installed:
        hint = (
            "run `dbjobs install` first"
            if config.job(job)
            else f"installed jobs: {', '.join(installed) or 'none'}"
        )
        raise UnknownJobError(f"unknown job {job!r}: {hint}")


Progress = Callable[[int, int | None], None]


def run(
    conn: psycopg.Connection[Any], config: Config, job: str, *, progress: Progress | None = None
) -> RunResult:
    """Run one job's cleanup now and return how it went; the run is recorded in the history.

    The procedure commits between batches, so ``conn`` must not be inside a
    transaction; it is switched to autocommit for the call. ``progress`` is
    called now and then with (rows deleted so far, the planner's estimate of
    the rows to delete), read from the history by a second connection.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise DbjobsError("run needs a connection that is not inside a transaction (it commits per batch)")
    saved = conn.autocommit
    conn.autocommit = True
    try:
        require_installed(job, installed_jobs(conn, config), config)
        history = sql.Identifier(config.schema, "run")
        before = conn.execute(
            sql.SQL("SELECT coalesce(max(id), 0) FROM {} WHERE job = %s").format(history), [job]
        ).fetchone()
        # The job name is sent as a literal, not a parameter: a CALL that
        # COMMITs is safest through the simple query protocol.
        call = sql.SQL("CALL {}.run_job(job_name => {}, run_trigger => 'manual')").format(
            sql.Identifier(config.schema), sql.Literal(job)
        )
        failure: psycopg.Error | None = None
        reconnect = with_database(conn, conn.info.dbname)  # while the session is there to ask
        with _watch(conn, config, job, before[0] if before else 0, progress):
            try:
                conn.execute(call)
            except psycopg.Error as exc:
                failure = exc  # the procedure records its failure before raising; read it below
        latest = sql.SQL(
            """
            SELECT r.id, r.status, r.rows_deleted, r.started_at,
                   extract(epoch FROM r.finished_at - r.started_at)::float8 * 1000 AS duration_ms,
                   r.error, r.partitions_removed, r.partition_rows,
                   coalesce((SELECT CASE WHEN to_jsonb(j) ->> 'archive' IS NOT NULL THEN 'archive'
                                         ELSE j.partitions END
                               FROM {} j WHERE j.name = r.job), 'drop') AS partitions_mode,
                   r.rows_skipped, r.cascaded_rows,
                   extract(epoch FROM r.replica_waited)::float8 AS replica_wait_seconds
              FROM {} r WHERE r.job = %s AND r.id > %s
             ORDER BY r.id DESC LIMIT 1
            """
        ).format(sql.Identifier(config.schema, "job"), history)
        with ExitStack() as stack:
            # The session may be gone: ended by the server (a batch past
            # batch_timeout ends it on PostgreSQL 17+) or by an administrator.
            # The run is then read, and recorded, over a new connection.
            here = conn if not conn.closed else stack.enter_context(connect(reconnect, autocommit=True))
            reader = here.cursor(row_factory=class_row(_RunRow))
            row = reader.execute(latest, [job, before[0] if before else 0]).fetchone()
            if row is not None and row.status == "running" and failure is not None:
                # Cancelled (statement timeout, pg_cancel_backend) or ended: the
                # procedure's handler cannot catch that. Close the run here, so
                # that it says why (and, in the same session, the job's lock is freed).
                here.execute(
                    sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(config.schema, "finish_run")),
                    [row.id, _interrupted(failure, conn.closed)],
                )
                row = reader.execute(latest, [job, before[0] if before else 0]).fetchone()
    finally:
        if not conn.closed:
            conn.autocommit = saved
    if row is None:
        raise DbjobsError(f"job {job!r}: the run did not start: {one_line_error(str(failure))}") from failure
    return RunResult(
        job,
        row.status,
        row.rows_deleted,
        row.started_at,
        row.duration_ms,
        row.error,
        row.partitions_removed,
        row.partition_rows,
        row.partitions_mode,
        row.rows_skipped,
        row.cascaded_rows or None,
        row.replica_wait_seconds,
    )


@dataclass(frozen=True)
class _RunRow:
    """The run just made, as the history holds it (columns read by name)."""

    id: int
    status: str
    rows_deleted: int
    started_at: datetime | None
    duration_ms: float | None
    error: str | None
    partitions_removed: int
    partition_rows: int
    partitions_mode: str
    rows_skipped: int
    cascaded_rows: dict[str, int] | None
    replica_wait_seconds: float


def _interrupted(failure: psycopg.Error, session_ended: bool) -> str:
    message = one_line_error(str(failure))
    if isinstance(failure, psycopg.errors.TransactionTimeout):
        return f"{message}: a batch ran past batch_timeout; the batches before it stay"
    return f"{message} (the session ended)" if session_ended and "connection" not in message else message


@contextmanager
def _watch(
    conn: psycopg.Connection[Any], config: Config, job: str, after: int, progress: Progress | None
) -> Iterator[None]:
    """Report a run's progress from a second connection while ``conn`` is busy running it."""
    if progress is None:
        yield
        return
    done = threading.Event()
    query = sql.SQL(
        "SELECT rows_deleted + partition_rows, estimated_rows FROM {}"
        " WHERE job = %s AND id > %s AND status = 'running'"
    ).format(sql.Identifier(config.schema, "run"))

    def poll() -> None:
        with connect(with_database(conn, conn.info.dbname), autocommit=True) as watcher:
            while not done.wait(0.2):
                row = watcher.execute(query, [job, after]).fetchone()
                if row is not None:
                    progress(int(row[0]), row[1])

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        done.set()
        poller.join(timeout=5)


@dataclass(frozen=True)
class DryRun:
    """What a run of the job would delete now, counted without deleting (nothing is recorded)."""

    job: str
    rows: int  # exactly, the rows of partitions it would remove included
    oldest: datetime | None  # the range of the expiry times among them
    newest: datetime | None
    partitions: list[str]  # that it would drop or detach
    partitions_mode: str | None  # drop | detach | archive (moved), when there are any
    cutoff: datetime

    def line(self) -> str:
        rows = "row" if self.rows == 1 else "rows"
        line = f"{self.job}: would delete {self.rows} {rows}"
        if self.rows:
            line += f" expired from {_iso(self.oldest)} to {_iso(self.newest)}"
        line += f" (cutoff {_iso(self.cutoff)})"
        if self.partitions:
            verb = {"detach": "detach", "archive": "move to the archive's schema"}.get(
                self.partitions_mode or "", "drop"
            )
            line += f", and {verb} {len(self.partitions)} partition(s): {', '.join(self.partitions)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "rows": self.rows,
            "oldest_expired_at": _iso(self.oldest) if self.oldest else None,
            "newest_expired_at": _iso(self.newest) if self.newest else None,
            "cutoff": _iso(self.cutoff),
            "partitions": self.partitions,
            "partitions_mode": self.partitions_mode,
        }


def _iso(when: datetime | None) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else "-"


def dry_run(conn: psycopg.Connection[Any], config: Config, job: str) -> DryRun:
    """Count what ``job`` would delete now, through the same rule as its runs, in a
    transaction that is rolled back: nothing is deleted, locked for long, or recorded."""
    require_installed(job, installed_jobs(conn, config), config)
    with conn.transaction(force_rollback=True):
        row = conn.execute(
            sql.SQL("SELECT * FROM {}(%s)").format(sql.Identifier(config.schema, "dry_run")), [job]
        ).fetchone()
    assert row is not None
    rows, oldest, newest, partitions, mode, cutoff = row
    return DryRun(job, int(rows), oldest, newest, list(partitions or []), mode, cutoff)
