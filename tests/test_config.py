from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service import create_app
from service.config import DEV_SECRET, ConfigError, load_settings


def test_defaults_serve_an_embedded_sqlite_file_on_loopback() -> None:
    settings = load_settings(environ={}).validate()
    assert settings.database_url == f"sqlite:///{Path('var/copybandit.db').resolve()}"
    assert (settings.host, settings.port, settings.env) == ("127.0.0.1", 8000, "development")


def test_environment_variables_override_defaults() -> None:
    settings = load_settings(
        environ={
            "COPYBANDIT_PORT": "9001",
            "COPYBANDIT_SNAPSHOT_TTL_SECONDS": "2.5",
            "COPYBANDIT_DATABASE_URL": "postgresql://db.internal/copy",
        }
    ).validate()
    assert settings.port == 9001
    assert settings.snapshot_ttl_seconds == 2.5
    # PostgreSQL URLs are pinned to psycopg 3, the driver the project installs.
    assert settings.database_url == "postgresql+psycopg://db.internal/copy"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COPYBANDIT_PORT", "eighty", r"COPYBANDIT_PORT must be an int, got 'eighty'"),
        ("COPYBANDIT_PORT", "70000", r"COPYBANDIT_PORT must be between 1 and 65535"),
        ("COPYBANDIT_ENV", "staging", r"COPYBANDIT_ENV must be one of development, test"),
        ("COPYBANDIT_DATABASE_URL", "mysql://x/y", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_SNAPSHOT_TTL_SECONDS", "-1", r"COPYBANDIT_SNAPSHOT_TTL_SECONDS must be >= 0"),
        ("COPYBANDIT_WORKERS", "0", r"COPYBANDIT_WORKERS must be between 1 and 64"),
        ("COPYBANDIT_LOG_LEVEL", "verbose", r"COPYBANDIT_LOG_LEVEL must be one of DEBUG, INFO"),
        # Each of these passed and then failed with a traceback from the first command.
        ("COPYBANDIT_DATABASE_URL", "sqlite", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "postgresql", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "sqlite:foo.db", r"COPYBANDIT_DATABASE_URL must be a sqlite"),
        ("COPYBANDIT_DATABASE_URL", "postgresql+psycopg2://h/d", r"\(driver: psycopg 3\)"),
        ("COPYBANDIT_DATABASE_URL", "postgresql://h:notaport/d", r"got 'postgresql\+psycopg://h"),
        ("COPYBANDIT_MODEL_DEVICE", "banana", r"COPYBANDIT_MODEL_DEVICE must be cpu, cuda, cuda:N"),
        ("COPYBANDIT_MODEL_DEVICE", "cuda:", r"COPYBANDIT_MODEL_DEVICE must be cpu, cuda, cuda:N"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={variable: value}).validate()


def test_a_refused_database_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"COPYBANDIT_DATABASE_URL": "mysql://app:hunter2@db/shop"}).validate()
    assert "hunter2" not in str(refused.value) and "mysql://app:***@db/shop" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:////tmp/copy.db",
        "postgres://u:p@db.internal:5433/copy",
        "postgresql+psycopg://db.internal/copy",
        "postgresql://u@/copy?host=/var/run/postgresql",
    ],
)
def test_database_urls_of_every_documented_form_are_accepted(url: str) -> None:
    load_settings(environ={"COPYBANDIT_DATABASE_URL": url}).validate()


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_model_devices_torch_knows_are_accepted(device: str) -> None:
    assert (
        load_settings(environ={"COPYBANDIT_MODEL_DEVICE": device}).validate().model_device == device
    )


def test_log_levels_are_taken_in_either_case() -> None:
    # A lower-case level once reached logging.setLevel unchecked and stopped every worker's boot.
    settings = load_settings(environ={"COPYBANDIT_LOG_LEVEL": "warning"}).validate()
    assert settings.log_level == "WARNING"
    logging.Logger("probe").setLevel(settings.log_level)  # raised ValueError for "warning"


def test_production_refuses_default_secrets() -> None:
    with pytest.raises(ConfigError, match="COPYBANDIT_USER_ID_KEY must be set"):
        load_settings(environ={"COPYBANDIT_ENV": "production"}).validate()
    strong = "x" * 40
    settings = load_settings(
        environ={
            "COPYBANDIT_ENV": "production",
            "COPYBANDIT_USER_ID_KEY": strong,
            "COPYBANDIT_SECRET_KEY": strong,
        }
    ).validate()
    assert settings.user_id_key != DEV_SECRET


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'databse_url'"):
        load_settings({"databse_url": "sqlite:///x.db"}, environ={})


def test_create_app_validates_at_start_up() -> None:
    with pytest.raises(ConfigError, match="COPYBANDIT_PORT"):
        create_app({"port": 0})
