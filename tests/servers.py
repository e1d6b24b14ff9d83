"""The PostgreSQL servers the tests run against.

In order of preference: ``DBJOBS_TEST_DSN`` (an existing, disposable server:
superuser, connected to the database where pg_cron lives); the installed server
binaries (two throwaway clusters, one per layout: pg_cron in the application's
database, and pg_cron in another); a Docker engine through testcontainers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.devserver import ServerUnavailable, ThrowawayServer, find_bindir, pg_cron_control


@dataclass
class Server:
    """A running server and the database where pg_cron lives on it."""

    dsn: str  # connects to the pg_cron database, as a superuser
    cron_database: str

    def dsn_for(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.dsn, dbname=dbname)


def _from_dsn(dsn: str) -> Server:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        conn.execute("ALTER EXTENSION pg_cron UPDATE")  # the library's own version (see create_pg_cron)
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return Server(dsn, row[0])


@contextmanager
def local_server(cron_database: str, *, preload_pg_cron: bool = True) -> Iterator[Server]:
    with ThrowawayServer(cron_database=cron_database, preload_pg_cron=preload_pg_cron) as pg:
        if preload_pg_cron:
            pg.create_pg_cron()
        yield Server(pg.dsn(cron_database), cron_database)


@contextmanager
def docker_server() -> Iterator[Server]:
    """PostgreSQL with pg_cron in a container, for machines with Docker but no server binaries."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    script = (
        "apt-get update -q && apt-get install -y -q postgresql-$PG_MAJOR-cron && "
        "exec docker-entrypoint.sh postgres -c shared_preload_libraries=pg_cron "
        "-c cron.database_name=postgres"
    )
    container = (
        DockerContainer("postgres:16")
        .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_command(["bash", "-c", script])
        .with_exposed_ports(5432)
    )
    with container:
        # The image's entrypoint first runs a temporary server on a Unix socket only,
        # which logs "ready" too: wait until a TCP connection really works.
        wait_for_logs(container, "database system is ready to accept connections", timeout=300)
        host, port = container.get_container_host_ip(), container.get_exposed_port(5432)
        dsn = f"host={host} port={port} dbname=postgres user=postgres connect_timeout=2"
        deadline = time.monotonic() + 120
        while True:
            try:
                psycopg.connect(dsn).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield _from_dsn(dsn)


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:  # any failure means "no usable engine"
        return False
    return True


def source() -> str:
    """Which kind of server this test run uses: 'dsn', 'local' or 'docker'."""
    if os.environ.get("DBJOBS_TEST_DSN"):
        return "dsn"
    try:
        find_bindir()
        return "local"
    except ServerUnavailable:
        if docker_available():
            return "docker"
        raise


@contextmanager
def local_standby(primary: ThrowawayServer) -> Iterator[ThrowawayServer]:
    """A hot standby of a local throwaway server, streaming from it (pg_basebackup -R)."""
    standby = ThrowawayServer(cron_database=primary.cron_database, bindir=primary.bindir)
    try:
        standby.start_as_standby_of(primary)
        yield standby
    finally:
        standby.stop()


# Written by scripts/setup next to pg_cron's control file when it builds pg_cron
# from a source archive: "pg_cron 1.6.7 (from pg_cron-1.6.7.tar.gz, sha256 ...)".
BUILD_NOTE = "pg_cron.built-from"


def _pg_config(bindir: Path, option: str) -> str | None:
    try:
        result = subprocess.run([str(bindir / "pg_config"), option], capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def pg_cron_library_version(bindir: Path) -> str | None:
    """The version of the pg_cron library installed for the PostgreSQL in ``bindir``, from
    scripts/setup's build note or the Debian package that owns it (None when unknown)."""
    control = pg_cron_control(bindir)
    if control is None:
        return None
    note = control.parent / BUILD_NOTE
    if note.is_file():
        match = re.match(r"pg_cron (\S+)", note.read_text())
        if match:
            return match.group(1)
    pkglibdir = _pg_config(bindir, "--pkglibdir")
    if pkglibdir and shutil.which("dpkg-query"):
        owner = subprocess.run(
            ["dpkg-query", "-S", str(Path(pkglibdir) / "pg_cron.so")], capture_output=True, text=True
        )
        if owner.returncode == 0:
            package = owner.stdout.split(":", 1)[0]
            version = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
            ).stdout
            match = re.match(r"(?:\d+:)?([0-9.]+)", version)
            if match:
                return match.group(1)
    match = re.search(r"default_version\s*=\s*'([^']+)'", control.read_text())
    return match.group(1) if match else None


def version_tuple(text: str) -> tuple[int, ...]:
    """'1.6.7' -> (1, 6, 7); '1.4-1' (an extension version) -> (1, 4)."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def describe_local() -> str:
    """The local server binaries the tests will run, without starting them."""
    bindir = find_bindir()
    server = _pg_config(bindir, "--version") or "PostgreSQL ?"
    return f"{server} + pg_cron {pg_cron_library_version(bindir) or '?'} ({bindir})"
