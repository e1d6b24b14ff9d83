"""One exception hierarchy. Each class's docstring is its default message;
``exit_code`` is what the CLI exits with (README: "Use it")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class DbjobsError(Exception):
    """dbjobs failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(DbjobsError):
    """The configuration is invalid.

    ``problems``: every problem found, one line each; the message joins them.
    """

    exit_code = 2

    def __init__(self, message: str | None = None, *, problems: list[str] | None = None) -> None:
        self.problems = problems or [message or (self.__doc__ or "").splitlines()[0]]
        super().__init__("\n".join(self.problems))


@contextmanager
def collect_problems(problems: list[str]) -> Iterator[None]:
    """Record a ConfigError's lines and go on, so that one pass finds every problem."""
    try:
        yield
    except ConfigError as exc:
        problems.extend(exc.problems)


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


ERROR_LENGTH = 500
# Lines of a server error that quote dbjobs' own code or statements: never shown.
_NOISE = ("CONTEXT", "QUERY", "STATEMENT", "LOCATION", "LINE")
_SEVERITIES = ("ERROR", "FATAL", "PANIC", "WARNING")


def one_line_error(text: str | None) -> str:
    """A server error as dbjobs shows it anywhere: the message, with DETAIL and
    HINT where there are any, on one line of at most ERROR_LENGTH characters.

    pg_cron keeps libpq's whole error text (``ERROR:  ...`` then DETAIL, HINT,
    CONTEXT lines quoting PL/pgSQL frames and statements): only the first part
    helps a person.
    """
    message, detail, hint = "", "", ""
    for line in (text or "").strip().splitlines():
        label, colon, rest = line.partition(":")
        label = label.strip()
        if (colon and label in _NOISE) or line.startswith("^"):
            break
        if colon and label in _SEVERITIES and not message:
            message = rest
        elif colon and label == "DETAIL":
            detail = rest
        elif colon and label == "HINT":
            hint = rest
        elif not detail and not hint:
            message += " " + line
    result = " ".join(message.split()) or "failed"
    if detail.strip():
        result += f" ({' '.join(detail.split())})"
    if hint.strip():
        result += f" hint: {' '.join(hint.split())}"
    return result if len(result) <= ERROR_LENGTH else result[: ERROR_LENGTH - 1] + "…"
