"""A wheel built from the repository holds exactly the package, and works in a fresh virtualenv
outside the checkout without the alembic extra: install, run, status and doctor through the CLI.

With ``DBJOBS_TEST_CONSTRAINTS`` naming a pip constraints file (scripts/test's lowest-versions step
writes one pinning every dependency at its declared floor), the fresh virtualenv gets those versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import DEFAULT_TABLES, AppDb

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS_VARIABLE = "DBJOBS_TEST_CONSTRAINTS"


def expected_files(version: str) -> list[str]:
    """Every module of dbjobs/ and every file of sql/ (shipped as dbjobs/sql/), py.typed, and the
    wheel's metadata with the LICENSE: nothing else (no tests, no tests.devserver, no bytecode)."""
    modules = [f"dbjobs/{path.name}" for path in (ROOT / "dbjobs").glob("*.py")]
    sql = [
        f"dbjobs/sql/{path.relative_to(ROOT / 'sql')}" for path in (ROOT / "sql").rglob("*") if path.is_file()
    ]
    info = f"dbjobs-{version}.dist-info"
    metadata = ["METADATA", "RECORD", "WHEEL", "entry_points.txt", "licenses/LICENSE"]
    return sorted([*modules, *sql, "dbjobs/py.typed", *(f"{info}/{name}" for name in metadata)])


def _release(version: str) -> tuple[int, ...]:
    """'0.17' and '0.17.0' alike: (0, 17)."""
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_wheel_ships_the_package_and_works_outside_the_checkout(app_separate: AppDb, tmp_path: Path) -> None:
    app = app_separate
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("dbjobs-*.whl")
    version = wheel.name.split("-")[1]
    names = sorted(zipfile.ZipFile(wheel).namelist())
    assert names == expected_files(version)
    assert "dbjobs/py.typed" in names and any(name.startswith("dbjobs/sql/") for name in names)
    assert not any("devserver" in name for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    constraints = os.environ.get(CONSTRAINTS_VARIABLE)
    pip_install = [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)]
    if constraints:
        pip_install += ["--constraint", constraints]
    installed = subprocess.run(pip_install, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBJOBS_", "PG", "PYTHON"))}
    env["DBJOBS_DSN"] = app.dsn

    def in_venv(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / argv[0]), *argv[1:]], cwd=workdir, env=env, capture_output=True, text=True
        )

    where = in_venv("python", "-c", "import dbjobs; print(dbjobs.__file__)")
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout
    check = in_venv("pip", "check")
    assert check.returncode == 0, check.stdout
    versions = in_venv("pip", "list", "--format", "json")
    installed_names = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(versions.stdout)}
    print("dependencies in the fresh virtualenv:", installed_names)  # shown with -rA / on failure
    if constraints:  # each pinned dependency the wheel pulled in is at its pinned version
        for line in Path(constraints).read_text().split():
            name, _, pinned = line.partition("==")
            name = name.lower().replace("_", "-")
            if name in installed_names:
                assert _release(installed_names[name]) == _release(pinned), (name, installed_names[name])

    # No alembic extra: Alembic and SQLAlchemy are not installed, and dbjobs.alembic says what to do.
    assert "alembic" not in installed_names and "sqlalchemy" not in installed_names
    extra = in_venv("python", "-c", "import dbjobs.alembic")
    assert extra.returncode == 1
    assert extra.stderr.splitlines()[-1] == (
        "ModuleNotFoundError: dbjobs.alembic needs Alembic and SQLAlchemy (alembic is not installed): "
        "pip install 'dbjobs[alembic]'"
    )

    app.execute(
        DEFAULT_TABLES + "INSERT INTO login_attempts (created_at) VALUES (now() - interval '30 days');"
    )
    install = in_venv("dbjobs", "install")
    assert install.returncode == 0, install.stderr
    assert install.stdout.count("create job") == 5
    run = in_venv("dbjobs", "run", "login_attempts")
    assert run.returncode == 0, run.stderr
    assert "login_attempts: deleted 1 row " in run.stdout

    # The other three jobs have not run yet and none is due: the status passes.
    status = in_venv("dbjobs", "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["status"] == "pass"
    jobs = {job["name"]: job for job in report["jobs"]}
    assert jobs["login_attempts"]["state"] == "ok" and jobs["login_attempts"]["last_rows_deleted"] == 1
    text = in_venv("dbjobs", "status")
    assert text.returncode == 0, text.stderr
    assert "login_attempts" in text.stdout
    metrics = in_venv("dbjobs", "status", "--format", "prometheus")  # prometheus-client
    assert metrics.returncode == 0, metrics.stderr
    assert 'dbjobs_job_last_rows_deleted{job="login_attempts"} 1.0' in metrics.stdout

    doctor = in_venv("dbjobs", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # every check passes
    assert "PASS  connection: " in doctor.stdout and "PASS  index for login_attempts: " in doctor.stdout
