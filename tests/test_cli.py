from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlmodel import Session, select

from service.auth import authenticate
from service.cli import main
from service.config import load_settings
from service.db import make_engine
from service.models import ApiKey, Experiment, Variant

KEY = re.compile(r"cb_[0-9a-f]{16}_[A-Za-z0-9_-]+")


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    return url


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def _session(url: str) -> Session:
    return Session(make_engine(load_settings({"database_url": url})))


def test_init_migrates_seeds_and_prints_one_admin_key(database: str) -> None:
    first = run("init")
    assert first.exit_code == 0, first.output
    assert "seeded demo experiment" in first.output
    printed = KEY.findall(first.output)
    assert len(printed) == 1

    again = run("init")
    assert again.exit_code == 0
    assert KEY.findall(again.output) == [] and "seeded" not in again.output

    with _session(database) as session:
        assert len(session.exec(select(Experiment)).all()) == 1
        assert len(session.exec(select(Variant)).all()) == 9
        key = authenticate(session=session, presented=printed[0])
        assert key is not None and key.scope == "admin"


def test_keys_create_list_revoke(database: str) -> None:
    assert run("migrate").exit_code == 0
    created = run("keys", "create", "--scope", "serve", "--label", "storefront")
    plaintext = KEY.findall(created.output)[0]
    key_id = plaintext.split("_")[1]
    listing = run("keys", "list").output
    assert key_id in listing and "serve" in listing and "storefront" in listing
    # The secret half is never shown again.
    assert plaintext not in listing

    assert run("keys", "revoke", key_id).exit_code == 0
    with _session(database) as session:
        assert authenticate(session=session, presented=plaintext) is None
        assert session.get(ApiKey, key_id).revoked_at is not None  # type: ignore[union-attr]
    missing = run("keys", "revoke", "0000")
    assert missing.exit_code != 0 and "no API key with id '0000'" in missing.output


def test_keys_create_rejects_unknown_scope(database: str) -> None:
    result = run("keys", "create", "--scope", "root")
    assert result.exit_code == 2 and "'root' is not one of" in result.output


def test_migrate_check_reports_pending_then_current(database: str) -> None:
    assert run("migrate", "--check").exit_code == 1
    assert run("migrate").exit_code == 0
    checked = run("migrate", "--check")
    assert checked.exit_code == 0 and "up to date" in checked.output


def test_seed_demo_only_fills_an_empty_database(database: str) -> None:
    run("migrate")
    assert "seeded demo experiment" in run("seed-demo").output
    assert "nothing seeded" in run("seed-demo").output


def test_bad_configuration_is_a_clear_error(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYBANDIT_PORT", "http")
    result = run("migrate")
    assert result.exit_code == 1
    assert "COPYBANDIT_PORT must be an int, got 'http'" in result.output


def test_serve_refuses_an_unmigrated_database(database: str) -> None:
    result = run("serve", "--port", "1")
    assert result.exit_code == 1 and "copybandit migrate" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [("--port", "70000"), ("--port", "0"), ("--workers", "0"), ("--workers", "-1")],
)
def test_serve_refuses_a_port_or_worker_count_out_of_range(
    database: str, option: str, value: str
) -> None:
    # These reached gunicorn: a traceback for the port, 0 workers silently became 2.
    result = run("serve", option, value)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': {value} is not in the range" in result.output
