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


def test_a_source_checkout_migrates_from_the_folder_at_its_root() -> None:
    assert migrate.migrations_folder() == ROOT / "migrations"
