"""What a wheel built from this tree carries, and that a copybandit installed from one migrates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service import migrate

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the packages, the Alembic scripts shipped inside service, the metadata.
SOURCES = ("bandits", "generation", "service", "migrations", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: building in the checkout leaves build/ behind, whose stale files a later
    # build of the checkout would ship.
    source = tmp_path_factory.mktemp("source")
    unbuilt = shutil.ignore_patterns("__pycache__")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=unbuilt)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", *offline, "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("copybandit-*.whl")
    return built


def _files_under(folder: Path) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_carries_the_migrations_inside_service(wheel: Path) -> None:
    shipped = set(zipfile.ZipFile(wheel).namelist())
    migrations = {f"service/migrations/{name}" for name in _files_under(ROOT / "migrations")}
    assert "service/migrations/env.py" in migrations
    assert migrations - shipped == set()


def test_the_wheel_carries_every_module(wheel: Path) -> None:
    # pyproject lists the packages by hand; one left off would be missing from an install.
    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        f"{package}/{name}"
        for package in ("bandits", "generation", "service")
        for name in _files_under(ROOT / package)
        if name.endswith(".py")
    }
    assert modules - shipped == set()


def test_a_copybandit_installed_from_the_wheel_migrates(wheel: Path, tmp_path: Path) -> None:
    installed = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("COPYBANDIT_")}
    # Only the unpacked wheel: the checkout must not be importable, nor its migrations/ findable.
    env["PYTHONPATH"] = str(installed)
    env["COPYBANDIT_DATABASE_URL"] = f"sqlite:///{tmp_path}/installed.db"
    copybandit = "import sys; from service.cli import main; sys.argv[0] = 'copybandit'; main()"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", copybandit, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database migrated" in migrated.stdout
    checked = run("migrate", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "database is up to date"


# What an installed copybandit reads besides its modules: the dashboard's templates, style
# sheet and script, and the scenario `simulate` runs by default.
_READS_ITS_DATA = """
from service import create_app
from service.cli import SCENARIOS
from bandits.worlds import load_scenario

client = create_app().test_client()
page = client.get("/dashboard/sign-in")
assert page.status_code == 200 and b'name="password"' in page.data, page.status_code
sheet = client.get("/dashboard/static/dashboard.css")
assert sheet.status_code == 200 and sheet.data, sheet.status_code
sheet.close()
script = client.get("/dashboard/static/job.js")
assert script.status_code == 200 and script.data, script.status_code
script.close()
load_scenario(SCENARIOS / "default.json")
print("read")
"""


def test_a_copybandit_installed_from_the_wheel_serves_its_dashboard_and_finds_its_scenarios(
    wheel: Path, tmp_path: Path
) -> None:
    # pyproject lists the packages and their data by hand; a template, the style sheet or a
    # scenario left off would be a 500 or a missing file only once installed.
    installed = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(installed)
    env = {key: value for key, value in os.environ.items() if not key.startswith("COPYBANDIT_")}
    env["PYTHONPATH"] = str(installed)
    env["COPYBANDIT_DATABASE_URL"] = f"sqlite:///{tmp_path}/installed.db"
    read = subprocess.run(
        [sys.executable, "-c", _READS_ITS_DATA],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "read"


def test_a_source_checkout_migrates_from_the_folder_at_its_root() -> None:
    assert migrate.migrations_folder() == ROOT / "migrations"
