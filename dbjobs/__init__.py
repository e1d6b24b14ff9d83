"""dbjobs: expired-data cleanup run by PostgreSQL itself (pg_cron), with status for health checks.

The API's names are imported when first used, so that a command (or a
readiness probe) loads only the modules it needs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Config": "config",
    "Job": "config",
    "load_config": "config",
    "ConfigError": "errors",
    "ConnectError": "errors",
    "DbjobsError": "errors",
    "NotInstalledError": "errors",
    "PrerequisiteError": "errors",
    "UnknownJobError": "errors",
    "Plan": "install",
    "install": "install",
    "uninstall": "install",
    "RunResult": "run",
    "run": "run",
    "Report": "status",
    "status": "status",
}

if TYPE_CHECKING:
    from .config import Config, Job, load_config
    from .errors import (
        ConfigError,
        ConnectError,
        DbjobsError,
        NotInstalledError,
        PrerequisiteError,
        UnknownJobError,
    )
    from .install import Plan, install, uninstall
    from .run import RunResult, run
    from .status import Report, status


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dbjobs' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Config",
    "ConfigError",
    "ConnectError",
    "DbjobsError",
    "Job",
    "NotInstalledError",
    "Plan",
    "PrerequisiteError",
    "Report",
    "RunResult",
    "UnknownJobError",
    "install",
    "load_config",
    "run",
    "status",
    "uninstall",
]
