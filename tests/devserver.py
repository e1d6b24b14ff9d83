"""A throwaway PostgreSQL server with pg_cron, for the tests, the benchmarks and the demo.

Part of the checkout, not of the installed package (``tests.devserver``).

It runs the installed server binaries (``/usr/lib/postgresql/<major>/bin``, or
the directory ``DBJOBS_PG_BINDIR`` names) in a temporary directory, listening on
127.0.0.1 on a free port, with pg_cron preloaded. ``initdb`` and ``postgres``
refuse to run as root, so when started by root the server runs as the
unprivileged ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")
# A PostgreSQL bin directory to use instead of the newest one under PG_ROOT (for
# example another build's, with its own pg_cron): the tests' second server.
BINDIR_VARIABLE = "DBJOBS_PG_BINDIR"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries with pg_cron are installed here."""


def find_bindir() -> Path:
    """``DBJOBS_PG_BINDIR``, else the newest installed PostgreSQL major whose pg_cron is installed too."""
    chosen = os.environ.get(BINDIR_VARIABLE)
    if chosen:
        bindir = Path(chosen).absolute()
        if not (bindir / "postgres").is_file():
            raise ServerUnavailable(f"{BINDIR_VARIABLE}={chosen}: no postgres binary there")
        if pg_cron_control(bindir) is None:
            raise ServerUnavailable(
                f"{BINDIR_VARIABLE}={chosen}: pg_cron is not installed for that PostgreSQL "
                "(no pg_cron.control in its extension directory)"
            )
        return bindir
    majors = sorted(
        (int(p.name) for p in PG_ROOT.glob("*") if p.name.isdigit() and (p / "bin/postgres").exists()),
        reverse=True,
    )
    for major in majors:
        if pg_cron_control(PG_ROOT / str(major) / "bin") is not None:
            return PG_ROOT / str(major) / "bin"
    raise ServerUnavailable(
        "no PostgreSQL server with pg_cron is installed: install postgresql-<major> and "
        "postgresql-<major>-cron (scripts/setup does)"
    )


def sharedir(bindir: Path) -> Path:
    """The share directory of the PostgreSQL in ``bindir`` (``pg_config --sharedir``, which is
    relocatable), else Debian's layout."""
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        result = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
    return Path("/usr/share/postgresql") / bindir.parent.name


def pg_cron_control(bindir: Path) -> Path | None:
    """pg_cron's control file for the PostgreSQL in ``bindir``, if pg_cron is installed for it."""
    control = sharedir(bindir) / "extension" / "pg_cron.control"
    return control if control.is_file() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server to come, or to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass
class ThrowawayServer:
    """One PostgreSQL cluster in a temporary directory; ``stop()`` removes it."""

    cron_database: str = "postgres"
    preload_pg_cron: bool = True
    # False: fsync, synchronous_commit and full_page_writes off, for speed. True:
    # left at their defaults (on), as on a production server (benchmarks).
    durable: bool = False
    # More postgresql.conf lines, values as written there: {"cron.timezone": "'Asia/Kolkata'"}.
    settings: dict[str, str] = field(default_factory=dict)
    bindir: Path = field(default_factory=find_bindir)
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dbjobs-pg-")))
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def start(self) -> ThrowawayServer:
        self._check_reachable()
        self._own_workdir()
        subprocess.run(
            _as_server_user(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-N",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self._configure()
        self._launch()
        self._wait_ready()
        if self.preload_pg_cron and self.cron_database != "postgres":
            self.create_database(self.cron_database)
        return self

    def _check_reachable(self) -> None:
        """As root, the server runs as ``postgres``, which must be able to reach the binaries
        (a build under a 0700 home directory is not)."""
        if os.geteuid() == 0:
            probe = subprocess.run(_as_server_user(["test", "-x", str(self.bindir / "postgres")]))
            if probe.returncode != 0:
                raise ServerUnavailable(
                    f"user postgres cannot run {self.bindir / 'postgres'}: every directory above it "
                    "must be searchable by others (chmod o+x), or use binaries installed elsewhere"
                )

    def _own_workdir(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)

    def _configure(self) -> None:
        """Append this server's settings (port, socket, pg_cron) to postgresql.conf; the last one wins."""
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.workdir}'",
            "max_connections": "100",
            "timezone": "'UTC'",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        if self.preload_pg_cron:
            settings |= {
                "shared_preload_libraries": "'pg_cron'",
                "cron.database_name": f"'{self.cron_database}'",
                # pg_cron connects over TCP to run a job; 'localhost' could resolve to ::1.
                "cron.host": "'127.0.0.1'",
            }
        settings |= self.settings
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _launch(self) -> None:
        with open(self.workdir / "server.log", "ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                _as_server_user([str(self.bindir / "postgres"), "-D", str(self.datadir)]),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start_as_standby_of(self, primary: ThrowawayServer) -> ThrowawayServer:
        """Start as a hot standby streaming from ``primary`` (pg_basebackup -R)."""
        self._own_workdir()
        source = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
        backup = [
            str(self.bindir / "pg_basebackup"),
            *source,
            "-D",
            str(self.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]
        subprocess.run(_as_server_user(backup), check=True, capture_output=True)
        self._configure()
        self._launch()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RuntimeError(f"postgres exited: {self.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def execute(self, query: str | sql.SQL | sql.Composed, dbname: str = "postgres") -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(query)

    def create_database(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self.execute(query)

    def create_pg_cron(self, timeout: float = 15.0) -> None:
        """Create the extension at its newest version, then wait for pg_cron's scheduler to be up.

        The scheduler starts with the server, fails while cron.database_name
        does not exist yet, and retries every second.
        """
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_cron", dbname=self.cron_database)
        # An existing extension may be older than the library (pg_cron 1.6.0 kept
        # reporting 1.5 until updated): make it the library's own version.
        self.execute("ALTER EXTENSION pg_cron UPDATE", dbname=self.cron_database)
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while not conn.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pg_cron scheduler')"
            ).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pg_cron's scheduler did not start: {self.log_tail()}")
                time.sleep(0.1)

    def version(self) -> str:
        """``PostgreSQL 15.20 ..., pg_cron 1.4``: pg_cron's version as dbjobs writes it everywhere."""
        from dbjobs.cron import _version, library_version, version_label

        with psycopg.connect(self.dsn(self.cron_database)) as conn:
            server = conn.execute("SHOW server_version").fetchone()
            ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
            cron = (
                version_label(library_version(conn, _version(ext[0])), _version(ext[0]))
                if ext
                else "not created"
            )
        return f"PostgreSQL {server[0] if server else '?'}, pg_cron {cron}"

    def stop_command(self) -> str:
        """A shell command that stops this server and removes its directory, for a server left running."""
        pg_ctl = " ".join(_as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "stop"]))
        return f"{pg_ctl} && rm -rf {self.workdir}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            subprocess.run(
                _as_server_user(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
            )
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ThrowawayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
