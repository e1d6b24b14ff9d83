"""A wheel built from the repository works in a fresh virtualenv outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import DEFAULT_TABLES, AppDb

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_sql_and_works_outside_the_checkout(app_separate: AppDb, tmp_path: Path) -> None:
    app = app_separate
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("dbjobs-*.whl")
    assert "dbjobs/sql/schema.sql" in zipfile.ZipFile(wheel).namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
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

    app.execute(
        DEFAULT_TABLES + "INSERT INTO login_attempts (created_at) VALUES (now() - interval '30 days');"
    )
    install = in_venv("dbjobs", "install")
    assert install.returncode == 0, install.stderr
    assert install.stdout.count("create job") == 5
    run = in_venv("dbjobs", "run", "login_attempts")
    assert run.returncode == 0, run.stderr
    assert "login_attempts: deleted 1 row " in run.stdout
