"""`dbjobs watch`: LISTEN for dbjobs' events (sql/routines.sql's run_event), print them, POST them.

A listener holds one connection per database that sends events: the
application's, and pg_cron's when that is another one (its ``_maintenance`` job
sends the runs pg_cron could not start from there). Losing a connection (a
restart, a failover) it reconnects with backoff, then reports from dbjobs'
history (``status_events``, which a monitoring role may be granted) the runs
that finished meanwhile: NOTIFY keeps nothing for a listener that is away.
A webhook gets each event from a bounded queue, in its own thread, so that a
slow or unreachable endpoint never holds up listening.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from . import __version__
from .config import Config
from .connection import connect, redact, with_database
from .cron import find_cron_database
from .errors import ConnectError, one_line_error

CHANNEL = "dbjobs"
APPLICATION_NAME = "dbjobs watch"  # its sessions, in pg_stat_activity
Event = dict[str, Any]
Warn = Callable[[str], None]
# Runs that finished this long before the last event seen are looked for again
# after a reconnection: a run's finished_at is read before its commit.
MISSED_MARGIN = timedelta(minutes=1)
PING_EVERY = 30.0  # seconds without events after which the connection is checked
MISSED_MAX = 1000  # the most status_events returns
SEEN_KEPT = 10_000  # events remembered, so that one is never reported twice


def describe(event: Event, *, when: bool = True) -> str:
    """One readable line: ``[<finished_at, to the second>] <database>/<job> <outcome>: ...``."""
    run = (
        f"run {event['run_id']}"
        if event.get("run_id") is not None
        else f"pg_cron run {event.get('cron_run_id')}"
    )
    took = f" in {event['duration_ms']} ms" if event.get("duration_ms") is not None else ""
    where = f"{event.get('database')}/{event.get('job')}"
    line = (
        f"{where} {event.get('outcome')}: "
        f"{event.get('rows_deleted', 0)} rows{took} ({event.get('trigger')}, {run})"
    )
    if when:
        try:
            line = f"{datetime.fromisoformat(event['finished_at']):%Y-%m-%d %H:%M:%SZ} {line}"
        except (KeyError, TypeError, ValueError):
            line = f"- {line}"
    return line + (f": {event['error']}" if event.get("error") else "")


def slack_message(event: Event) -> dict[str, str]:
    """A Slack-compatible incoming-webhook message (Mattermost and others take it too)."""
    mark = {"succeeded": ":white_check_mark:", "partial": ":hourglass:", "skipped": ":fast_forward:"}
    return {"text": f"{mark.get(event.get('outcome', ''), ':x:')} dbjobs {describe(event, when=False)}"}


class Webhook:
    """POSTs each event as JSON from a queue of at most ``queue_size``, oldest dropped (and
    counted, with a warning) when it is full. A network error, HTTP 429 or 5xx is retried
    with exponential backoff; any other refusal drops that event with a warning. The URL
    is never printed: a Slack webhook's URL is its secret."""

    def __init__(
        self,
        url: str,
        *,
        slack: bool = False,
        queue_size: int = 1000,
        timeout: float = 10.0,
        backoff: tuple[float, float] = (1.0, 60.0),
        warn: Warn,
    ) -> None:
        self.url, self.slack, self.queue_size, self.timeout, self.backoff = (
            url,
            slack,
            queue_size,
            timeout,
            backoff,
        )
        self.warn = warn
        self.sent = 0
        self.dropped = 0
        self._queue: collections.deque[Event] = collections.deque()
        self._pending = 0  # taken from the queue, being sent
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="dbjobs-webhook", daemon=True)
        self._thread.start()

    def put(self, event: Event) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                self.warn(
                    f"webhook queue full ({self.queue_size} events waiting): dropped the oldest "
                    f"({self.dropped} dropped so far)"
                )
            self._queue.append(event)
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Events in the queue (not counting the one being sent)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 10.0) -> int:
        """Send what is queued, for at most ``timeout`` seconds; returns how many were not sent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left = len(self._queue) + self._pending
        if left:
            self.warn(f"webhook: {left} events not sent")
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
                self._pending = 1
            delay, failures = self.backoff[0], 0
            while True:
                problem, retry = self._post(event)
                if problem is None or not retry:
                    break
                failures += 1
                if failures == 1:
                    self.warn(f"webhook: {problem}; retrying with backoff")
                with self._cond:
                    self._cond.wait(delay)  # close() wakes it, and the retries go on until close's timeout
                delay = min(delay * 2, self.backoff[1])
            with self._cond:
                self._pending = 0
            if problem is None:
                self.sent += 1
                if failures:
                    self.warn(f"webhook: delivered after {failures} failed attempts")
            else:
                self.warn(f"webhook: {problem}; the event was dropped")

    def _post(self, event: Event) -> tuple[str | None, bool]:
        """(None, _) when delivered, else what went wrong and whether to try again."""
        body = json.dumps(slack_message(event) if self.slack else event).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"dbjobs/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return None, False
        except urllib.error.HTTPError as exc:
            return f"the endpoint answered HTTP {exc.code}", exc.code == 429 or exc.code >= 500
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"could not reach the endpoint: {reason}", True


class Listener:
    """LISTENs on one database, reconnecting with backoff, and hands each event to ``emit``.

    With ``schema`` (the application's database), after each reconnection it
    reads dbjobs' history for the runs that finished while it was away.
    ``database`` keeps only that application's events (pg_cron's database
    carries those of every application whose maintenance job runs there).
    """

    def __init__(
        self,
        dsn: str,
        emit: Callable[[Event], None],
        *,
        database: str,
        schema: str | None,
        stop: threading.Event,
        warn: Warn,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.dsn, self.emit, self.database, self.schema = dsn, emit, database, schema
        self.stop, self.warn, self.backoff = stop, warn, backoff
        self.connected = threading.Event()
        self.connections = 0
        self.failure: BaseException | None = None
        self._since: datetime | None = None  # the latest finished_at seen (server time)
        self._seen: collections.deque[tuple[Any, Any]] = collections.deque(maxlen=SEEN_KEPT)

    def run(self) -> None:
        """Until ``stop``; anything but the database going away (``emit`` failing: stdout
        closed) stops every listener and is kept in ``failure`` for watch() to raise."""
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc
            self.stop.set()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self.stop.is_set():
            try:
                with connect(self.dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
                    self._listen(conn)
                    delay = self.backoff[0]
                    self._wait(conn)
            except (psycopg.Error, ConnectError) as exc:  # the database is away
                self.connected.clear()
                if self.stop.is_set():
                    return
                reason = redact(one_line_error(str(exc)), self.dsn)
                self.warn(f"database {self.where}: {reason}; reconnecting in {delay:g} s")
                self.stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])

    @property
    def where(self) -> str:
        return repr(psycopg.conninfo.conninfo_to_dict(self.dsn).get("dbname") or self.database)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        if self.connections and self.schema is not None and self._since is not None:
            self._report_missed(conn, self._since)
        if self._since is None:
            self._since = row[0]
        self.connections += 1
        if self.connections > 1:
            self.warn(f"database {self.where}: listening again")
        self.connected.set()

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        idle = 0.0
        while not self.stop.is_set():
            got = False
            for notify in conn.notifies(timeout=0.5):
                got = True
                self._take(notify.payload)
            idle = 0.0 if got else idle + 0.5
            if idle >= PING_EVERY:  # a connection whose server went away silently
                conn.execute("SELECT 1")
                idle = 0.0

    def _report_missed(self, conn: psycopg.Connection[Any], since: datetime) -> None:
        query = sql.SQL("SELECT e FROM {}(%s) e").format(sql.Identifier(self.schema or "", "status_events"))
        try:
            rows = conn.execute(query, [since - MISSED_MARGIN]).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            self.warn(
                f"cannot report the runs missed while disconnected: {one_line_error(str(exc))} "
                f"(GRANT EXECUTE ON FUNCTION {self.schema}.status_events(timestamptz) to this role)"
            )
            return
        if len(rows) >= MISSED_MAX:
            self.warn(
                f"database {self.where}: more runs finished while disconnected than the {MISSED_MAX} reported"
            )
        missed = [e for (e,) in rows if (e.get("run_id"), e.get("cron_run_id")) not in self._seen]
        if missed:
            runs = "1 run" if len(missed) == 1 else f"{len(missed)} runs"
            self.warn(f"database {self.where}: {runs} finished while disconnected (from the history)")
        for event in missed:
            self._take(event)

    def _take(self, payload: str | Event) -> None:
        try:
            event = json.loads(payload) if isinstance(payload, str) else payload
        except ValueError:
            self.warn(f"ignored a NOTIFY {CHANNEL} that is not dbjobs' JSON: {str(payload)[:100]!r}")
            return
        if not isinstance(event, dict) or event.get("database") != self.database:
            return
        key = (event.get("run_id"), event.get("cron_run_id"))
        if key in self._seen:
            return
        self._seen.append(key)
        try:
            finished = datetime.fromisoformat(event["finished_at"])
        except (KeyError, TypeError, ValueError):
            finished = None
        if finished is not None and (self._since is None or finished > self._since):
            self._since = finished
        self.emit(event)


def cron_dsn(conn: psycopg.Connection[Any], config: Config) -> str | None:
    """Where pg_cron (so dbjobs' maintenance job) sends its events, when not in ``conn``'s database."""
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron')").fetchone()
    if row and row[0]:
        return None
    if config.cron_dsn:
        return config.cron_dsn
    name, _ = find_cron_database(conn)
    return None if name == conn.info.dbname else with_database(conn, name)


def watch(
    dsn: str,
    config: Config,
    emit: Callable[[Event], None],
    *,
    stop: threading.Event,
    warn: Warn,
    backoff: tuple[float, float] = (1.0, 30.0),
    started: Callable[[list[Listener]], None] | None = None,
) -> None:
    """Listen until ``stop`` is set, calling ``emit`` (from one thread at a time) for each event."""
    with connect(dsn, autocommit=True) as conn:
        database = conn.info.dbname
        other = cron_dsn(conn, config)
    lock = threading.Lock()

    def emit_one(event: Event) -> None:
        with lock:
            emit(event)

    listeners = [
        Listener(
            dsn, emit_one, database=database, schema=config.schema, stop=stop, warn=warn, backoff=backoff
        )
    ]
    if other is not None:
        listeners.append(
            Listener(other, emit_one, database=database, schema=None, stop=stop, warn=warn, backoff=backoff)
        )
    threads = [
        threading.Thread(target=listener.run, name="dbjobs-listen", daemon=True) for listener in listeners
    ]
    for thread in threads:
        thread.start()
    if started is not None:
        started(listeners)
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    for listener in listeners:
        if listener.failure is not None:
            raise listener.failure
