"""The ``dbjobs`` command: parse flags, connect, call one library function, print, exit."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import psycopg
from tqdm import tqdm

from . import __version__, formats
from .config import Config, load_config
from .connection import connect, redact, resolve_dsn
from .doctor import doctor, worst
from .errors import ConnectError, DbjobsError, PrerequisiteError, UnknownJobError
from .health import StatusUnknown, read_status
from .install import install, uninstall
from .run import RunResult, installed_jobs, run
from .status import SEVERITY

EXIT_UNKNOWN = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbjobs", description="Expired-data cleanup run by PostgreSQL itself, through pg_cron."
    )
    parser.add_argument(
        "--dsn", help="connection string or URL (default: DBJOBS_DSN, DATABASE_URL, PG* variables)"
    )
    parser.add_argument(
        "--config", metavar="PATH", help="config file (default: ./dbjobs.toml, ./pyproject.toml)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"dbjobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("install", help="create or update dbjobs' SQL objects and pg_cron jobs")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p = commands.add_parser("status", help="report the scheduler and every job")
    p.add_argument("--format", choices=sorted(formats.FORMATS), default="text")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="give up (unknown, exit 3) after this long, whatever the server does (default 10)",
    )  # fmt: skip
    p = commands.add_parser("run", help="run cleanups now")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--all", action="store_true", help="run every installed job")
    commands.add_parser("uninstall", help="remove dbjobs' pg_cron jobs and schema")
    commands.add_parser("doctor", help="check the prerequisites and say how to fix each")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dsn = resolve_dsn(args.dsn)
    try:
        config = load_config(args.config)
        return COMMANDS[args.command](args, dsn, config)
    except (DbjobsError, psycopg.Error) as exc:
        if args.debug:
            raise
        message, code = _explain(exc)
        return _fail(redact(message, dsn), code)


def _explain(exc: DbjobsError | psycopg.Error) -> tuple[str, int]:
    """The one line and exit code for an error that reached the CLI's boundary."""
    if isinstance(exc, DbjobsError):
        return str(exc), exc.exit_code
    detail = _one_line(exc)
    if isinstance(exc, psycopg.OperationalError):
        # The connection broke after it was made (server shut down, network).
        return f"lost the connection: {detail}", ConnectError.exit_code
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        hint = "grant it, or run as the owner of the database and tables"
        return f"permission denied: {detail} ({hint})", PrerequisiteError.exit_code
    return f"database error: {detail}", 1


def _cmd_install(args: argparse.Namespace, dsn: str, config: Config) -> int:
    with connect(dsn) as conn:
        plan = install(conn, config, dry_run=args.dry_run)
    print("\n".join(plan.lines()))
    return 0


def _cmd_uninstall(args: argparse.Namespace, dsn: str, config: Config) -> int:
    with connect(dsn) as conn:
        plan = uninstall(conn, config)
    print("\n".join(plan.lines()) if plan.changed else "nothing to remove: dbjobs is not installed")
    return 0


def _cmd_status(args: argparse.Namespace, dsn: str, config: Config) -> int:
    try:
        report = read_status(dsn, config, deadline=args.timeout)
    except StatusUnknown as exc:
        # Unknown, not failed: say so in the format the caller parses, then exit 3.
        reason = str(exc)
        if args.format == "prometheus":
            print(formats.as_prometheus(None), end="")
        elif args.format == "health":
            print(json.dumps(formats.unknown_health(reason), indent=2))
        _fail(reason, EXIT_UNKNOWN)
        return EXIT_UNKNOWN
    if args.format == "text":
        print(formats.as_text(report, colour=formats.use_colour(sys.stdout)))
    else:
        print(formats.FORMATS[args.format](report), end="" if args.format == "prometheus" else "\n")
    return SEVERITY[report.status]


def _cmd_run(args: argparse.Namespace, dsn: str, config: Config) -> int:
    if bool(args.jobs) == args.all:
        raise UnknownJobError("name one or more jobs, or --all")
    with connect(dsn, autocommit=True) as conn:
        installed = installed_jobs(conn, config)
        unknown = [name for name in args.jobs if name not in installed]
        if unknown:  # before running any, so that a typo does not leave half the jobs run
            hint = (
                "run `dbjobs install` first"
                if config.job(unknown[0])
                else f"installed jobs: {', '.join(installed)}"
            )
            raise UnknownJobError(f"unknown job {unknown[0]!r}: {hint}")
        if args.all:
            configured = [job.name for job in config.jobs if job.name in installed]
            names = configured + [name for name in installed if name not in configured]
        else:
            names = args.jobs
        failed = False
        for name in names:
            result = (
                _run_with_progress(conn, config, name) if sys.stderr.isatty() else run(conn, config, name)
            )
            print(result.line(), flush=True)
            failed |= result.status not in ("succeeded", "skipped")
    return 1 if failed else 0


def _run_with_progress(conn: psycopg.Connection[Any], config: Config, name: str) -> RunResult:
    """On a terminal: rows deleted, rate and an ETA from the planner's estimate, on stderr."""
    with tqdm(desc=name, unit=" rows", unit_scale=True, leave=False, file=sys.stderr) as bar:

        def show(deleted: int, estimate: int | None) -> None:
            if estimate and bar.total != max(estimate, deleted):
                bar.total = max(estimate, deleted)
            bar.update(deleted - bar.n)

        return run(conn, config, name, progress=show)


def _cmd_doctor(args: argparse.Namespace, dsn: str, config: Config) -> int:
    with connect(dsn, autocommit=True) as conn:
        checks = doctor(conn, config)
    print("\n".join(line for check in checks for line in check.lines()))
    return SEVERITY[worst(checks)]


COMMANDS = {
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "status": _cmd_status,
    "run": _cmd_run,
    "doctor": _cmd_doctor,
}


def _fail(message: str, code: int) -> int:
    print(f"dbjobs: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def entrypoint() -> None:
    sys.exit(main())
