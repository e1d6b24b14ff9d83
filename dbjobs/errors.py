"""One exception hierarchy. Each class's docstring is its default message;
``exit_code`` is what the CLI exits with (SPEC section 4)."""

from __future__ import annotations


class DbjobsError(Exception):
    """dbjobs failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(DbjobsError):
    """The configuration is invalid."""

    exit_code = 2


class UnknownJobError(DbjobsError):
    """No such job is configured."""

    exit_code = 2


class ConnectError(DbjobsError):
    """Cannot connect to PostgreSQL."""

    exit_code = 3


class PrerequisiteError(DbjobsError):
    """A prerequisite (server version, pg_cron, a privilege) is missing."""

    exit_code = 3


class NotInstalledError(DbjobsError):
    """dbjobs is not installed in this database: run `dbjobs install`."""

    exit_code = 2
