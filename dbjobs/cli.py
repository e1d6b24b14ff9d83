"""The ``dbjobs`` command: parse flags, connect, call one library function, print, exit."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg

from . import __version__, formats, logs
from .config import Config, Database, load_config
from .connection import connect, describe, redact, resolve_dsn
from .errors import (
    ConfigError,
    ConnectError,
    DbjobsError,
    NotInstalledError,
    PrerequisiteError,
    UnknownJobError,
    one_line_error,
)
from .health import StatusUnknown, read_status, status_config
from .status import SEVERITY

if TYPE_CHECKING:
    from .run import RunResult

# Each command imports what only it uses (install's machinery, doctor, tqdm)
# when it runs: `dbjobs status`, called every few seconds by monitors, starts
# in little more than the time Python takes to import psycopg.

EXIT_UNKNOWN = 3
# A usage error (a flag misspelt, a missing argument) exits with a code that
# no command gives a result: for status and doctor 2 means "fail", so there it
# is 3, UNKNOWN, as Nagios plugins do; elsewhere 2, invalid input.
USAGE_EXIT = {"status": EXIT_UNKNOWN, "doctor": EXIT_UNKNOWN}
USAGE_EXIT_DEFAULT = 2


class UsageError(Exception):
    """The command line is wrong (raised instead of argparse's exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The flags that go before or after the command: `dbjobs status --dsn X` works too.

    On the subcommands they default to SUPPRESS, so that a flag given before the
    command is not overwritten by the subcommand's default.
    """
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--dsn",
        default=default,
        help="connection string or URL (default: DBJOBS_DSN, DATABASE_URL, PG* variables)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="config file (default: ./dbjobs.toml, ./pyproject.toml)",
    )
    parser.add_argument(
        "--schema",
        default=default,
        help="dbjobs' schema (default: DBJOBS_SCHEMA, the config's schema, dbjobs)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=False if top else argparse.SUPPRESS, help="show tracebacks"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text" if top else argparse.SUPPRESS,
        help="install's plan, run results, warnings and errors as text lines, or one JSON object per line",
    )  # fmt: skip


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dbjobs", description="Expired-data cleanup run by PostgreSQL itself, through pg_cron."
    )
    _global_flags(parser, top=True)
    parser.add_argument("--version", action="version", version=f"dbjobs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = commands.add_parser("install", help="create or update dbjobs' SQL objects and pg_cron jobs")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _all_databases(p)
    p = commands.add_parser("status", help="report the scheduler and every installed job")
    p.add_argument("--format", choices=sorted(formats.FORMATS), default="text")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS",
        help="give up (unknown, exit 3) after this long, whatever the server does (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--backlog", action="store_true",
        help="also count each job's rows eligible for deletion now (reads each job's table)",
    )  # fmt: skip
    _all_databases(p)
    p = commands.add_parser("serve", help="serve a status page, /ready, /metrics and /api/status over HTTP")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: loopback only)"
    )
    p.add_argument(
        "--port", type=_port, default=8089, help="port to listen on (default 8089; 0: any free port)"
    )
    p.add_argument(
        "--interval", type=_seconds, default=5.0, metavar="SECONDS",
        help="read the databases at most once per this long, however many requests come (default 5)",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=_seconds, default=5.0, metavar="SECONDS",
        help="a reading that takes longer is unknown (503 on /ready) (default 5)",
    )  # fmt: skip
    _all_databases(p)
    p = commands.add_parser("run", help="run cleanups now")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--all", action="store_true", help="run every installed job")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="count what each job would delete now; delete and record nothing",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="with --dry-run")
    p = commands.add_parser("watch", help="print each run's event as it happens; POST it to a webhook")
    p.add_argument("--webhook", metavar="URL", help="POST each event to this URL")
    p.add_argument(
        "--format", choices=("json", "slack"), default="json",
        help="the webhook's body: the event (json, default) or a Slack-compatible message",
    )  # fmt: skip
    p.add_argument(
        "--queue-size", type=_positive, default=1000, metavar="N",
        help="events waiting for the webhook before the oldest are dropped (default 1000)",
    )  # fmt: skip
    commands.add_parser("uninstall", help="remove dbjobs' pg_cron jobs and schema")
    _all_databases(commands.add_parser("doctor", help="check the prerequisites and say how to fix each"))
    for sub in commands.choices.values():
        _global_flags(sub, top=False)
    return parser


# --log-format json: set by main() for the lines it and the commands print.
_log_json = False


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give 0-65535 (0: any free port)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _all_databases(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all-databases",
        action="store_true",
        help="every database of --dsn's server where dbjobs is installed (instead of [[databases]])",
    )


def _databases(args: argparse.Namespace, dsn: str, config: Config) -> list[Database] | None:
    """The databases to work on, or None for the one of ``dsn``: --all-databases, else the
    configuration's [[databases]] unless --dsn names one database on the command line."""
    from .fleet import all_databases

    if getattr(args, "all_databases", False):
        found = all_databases(dsn, args.schema or config.schema, deadline=getattr(args, "timeout", 10.0))
        if not found:
            raise NotInstalledError(
                f"dbjobs is installed in no database of {describe(dsn)}: run `dbjobs install`"
            )
        return found
    if config.databases and not args.dsn:
        return list(config.databases)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`dbjobs watch | head -1`): no traceback. Point stdout at
        # /dev/null so that the interpreter's final flush does not fail again, and exit as
        # a shell reports a process that SIGPIPE ended.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    global _log_json
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_json = "--log-format=json" in argv or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(argv)
    )
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        command = next((a for a in argv if a in ALL_COMMANDS), None)
        hint = f"dbjobs {command} --help" if command else "dbjobs --help"
        code = USAGE_EXIT.get(command or "", USAGE_EXIT_DEFAULT)
        return _fail(f"{_redact_argv(str(exc), argv)} (see `{hint}`)", code)
    dsn = resolve_dsn(args.dsn)
    try:
        if args.command in ("status", "serve"):  # read what is installed: a broken config is only a warning
            return READERS[args.command](args, dsn, *status_config(args.config, schema=args.schema))
        if args.command == "watch":  # like status: needs no configuration
            config = status_config(args.config, schema=args.schema)[0]
            _one_database(args, config)
            return _cmd_watch(args, dsn, config)
        config = load_config(args.config, schema=args.schema)
        if args.command in ("run", "uninstall"):
            _one_database(args, config)
        return COMMANDS[args.command](args, dsn, config)
    except (DbjobsError, psycopg.Error) as exc:
        if args.debug:
            raise
        message, code = _explain(exc)
        return _fail(redact(message, dsn), code)


def _one_database(args: argparse.Namespace, config: Config) -> None:
    """Refuse to guess, for a command that works on one database, which of the configuration's."""
    if config.databases and not args.dsn:
        names = ", ".join(d.name for d in config.databases)
        raise ConfigError(
            f"{args.command} works on one database and the configuration lists several ({names}): "
            "name it with --dsn"
        )


def _redact_argv(message: str, argv: list[str]) -> str:
    """argparse quotes what it could not take, a DSN with its password included."""
    for arg in argv:
        message = redact(message, arg.partition("=")[2] if arg.startswith("--dsn=") else arg)
    return message


def _explain(exc: DbjobsError | psycopg.Error) -> tuple[str, int]:
    """The one line and exit code for an error that reached the CLI's boundary."""
    if isinstance(exc, DbjobsError):
        return str(exc), exc.exit_code
    detail = one_line_error(str(exc))
    if isinstance(exc, psycopg.OperationalError):
        # The connection broke after it was made (server shut down, network).
        return f"lost the connection: {detail}", ConnectError.exit_code
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        hint = "grant it, or run as the owner of the database and tables"
        return f"permission denied: {detail} ({hint})", PrerequisiteError.exit_code
    return f"database error: {detail}", 1


def _cmd_serve(args: argparse.Namespace, dsn: str, config: Config, config_problem: str | None) -> int:
    import signal
    import threading

    from .serve import Cache, make_server, reader

    databases = _databases(args, dsn, config)
    single = databases is None
    if databases is None:
        databases = [Database(describe(dsn).rpartition("/")[2], dsn)]
    read = reader(databases, config, deadline=args.timeout, config_problem=config_problem, schema=args.schema)
    try:
        server = make_server(Cache(read, args.interval), args.host, args.port, single=single)
    except OSError as exc:
        raise ConnectError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = str(server.server_address[0]), server.server_address[1]
    print(f"dbjobs serve: http://{host}:{port}/ for {len(databases)} database(s)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _each(
    databases: list[Database], work: Callable[[Database], tuple[list[str], int]], *, records: bool = False
) -> int:
    """Run ``work`` on each database in turn, its lines prefixed with the database's name (with
    ``records``, its lines are JSON records, printed as they are); an error in one is its line on
    stderr (a JSON record with --log-format json), and the others still run. The exit code is the
    highest."""
    code = 0
    for database in databases:
        try:
            lines, result = work(database)
        except (DbjobsError, psycopg.Error) as exc:
            message, result = _explain(exc)
            message = redact(message, database.dsn)
            if _log_json:
                error = logs.record("error", message, "error", exit_code=result, database=database.name)
            else:
                error = f"dbjobs: error: {database.name}: {message}"
            print(error, file=sys.stderr, flush=True)
            lines = []
        for line in lines:
            print(line if records else f"{database.name}: {line}", flush=True)
        code = max(code, result)
    return code


def _cmd_install(args: argparse.Namespace, dsn: str, config: Config) -> int:
    from .install import install

    databases = _databases(args, dsn, config)
    if databases is not None:

        def install_one(database: Database) -> tuple[list[str], int]:
            with connect(database.dsn) as conn:
                plan = install(conn, config, dry_run=args.dry_run)
            return (logs.plan_records(plan, "install", plan.lines()[-1]) if _log_json else plan.lines()), 0

        return _each(databases, install_one, records=_log_json)
    with connect(dsn) as conn:
        plan = install(conn, config, dry_run=args.dry_run)
    if _log_json:
        print("\n".join(logs.plan_records(plan, "install", plan.lines()[-1])))
    else:
        print("\n".join(plan.lines()))
    return 0


def _cmd_uninstall(args: argparse.Namespace, dsn: str, config: Config) -> int:
    from .install import uninstall

    with connect(dsn) as conn:
        plan = uninstall(conn, config)
    nothing = "nothing to remove: dbjobs is not installed"
    if _log_json:
        print("\n".join(logs.plan_records(plan, "uninstall", nothing)))
    else:
        print("\n".join(plan.lines()) if plan.changed else nothing)
    return 0


def _cmd_status(args: argparse.Namespace, dsn: str, config: Config, config_problem: str | None) -> int:
    try:
        databases = _databases(args, dsn, config)
    except DbjobsError as exc:  # the server to list could not be read: unknown, as below
        return _fail(str(exc), EXIT_UNKNOWN)
    if databases is not None:
        from . import fleet

        readings = fleet.read_all(
            databases,
            config,
            deadline=args.timeout,
            schema=args.schema,
            config_problem=config_problem,
            backlog=args.backlog,
        )
        if args.format == "text":
            print(fleet.as_text(readings, colour=formats.use_colour(sys.stdout)))
        else:
            print(fleet.FORMATS[args.format](readings), end="" if args.format == "prometheus" else "\n")
        return fleet.EXIT_CODE[fleet.overall(readings)]
    try:
        report = read_status(
            dsn, config, deadline=args.timeout, config_problem=config_problem, backlog=args.backlog
        )
    except StatusUnknown as exc:
        # Unknown, not failed: say so in the format the caller parses, then exit 3.
        reason = str(exc)
        if args.format != "text":
            print(formats.as_unknown(args.format, reason), end="")
        return _fail(reason, EXIT_UNKNOWN)
    if args.format == "text":
        print(formats.as_text(report, colour=formats.use_colour(sys.stdout)))
    else:
        print(formats.FORMATS[args.format](report), end="" if args.format == "prometheus" else "\n")
    return SEVERITY[report.status]


def _cmd_run(args: argparse.Namespace, dsn: str, config: Config) -> int:
    from .cron import MAINTENANCE_JOB
    from .run import installed_jobs, require_installed, run

    if args.jobs and args.all:
        raise UnknownJobError("name jobs or give --all, not both (--all runs every installed job)")
    if not args.jobs and not args.all:
        raise UnknownJobError("name one or more jobs, or give --all (`dbjobs status` lists them)")
    with connect(dsn, autocommit=True) as conn:
        installed = installed_jobs(conn, config)
        for name in args.jobs:  # before running any, so that a typo does not leave half the jobs run
            if name == MAINTENANCE_JOB:
                raise UnknownJobError(
                    f"{MAINTENANCE_JOB} is dbjobs' own pg_cron job (it prunes pg_cron's history), "
                    "not a cleanup: pg_cron runs it; `dbjobs run` runs the cleanups "
                    f"({', '.join(installed) or 'none installed'})"
                )
            require_installed(name, installed, config)
        names = installed if args.all else args.jobs
        if args.dry_run:
            return _dry_run(conn, config, names, args.format)
        failed = False
        for name in names:
            result = (
                _run_with_progress(conn, config, name) if sys.stderr.isatty() else run(conn, config, name)
            )
            print(logs.run_record(result) if _log_json else result.line(), flush=True)
            failed |= result.status not in ("succeeded", "skipped", "partial")  # partial: progress
    return 1 if failed else 0


def _dry_run(conn: psycopg.Connection[Any], config: Config, names: list[str], format_: str) -> int:
    from .run import dry_run

    results = [dry_run(conn, config, name) for name in names]
    if format_ == "json":
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        print("\n".join(result.line() for result in results))
        print("dry run: nothing was deleted or recorded")
    return 0


def _run_with_progress(conn: psycopg.Connection[Any], config: Config, name: str) -> RunResult:
    """On a terminal: rows deleted, rate and an ETA from the planner's estimate, on stderr."""
    from tqdm import tqdm

    from .run import run

    with tqdm(desc=name, unit=" rows", unit_scale=True, leave=False, file=sys.stderr) as bar:

        def show(deleted: int, estimate: int | None) -> None:
            if estimate and bar.total != max(estimate, deleted):
                bar.total = max(estimate, deleted)
            bar.update(deleted - bar.n)

        return run(conn, config, name, progress=show)


def _cmd_watch(args: argparse.Namespace, dsn: str, config: Config) -> int:
    import signal
    import threading

    from .watch import Webhook, describe, watch

    def warn(message: str) -> None:
        message = redact(message, dsn)
        line = logs.record("warning", message, "warning") if _log_json else f"dbjobs: warning: {message}"
        print(line, file=sys.stderr, flush=True)

    readable = sys.stdout.isatty() and not _log_json
    hook = (
        Webhook(args.webhook, slack=args.format == "slack", queue_size=args.queue_size, warn=warn)
        if args.webhook
        else None
    )

    def emit(event: dict[str, Any]) -> None:
        print(describe(event) if readable else json.dumps(event), flush=True)
        if hook is not None:
            hook.put(event)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a service manager's stop, like Ctrl-C
    try:
        watch(dsn, config, emit, stop=stop, warn=warn)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if hook is not None:
            hook.close()
    return 0


def _cmd_doctor(args: argparse.Namespace, dsn: str, config: Config) -> int:
    from .doctor import doctor, worst

    databases = _databases(args, dsn, config)
    if databases is not None:

        def doctor_one(database: Database) -> tuple[list[str], int]:
            with connect(database.dsn, autocommit=True) as conn:
                found = doctor(conn, config)
            return [line for check in found for line in check.lines()], SEVERITY[worst(found)]

        return _each(databases, doctor_one)
    with connect(dsn, autocommit=True) as conn:
        checks = doctor(conn, config)
    print("\n".join(line for check in checks for line in check.lines()))
    return SEVERITY[worst(checks)]


COMMANDS: dict[str, Callable[[argparse.Namespace, str, Config], int]] = {
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "run": _cmd_run,
    "doctor": _cmd_doctor,
}
READERS: dict[str, Callable[[argparse.Namespace, str, Config, str | None], int]] = {
    "status": _cmd_status,
    "serve": _cmd_serve,
}
ALL_COMMANDS = (*COMMANDS, *READERS, "watch")


def _fail(message: str, code: int) -> int:
    """Each line of the message (a config may have several problems) as one ``dbjobs: error:`` line."""
    for line in message.splitlines() or [""]:
        text = " ".join(line.split())
        print(
            logs.record("error", text, "error", exit_code=code) if _log_json else f"dbjobs: error: {text}",
            file=sys.stderr,
        )
    return code


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def entrypoint() -> None:
    sys.exit(main())
