"""dbjobs: expired-data cleanup run by PostgreSQL itself (pg_cron), with status for health checks.

The API's functions are imported eagerly: ``status``, ``run`` and ``install``
share their names with modules of this package, and a lazy attribute would be
replaced by the module as soon as anything imported it.
"""

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

__version__ = "0.1.0"

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
