"""The PostgreSQL servers the tests run against.

In order of preference: ``DBJOBS_TEST_DSN`` (an existing, disposable server:
superuser, connected to the database where pg_cron lives); the installed server
binaries (two throwaway clusters, one per layout of SPEC section 6); a Docker
engine through testcontainers.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from dbjobs.devserver import ServerUnavailable, ThrowawayServer, find_bindir


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
