"""``dbjobs serve``: a status page, readiness, metrics and JSON over HTTP (README: "Status page").

The standard library's ThreadingHTTPServer parses HTTP: one thread per
request, no new dependency, and nothing here but routing and rendering. Every
request is answered from one cached reading of the databases, taken at most
once every ``max_age`` seconds whatever the number of requests (the first
request after that reads again while the others wait on the same lock), and
a reading never takes longer than ``deadline``: a database that does not
answer is ``unknown`` and readiness says 503.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import fleet, formats
from .config import Config, Database
from .fleet import Reading, Run
from .formats import HEALTH_CONTENT_TYPE, HTTP_STATUS

DEFAULT_HOST = "127.0.0.1"  # loopback: the page shows errors and table names
DEFAULT_PORT = 8089
DEFAULT_MAX_AGE = 5.0  # seconds between two readings of the databases
DEFAULT_DEADLINE = 5.0  # seconds one reading may take, all databases together
# The text format generate_latest() writes, as every Prometheus version reads it
# (prometheus_client's CONTENT_TYPE_LATEST names a newer version in its later releases).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Snapshot:
    """One reading of every database, and when it was taken."""

    readings: list[Reading]
    read_at: datetime

    @property
    def status(self) -> str:
        return fleet.overall(self.readings)


class Cache:
    """The latest Snapshot, read again once it is ``max_age`` seconds old, by one request at a time."""

    def __init__(self, read: Callable[[], Snapshot], max_age: float) -> None:
        self._read = read
        self._max_age = max_age
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken = 0.0

    def get(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None or time.monotonic() - self._taken >= self._max_age:
                self._snapshot = self._read()
                self._taken = time.monotonic()
            return self._snapshot


def reader(
    databases: Sequence[Database],
    config: Config,
    *,
    deadline: float = DEFAULT_DEADLINE,
    config_problem: str | None = None,
    schema: str | None = None,
) -> Callable[[], Snapshot]:
    """What the cache calls: every database read in parallel, with their recent runs."""

    def read() -> Snapshot:
        readings = fleet.read_all(
            databases,
            config,
            deadline=deadline,
            runs=fleet.RUNS_PER_JOB,
            schema=schema,
            config_problem=config_problem,
        )
        return Snapshot(readings, datetime.now(UTC))

    return read


def make_server(
    cache: Cache, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, single: bool = True
) -> ThreadingHTTPServer:
    """An HTTP server answering from ``cache`` (not started: call serve_forever). ``single``: one
    database given by --dsn, whose documents keep the shape ``dbjobs status`` prints."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "dbjobs"

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            route = ROUTES.get(self.path.partition("?")[0])
            if route is None:
                code, content_type, text = (
                    404,
                    "text/plain; charset=utf-8",
                    "not found: try / /ready /metrics\n",
                )
            else:
                code, content_type, text = route(cache.get(), single)
            payload = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds would fill the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _ready(snapshot: Snapshot, single: bool) -> tuple[int, str, str]:
    """health+json, 200 for pass and warn, 503 for fail and unknown (as dbjobs.health.readiness)."""
    if single:
        (reading,) = snapshot.readings
        if reading.report is None:
            document = formats.unknown_health(reading.error or "unknown")
        else:
            document = formats.health(reading.report)
    else:
        document = fleet.health(snapshot.readings)
    code = 503 if snapshot.status == "unknown" else HTTP_STATUS[snapshot.status]
    return code, HEALTH_CONTENT_TYPE, json.dumps(document, indent=2) + "\n"


def _metrics(snapshot: Snapshot, single: bool) -> tuple[int, str, str]:
    if single:
        text = formats.as_prometheus(snapshot.readings[0].report)
    else:
        text = fleet.as_prometheus(snapshot.readings)
    return 200, METRICS_CONTENT_TYPE, text


def _api(snapshot: Snapshot, single: bool) -> tuple[int, str, str]:
    readings = snapshot.readings
    document = readings[0].to_dict() if single else json.loads(fleet.as_json(readings))
    document["read_at"] = _iso(snapshot.read_at)
    return 200, "application/json", json.dumps(document, indent=2) + "\n"


def _page(snapshot: Snapshot, single: bool) -> tuple[int, str, str]:
    return 200, "text/html; charset=utf-8", page(snapshot)


ROUTES: dict[str, Callable[[Snapshot, bool], tuple[int, str, str]]] = {
    "/": _page,
    "/ready": _ready,
    "/metrics": _metrics,
    "/api/status": _api,
}


# ---------------------------------------------------------------------------
# The page: server-rendered HTML, every value escaped, charts as inline SVG.
# ---------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2329; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } th, td { padding: .35em .7em; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #ccd; } td { border-bottom: 1px solid #e4e6ea; }
.pass { color: #17753a; } .warn { color: #9a6700; } .fail, .unknown { color: #c0262d; }
.badge { font-weight: 600; text-transform: uppercase; }
.error { color: #c0262d; max-width: 28em; word-break: break-word; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #6a737d; }
svg text { font: 10px system-ui, sans-serif; fill: #6a737d; }
"""


def page(snapshot: Snapshot) -> str:
    """The whole page, readable without JavaScript (it reloads itself every 30 s)."""
    status = snapshot.status
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="30">',
        f"<title>dbjobs {status.upper()}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<h1>dbjobs <span class="badge {status}" id="overall">{status}</span></h1>',
        f'<p class="muted">read at {_e(_iso(snapshot.read_at))}, {len(snapshot.readings)} database(s); '
        '<a href="/ready">/ready</a> · <a href="/metrics">/metrics</a> · '
        '<a href="/api/status">/api/status</a></p>',
    ]
    parts += [_database(reading) for reading in snapshot.readings]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _database(reading: Reading) -> str:
    name = reading.database.name
    head = f'<section class="database" data-database="{_e(name)}">'
    if reading.report is None:
        return (
            f'{head}<h2>{_e(name)} <span class="badge unknown">unknown</span></h2>'
            f'<p class="error">{_e(reading.error or "")}</p></section>'
        )
    report = reading.report
    parts = [
        head,
        f'<h2>{_e(name)} <span class="badge {report.status}">{report.status}</span> '
        f'<span class="muted">database {_e(report.database)}, schema {_e(report.schema)}</span></h2>',
        f'<p class="muted">scheduler: {_e(report.scheduler.detail)}</p>',
    ]
    if not report.installed:
        parts.append(
            '<p class="error">dbjobs is not installed in this database: run <code>dbjobs install</code></p>'
        )
    parts += [f'<p class="warn">{_e(line)}</p>' for line in report.drift]
    if reading.runs_problem:
        parts.append(f'<p class="muted">{_e(reading.runs_problem)}</p>')
    if report.jobs:
        parts.append(
            "<table><thead><tr><th>job</th><th>state</th><th>last success</th><th>next run</th>"
            '<th class="num">rows deleted</th><th>error</th><th>recent runs<br><span class="muted">'
            "bars: rows deleted (red with a cross: failed, amber: stopped at max_runtime); line: duration"
            "</span></th></tr></thead><tbody>"
        )
        for job in report.jobs:
            problems = [*([job.last_error] if job.last_error and job.status != "pass" else []), *job.warnings]
            rows = "-" if job.last_rows_deleted is None else f"{job.last_rows_deleted:,}"
            parts.append(
                f'<tr class="job" data-job="{_e(job.name)}"><td>{_e(job.name)}<br>'
                f'<span class="muted">{_e(job.schedule)}</span></td>'
                f'<td class="{job.status}">{_e(job.state)}</td>'
                f"<td>{_e(_when(job.last_success_at))}</td><td>{_e(_when(job.next_run_at))}</td>"
                f'<td class="num">{rows}</td>'
                f'<td class="error">{"<br>".join(_e(p) for p in problems)}</td>'
                f"<td>{chart(job.name, reading.runs.get(job.name, []))}</td></tr>"
            )
        parts.append("</tbody></table>")
    elif report.installed:
        parts.append("<p>no jobs are installed</p>")
    parts.append("</section>")
    return "\n".join(parts)


_WIDTH, _HEIGHT, _BAND = 300, 70, 30  # the chart, and the height of each of its two bands
_COLOUR = {"succeeded": "#3b7dd8", "partial": "#d39a1c", "failed": "#c0262d"}


def chart(job: str, runs: Sequence[Run]) -> str:
    """Rows deleted per run (bars, lower band) and duration per run (line, upper band), oldest
    left; a failed run is a red bar the height of the band with a cross above it."""
    label = f"recent runs of {job}"
    head = (
        f'<svg class="chart" data-job="{_e(job)}" role="img" aria-label="{_e(label)}" '
        f'width="{_WIDTH}" height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{_e(label)}</title>"
    )
    if not runs:
        return f'{head}<text x="4" y="{_HEIGHT // 2}">no finished runs yet</text></svg>'
    step = (_WIDTH - 60) / len(runs)
    most_rows = max(r.rows_deleted for r in runs) or 1
    durations = [r.duration_ms or 0.0 for r in runs]
    longest = max(durations) or 1.0
    bottom, top = _HEIGHT - 2, _HEIGHT - 2 - _BAND
    parts = [head]
    points = []
    for i, run in enumerate(runs):
        x = i * step
        if run.status == "failed":
            height = float(_BAND)
        else:
            height = max(1.0, _BAND * run.rows_deleted / most_rows) if run.rows_deleted else 0.0
        tip = (
            f"{_iso(run.started_at)} {run.status}: {run.rows_deleted:,} rows, "
            f"{_duration(run.duration_ms)}" + (f" — {run.error}" if run.error else "")
        )
        parts.append(
            f'<g class="run {run.status}"><title>{_e(tip)}</title>'
            f'<rect x="{x + 1:.1f}" y="{bottom - height:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{height:.1f}" fill="{_COLOUR.get(run.status, "#888")}"/>'
        )
        if run.status == "failed":
            cx, cy = x + step / 2, top - 6
            parts.append(
                f'<path class="failure" d="M{cx - 3:.1f} {cy - 3:.1f}l6 6m0 -6l-6 6" '
                'stroke="#c0262d" stroke-width="2"/>'
            )
        parts.append("</g>")
        points.append(f"{x + step / 2:.1f},{top - 12 - 20 * durations[i] / longest:.1f}")
    parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#555" stroke-width="1.5"/>')
    # The scale, right-aligned in the margin beside the plot: the longest run, the most rows.
    scale = f'x="{_WIDTH - 2}" text-anchor="end" font-size="10"'
    parts.append(f'<text {scale} y="{top - 18}">{_e(_duration(longest))}</text>')
    most = max(r.rows_deleted for r in runs)
    parts.append(f'<text {scale} y="{bottom - 4}">{_count(most)} {"row" if most == 1 else "rows"}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _count(n: int) -> str:
    """A count that fits the chart's margin: 1,000 as it is, 250k, 1.5M."""
    for at_least, unit, suffix in ((10**9, 10**9, "G"), (10**6, 10**6, "M"), (10**4, 10**3, "k")):
        if n >= at_least:
            return f"{n / unit:.3g}{suffix}"
    return f"{n:,}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _when(when: datetime | None) -> str:
    return _iso(when).replace("T", " ").removesuffix("Z") + " UTC" if when else "-"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"
