"""examples/alerts.yml: valid rules (promtool check rules), each alert firing on sample series
(promtool test rules with examples/alerts_test.yml), on metrics dbjobs really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import EXAMPLES, AppDb
from tests.test_events import CONFIG, TABLES

RULES = EXAMPLES / "alerts.yml"
UNIT_TESTS = EXAMPLES / "alerts_test.yml"


def promtool(*args: str) -> str:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; scripts/setup installs it)")
    result = subprocess.run(["promtool", *args], cwd=EXAMPLES, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)


def test_the_rules_are_valid() -> None:
    assert f"SUCCESS: {len(alert_names())} rules found" in promtool("check", "rules", RULES.name)


def test_each_alert_fires_in_the_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", UNIT_TESTS.name)
    # ... and each has a test where it fires (not only ones where it stays silent).
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", UNIT_TESTS.read_text()))
    assert firing == set(alert_names()) and len(alert_names()) == 6


def test_the_rules_use_only_metrics_dbjobs_exports(
    app_same: AppDb, dbjobs_cli: Any, write_config: Any
) -> None:
    app = app_same
    app.execute(TABLES)
    config = write_config(CONFIG)
    assert dbjobs_cli("--dsn", app.dsn, "--config", config, "install").code == 0
    dbjobs_cli("--dsn", app.dsn, "--config", config, "run", "tokens")  # consecutive_failures needs a run
    scraped = dbjobs_cli("--dsn", app.dsn, "--config", config, "status", "--format", "prometheus").out
    exported = set(re.findall(r"^(dbjobs_\w+)[{ ]", scraped, re.M))
    used = set(re.findall(r"\bdbjobs_[a-z_]+\b", "\n".join(re.findall(r"expr: (.*)", RULES.read_text()))))
    assert used == {
        "dbjobs_up", "dbjobs_scheduler_running", "dbjobs_job_failing", "dbjobs_job_consecutive_failures",
        "dbjobs_job_stale", "dbjobs_job_missing",
    }  # fmt: skip
    assert used <= exported, f"not exported: {used - exported}"
    # The unit tests' series are exported metrics too, with the label dbjobs gives them.
    series = set(re.findall(r"series: '(dbjobs_\w+)\{", UNIT_TESTS.read_text()))
    assert series <= exported and 'dbjobs_job_failing{job="tokens"}' in scraped
