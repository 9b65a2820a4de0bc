from __future__ import annotations

import contextlib
import json
import os
import pkgutil
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlmodel import Session, select

from service import lifecycle
from service import migrate as migrations
from service.auth import authenticate
from service.cli import SCENARIOS, main
from service.config import load_settings
from service.db import make_engine
from service.metrics import MULTIPROC_ENV
from service.models import (
    ApiKey,
    Event,
    Experiment,
    GenerationJob,
    Impression,
    Marketer,
    Variant,
    utcnow,
)
from tests.conftest import BACKENDS, postgres_schema, postgres_schema_url
from tests.test_lifecycle_run import held_as_too_long

KEY = re.compile(r"cb_[0-9a-f]{16}_[A-Za-z0-9_-]+")


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    return url


@pytest.fixture
def free_port() -> str:
    """A port free on every address, IPv4 and IPv6: serve binds the port it is given to check
    it, so a fixed one failed these tests while anything else (`make run`: 8000) listened there."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return str(probe.getsockname()[1])


@contextlib.contextmanager
def _taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another process (this one) listens on, while the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def _session(url: str) -> Session:
    return Session(make_engine(load_settings({"database_url": url})))


def test_init_migrates_seeds_and_prints_one_admin_key(database: str) -> None:
    first = run("init")
    finished = utcnow()
    assert first.exit_code == 0, first.output
    assert "seeded demo experiment" in first.output
    printed = KEY.findall(first.output)
    assert len(printed) == 1

    again = run("init")
    assert again.exit_code == 0
    assert KEY.findall(again.output) == [] and "seeded demo experiment" not in again.output

    with _session(database) as session:
        assert len(session.exec(select(Experiment)).all()) == 1
        assert len(session.exec(select(Variant)).all()) == 9
        key = authenticate(session=session, presented=printed[0])
        assert key is not None and key.scope == "admin"
        # The demo's week ends when init ran: a conversion's delay after a late impression had
        # stamped it minutes into the future.
        shown_at = {i.id: i.created_at for i in session.exec(select(Impression))}
        conversions = session.exec(select(Event)).all()
        assert conversions and all(
            shown_at[e.impression_id] <= e.created_at <= finished for e in conversions
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_init_names_what_the_first_made_and_how_to_get_more_but_no_secret(
    backend: str, sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said only "database already up to date": nothing of the demo, the key and the account
    # the first had printed, nor of the commands that make others once that output was gone.
    for name in ("COPYBANDIT_HOST", "COPYBANDIT_PORT"):
        monkeypatch.delenv(name, raising=False)
    with contextlib.ExitStack() as cleanup:
        if backend == "sqlite":
            shutil.copy(sqlite_template, tmp_path / "init.db")
            url = f"sqlite:///{tmp_path}/init.db"
        else:
            url, _ = cleanup.enter_context(postgres_schema(f"copybandit_again_{os.getpid()}"))
        monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
        first = run("init", "--no-demo-history")
        assert first.exit_code == 0, first.output
        [key] = KEY.findall(first.output)
        [password] = re.findall(r"password: (\S+)", first.output)
        revoked = KEY.findall(run("keys", "create", "--scope", "admin").output)[0]
        assert run("keys", "revoke", revoked).exit_code == 0

        again = run("init", "--no-demo-history")

    assert again.exit_code == 0, again.output
    assert key not in again.output and password not in again.output
    assert again.output.split("\n", 1)[1] == (
        "no demo seeded: the database already has 1 experiment (1: Demo: Ridgeline trail shoes)\n"
        "\n"
        f"Admin API key already made (live: {key.split('_')[1]}); it was shown once, when made.\n"
        "Lost it? `copybandit keys create --scope admin`.\n"
        "\n"
        "Dashboard sign-in: http://127.0.0.1:8000/dashboard/ (accounts: marketer@example.com;"
        " passwords are not shown again).\n"
        "Lost a password? `copybandit users set-password --email marketer@example.com`.\n"
        "More accounts: `copybandit users create --email you@example.com`.\n"
        "\n"
    )


def test_init_prints_an_admin_key_while_no_live_one_exists(database: str) -> None:
    # A serve key, or an admin key since revoked, made init think one had been printed.
    assert run("migrate").exit_code == 0
    assert run("keys", "create", "--scope", "serve").exit_code == 0
    revoked = KEY.findall(run("keys", "create", "--scope", "admin").output)[0]
    assert run("keys", "revoke", revoked.split("_")[1]).exit_code == 0

    first = run("init", "--no-demo-history")
    assert first.exit_code == 0, first.output
    printed = KEY.findall(first.output)
    assert len(printed) == 1 and "Admin API key" in first.output
    assert KEY.findall(run("init", "--no-demo-history").output) == []
    with _session(database) as session:
        key = authenticate(session=session, presented=printed[0])
        assert key is not None and key.scope == "admin"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "creates",
    ["service.demo.create_experiment", "service.cli.create_key", "service.cli.create_marketer"],
)
def test_two_inits_at_once_make_one_of_each_and_neither_fails(
    backend: str,
    creates: str,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each init checked (no demo, no admin key, no account) and then created: two at once both
    found none, and one of them stored a second first-run admin key or died on a Conflict."""
    with contextlib.ExitStack() as cleanup:
        if backend == "sqlite":
            shutil.copy(sqlite_template, tmp_path / "init.db")
            url = f"sqlite:///{tmp_path}/init.db"
        else:
            url, _ = cleanup.enter_context(postgres_schema(f"copybandit_init_{os.getpid()}"))
        monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
        first_checked, second_done = threading.Event(), threading.Event()
        real_create = pkgutil.resolve_name(creates)

        def create_after_the_other_init(**kwargs: Any) -> Any:
            # The first init to get here, past its check, lets the other one run first: it
            # must wait for this one instead of finding nothing and creating its own.
            if not first_checked.is_set():
                first_checked.set()
                second_done.wait(timeout=2)
            return real_create(**kwargs)

        monkeypatch.setattr(creates, create_after_the_other_init)
        failures: list[BaseException] = []

        def init() -> None:
            try:
                main(["init", "--no-demo-history"], standalone_mode=False)
            except BaseException as exc:
                failures.append(exc)

        first = threading.Thread(target=init)
        first.start()
        assert first_checked.wait(timeout=30)
        init()
        second_done.set()
        first.join(timeout=60)

        assert failures == []
        with _session(url) as session:
            assert len(session.exec(select(Experiment)).all()) == 1
            assert len(session.exec(select(ApiKey)).all()) == 1
            assert len(session.exec(select(Marketer)).all()) == 1


def test_keys_create_list_revoke(database: str) -> None:
    assert run("migrate").exit_code == 0
    created = run("keys", "create", "--scope", "serve", "--label", "storefront")
    plaintext = KEY.findall(created.output)[0]
    key_id = plaintext.split("_")[1]
    listing = run("keys", "list").output
    assert key_id in listing and "serve" in listing and "storefront" in listing
    # --help promises the day each was created, which the list left out.
    with _session(database) as session:
        made = session.get(ApiKey, key_id).created_at  # type: ignore[union-attr]
    (line,) = listing.splitlines()
    # Its day is UTC's, and says so: unlabelled, it read as the host's local day.
    assert line.split()[:6] == [key_id, "serve", "live", "created", f"{made:%Y-%m-%d}", "UTC"], line
    # The secret half is never shown again.
    assert plaintext not in listing

    assert run("keys", "revoke", key_id).exit_code == 0
    with _session(database) as session:
        assert authenticate(session=session, presented=plaintext) is None
        revoked_at = session.get(ApiKey, key_id).revoked_at  # type: ignore[union-attr]
    assert revoked_at is not None
    (line,) = run("keys", "list").output.splitlines()
    assert line.split()[2:7] == [
        "revoked",
        f"{revoked_at:%Y-%m-%d}",
        "UTC",
        "created",
        f"{made:%Y-%m-%d}",
    ]
    missing = run("keys", "revoke", "0000")
    assert missing.exit_code != 0 and "no API key with id '0000'" in missing.output


def test_keys_revoke_takes_the_whole_key_and_never_echoes_its_secret(database: str) -> None:
    assert run("migrate").exit_code == 0
    plaintext = KEY.findall(run("keys", "create", "--scope", "serve").output)[0]
    key_id, _, secret = plaintext.removeprefix("cb_").partition("_")
    revoked = run("keys", "revoke", plaintext)
    # It said "no API key with id 'cb_<id>_<secret>'": the secret, printed to the terminal.
    assert (revoked.exit_code, revoked.output) == (0, f"revoked {key_id}\n")
    with _session(database) as session:
        assert authenticate(session=session, presented=plaintext) is None
    unknown = run("keys", "revoke", f"cb_0000_{secret}")
    assert unknown.exit_code != 0 and "no API key with id '0000'" in unknown.output
    assert secret not in unknown.output


def _keys_create_printing_to(
    stdout: Any, *, closed: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [Path(sys.executable).parent / "copybandit", "keys", "create", "--scope", "admin"],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        # `>&-`: the child starts with no file descriptor 1.
        preexec_fn=(lambda: os.close(1)) if closed else None,
    )


@pytest.mark.parametrize("output", ["a full disk", "a pipe no one reads"])
def test_a_key_that_cannot_be_printed_is_revoked(database: str, output: str) -> None:
    # A traceback (a full disk under `> key.txt`), or exit 1 without a word (a pipe whose reader
    # had gone), and a live admin key that no one had seen.
    assert run("migrate").exit_code == 0
    if output == "a full disk":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            made = _keys_create_printing_to(full)
        why = "No space left on device"
    else:
        reader, writer = os.pipe()
        os.close(reader)
        made = _keys_create_printing_to(writer)
        os.close(writer)
        why = "Broken pipe"
    with _session(database) as session:
        (key,) = session.exec(select(ApiKey)).all()
    assert key.revoked_at is not None
    assert made.returncode == 1
    assert made.stderr == (
        f"Error: could not print the key ({why}); revoked it ({key.id}), so no key is live that "
        "no one has seen\n"
    )


def test_keys_create_with_its_output_closed_makes_no_key(database: str) -> None:
    # It exited 0, saying "created admin key ...", with the key printed nowhere.
    assert run("migrate").exit_code == 0
    made = _keys_create_printing_to(subprocess.DEVNULL, closed=True)
    assert (made.returncode, made.stderr) == (
        1,
        "Error: standard output is closed: nowhere to print a key; none made\n",
    )
    with _session(database) as session:
        assert session.exec(select(ApiKey)).all() == []


def test_a_listing_a_full_disk_refuses_ends_in_one_line(database: str) -> None:
    # `keys list > listing.txt` on a full disk ended in a traceback.
    assert run("migrate").exit_code == 0
    assert run("keys", "create", "--scope", "admin").exit_code == 0
    with open("/dev/full", "w") as full:
        listed = subprocess.run(
            [Path(sys.executable).parent / "copybandit", "keys", "list"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert (listed.returncode, listed.stderr) == (
        1,
        "Error: could not write: No space left on device\n",
    )


def test_empty_listings_say_so_on_stderr_and_print_nothing_on_stdout(database: str) -> None:
    # An empty database's `keys list` printed nothing at all, which read as a command that had
    # failed quietly; a script counting stdout's lines must still count none.
    assert run("migrate").exit_code == 0
    keys = run("keys", "list")
    users = run("users", "list")
    assert (keys.exit_code, keys.stdout) == (0, "")
    assert keys.stderr == "no API keys: `copybandit keys create --scope serve` makes one\n"
    assert (users.exit_code, users.stdout) == (0, "")
    assert users.stderr == "no marketers: `copybandit users create --email EMAIL` adds one\n"
    assert run("keys", "create", "--scope", "serve").exit_code == 0
    assert run("keys", "list").stderr == ""


def test_keys_create_rejects_unknown_scope(database: str) -> None:
    result = run("keys", "create", "--scope", "root")
    assert result.exit_code == 2 and "'root' is not one of" in result.output


def test_migrate_check_reports_pending_then_current(database: str) -> None:
    assert run("migrate", "--check").exit_code == 1
    assert run("migrate").exit_code == 0
    checked = run("migrate", "--check")
    assert checked.exit_code == 0 and "up to date" in checked.output


class _Deadlocked(Exception):
    sqlstate = "40P01"


@pytest.mark.parametrize("deadlocks", [2, 3])
def test_a_migration_that_deadlocks_with_a_running_server_runs_again(
    database: str, monkeypatch: pytest.MonkeyPatch, deadlocks: int
) -> None:
    """A rolling upgrade on PostgreSQL: the release before's sticky decision and the migration
    each waited for a table the other held, and migrate exited 1 with "deadlock detected"."""
    upgrade = migrations.upgrade
    runs: list[int] = []

    def deadlocking(engine: sa.Engine, revision: str = "head") -> None:
        runs.append(1)
        if len(runs) <= deadlocks:
            raise sa.exc.OperationalError("CREATE INDEX", {}, _Deadlocked())
        upgrade(engine, revision)

    monkeypatch.setattr(migrations, "upgrade", deadlocking)
    result = run("migrate")

    if deadlocks < 3:
        assert result.exit_code == 0, result.output
        assert "migrating again (2/3)" in result.output
        assert run("migrate", "--check").exit_code == 0
    else:
        assert result.exit_code == 1
        assert "deadlock detected 3 times" in result.output
        assert "nothing was changed" in result.output
    assert len(runs) == 3


def test_migrate_check_where_there_is_no_database_file_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It made an empty var/copybandit.db, which every other command refuses to do.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COPYBANDIT_DATABASE_URL", raising=False)
    checked = run("migrate", "--check")
    assert checked.exit_code == 1
    assert f"no SQLite file at {tmp_path / 'var' / 'copybandit.db'}" in checked.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_commands_refuse_an_in_memory_sqlite_database(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # init said it migrated one, then failed on its missing tables; no command could work.
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    for command in (["init"], ["migrate"], ["migrate", "--check"], ["keys", "list"]):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert "names an in-memory SQLite database" in result.output, result.output
        assert "migrated" not in result.output


def test_migrate_shows_the_database_url_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A colon in the path printed as %3A.
    url = f"sqlite:///{tmp_path}/copy:2026/cli.db"
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
    assert run("migrate").output == f"database migrated: {url}\n"
    # It had said "migrated" again, as if this release had changed the database.
    assert run("migrate").output == f"database already up to date: {url}\n"
    assert run("init").output.startswith(f"database already up to date: {url}\n")


def test_seed_demo_only_fills_an_empty_database(database: str) -> None:
    run("migrate")
    assert "seeded demo experiment" in run("seed-demo").output
    assert "nothing seeded" in run("seed-demo").output


def test_bad_configuration_is_a_clear_error(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPYBANDIT_PORT", "http")
    result = run("migrate")
    assert result.exit_code == 1
    assert "COPYBANDIT_PORT must be an int, got 'http'" in result.output


@pytest.mark.parametrize("command", [["migrate"], ["keys", "list"], ["migrate", "--check"]])
def test_settings_holding_bytes_that_are_not_utf8_are_named_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # A Latin-1 é in a path, as a shell in that encoding passes it: a UnicodeEncodeError traceback
    # (the URL was shown, or handed to the driver), and its password was not ours to print either.
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", f"sqlite:///{tmp_path}/caf\udce9.db")
    monkeypatch.setenv("COPYBANDIT_USER_ID_KEY", "k\udce9y")
    result = CliRunner().invoke(main, command)
    # A traceback exits 1 too, with the exception kept.
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    how = "holds bytes that are not UTF-8; check the encoding of the file or shell that sets it"
    assert result.output == (
        f"Error: configuration:\n  COPYBANDIT_DATABASE_URL {how}\n  COPYBANDIT_USER_ID_KEY {how}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_every_missing_secret_is_named_in_one_error(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_ENV", "production")
    result = run("migrate")
    assert result.exit_code == 1
    rule = "must be set to a random value of at least 32 characters in production, got '<default>'"
    assert result.output == (
        f"Error: configuration:\n  COPYBANDIT_USER_ID_KEY {rule}\n  COPYBANDIT_SECRET_KEY {rule}\n"
    )


def test_a_misspelt_setting_is_named_once_not_silently_ignored(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_SCHEDULAR", "off")
    monkeypatch.setenv("COPYBANDIT_NONSENSE", "1")
    result = run("migrate")
    assert result.exit_code == 0, result.output
    warning = (
        "warning: ignoring unknown settings: COPYBANDIT_NONSENSE, "
        "COPYBANDIT_SCHEDULAR (did you mean COPYBANDIT_SCHEDULER?)"
    )
    assert result.output.count(warning) == 1, result.output


def test_a_misspelt_setting_is_a_json_line_when_the_log_format_is_json(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COPYBANDIT_LOG_FORMAT", "json")
    monkeypatch.setenv("COPYBANDIT_SCHEDULAR", "off")
    result = run("migrate")
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "warning" and logged["message"] == (
        "ignoring unknown settings: COPYBANDIT_SCHEDULAR (did you mean COPYBANDIT_SCHEDULER?)"
    )


def test_the_error_that_ends_a_command_is_a_json_line_when_the_log_format_is_json(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # click's plain "Error: ..." was the one line a log pipeline could not parse: serve's reason
    # for not starting among them.
    monkeypatch.setenv("COPYBANDIT_LOG_FORMAT", "json")
    result = run("serve")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    logged = json.loads(line)
    assert logged["level"] == "error" and logged["logger"] == "service.cli"
    assert logged["message"].startswith("database: no SQLite file at ")
    # A mistyped option is for the person at the terminal: click's usage text, as before.
    assert run("serve", "--bogus").exit_code == 2


def test_the_error_that_ends_a_command_stays_plain_with_text_logs(database: str) -> None:
    result = run("serve")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: database: no SQLite file at ")


def test_the_simulators_key_variable_is_not_called_unknown(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's HTTP mode passes the key this way; the warning said it was ignored and asked
    # whether COPYBANDIT_USER_ID_KEY was meant.
    monkeypatch.setenv("COPYBANDIT_SIM_KEY", "cb_from_env")
    result = run("migrate")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_the_readmes_production_steps_leave_an_admin_key_and_a_sign_in_and_no_demo(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The steps stopped at migrate and serve: a server nobody held a key for, and no account.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Running in production", 1)[1].split("```sh\n", 1)[1]
    block = block.split("```", 1)[0]
    monkeypatch.setenv("COPYBANDIT_ENV", "production")
    monkeypatch.setenv("COPYBANDIT_SECRET_KEY", "s" * 32)
    monkeypatch.setenv("COPYBANDIT_USER_ID_KEY", "u" * 32)
    for line in block.splitlines():
        command = line.split("#", 1)[0].split()
        if command[:1] != ["copybandit"] or command[1] == "serve":
            continue
        result = CliRunner().invoke(main, command[1:], input="a-password-1\n" * 2)
        assert result.exit_code == 0, (line, result.output)
    with _session(database) as session:
        assert [key.scope for key in session.exec(select(ApiKey)).all()] == ["admin"]
        assert len(session.exec(select(Marketer)).all()) == 1
        assert session.exec(select(Experiment)).all() == []


@pytest.mark.parametrize("from_option", [True, False], ids=["--host", "COPYBANDIT_HOST"])
def test_serve_refuses_a_host_it_cannot_resolve_naming_where_it_came_from(
    database: str, monkeypatch: pytest.MonkeyPatch, from_option: bool
) -> None:
    # gunicorn tried the name five times, each "Name or service not known", naming no setting.
    assert run("migrate").exit_code == 0
    if from_option:
        result = run("serve", "--host", "not_a_host.invalid", "--port", "1")
    else:
        monkeypatch.setenv("COPYBANDIT_HOST", "not_a_host.invalid")
        result = run("serve", "--port", "1")
    where = "--host" if from_option else "COPYBANDIT_HOST"
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: {where}: cannot listen on 'not_a_host.invalid': ")


@pytest.mark.parametrize("from_option", [True, False], ids=["--port", "COPYBANDIT_PORT"])
def test_serve_refuses_a_port_another_process_listens_on_in_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch, from_option: bool
) -> None:
    # It printed "serving on ..." and then gunicorn's "Connection in use" a dozen times in 7 s.
    assert run("migrate").exit_code == 0
    with _taken_port() as port:
        if from_option:
            result = run("serve", "--host", "127.0.0.1", "--port", str(port))
        else:
            monkeypatch.setenv("COPYBANDIT_PORT", str(port))
            result = run("serve", "--host", "127.0.0.1")
    where = "--port" if from_option else "COPYBANDIT_PORT"
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {where}: cannot listen on 127.0.0.1:{port}: another process is listening "
        "there; stop it or choose another port\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "--experiment", "\u0663"],
        ["generate", "--experiment", "1", "-n", "\uff12"],
        ["purge", "--older-than", "90d", "--batch-size", "\u0665\u0660"],
        ["serve", "--port", "\u0668\u0660\u0660\u0660"],
        ["serve", "--port", "8_000"],
    ],
    ids=["experiment", "n", "batch-size", "port", "underscore"],
)
def test_a_number_in_another_scripts_digits_is_refused_as_a_word_is(
    database: str, args: list[str]
) -> None:
    # int() reads them: `generate --experiment ٣` generated for experiment 3.
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert f"{args[-1]!r} is not a valid integer range." in result.output


@pytest.mark.parametrize("host", ["[::1", "::1]"])
def test_serve_refuses_an_ipv6_host_with_one_bracket_naming_the_option(
    database: str, host: str
) -> None:
    # The check read it without its brackets, so gunicorn got "[::1:1" and said only
    # "'' is not a valid port number."
    assert run("migrate").exit_code == 0
    result = run("serve", "--host", host, "--port", "1")
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: --host: cannot listen on {host!r}: ")
    assert "serving on" not in result.output


def test_a_database_that_cannot_be_reached_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    for command in (["check"], ["migrate"], ["serve"]):
        result = run(*command)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: database: connection failed")
        assert "Traceback" not in result.output and "port 1" in result.output


@contextlib.contextmanager
def _unmigrated(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    schema = f"copybandit_empty_{os.getpid()}"
    engine = sa.create_engine(postgres_schema_url(schema))
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield postgres_schema_url(schema)
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def test_check_counts_one_variant_and_one_mismatch_in_the_singular(
    api: Any, session: Session, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "1 variants checked", and "1 mismatched counter(s) in 1 variants".
    created = api.create_experiment()
    variant = api.add_variant(created["id"], "tea-lovers", "The Aurora kettle, boiled in 3 min.")
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    checked = run("check")
    assert (checked.exit_code, checked.output) == (
        0,
        "1 variant checked: every counter matches its rows\n",
    )
    stored = session.get(Variant, variant["id"])
    assert stored is not None
    stored.impressions = 3
    session.add(stored)
    session.commit()
    mismatched = run("check")
    assert mismatched.exit_code == 1
    assert mismatched.output.splitlines()[-1] == "Error: 1 mismatched counter in 1 variant"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_command_on_an_unmigrated_database_says_to_migrate(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _unmigrated(backend, tmp_path) as url:
        monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
        result = run("check")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: database: ")
    assert "run `copybandit migrate` first" in result.output and "Traceback" not in result.output


@pytest.mark.skipif("postgres" not in BACKENDS, reason="PostgreSQL roles and privileges")
def test_a_postgres_role_without_privileges_or_a_table_in_the_way_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg raises both as ProgrammingError, which was left to print its traceback as a bug.
    role = f"copybandit_nogrant_{os.getpid()}"
    with _unmigrated("postgres", tmp_path) as url:
        admin = sa.create_engine(url)
        schema = f"copybandit_empty_{os.getpid()}"
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
            connection.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            connection.exec_driver_sql("CREATE TABLE marketer (id integer)")
        try:
            monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
            in_the_way = run("migrate")
            with admin.begin() as connection:
                connection.exec_driver_sql("DROP TABLE marketer")
            assert run("migrate").exit_code == 0
            as_role = sa.engine.make_url(url).set(username=role, password="pw")
            monkeypatch.setenv(
                "COPYBANDIT_DATABASE_URL", as_role.render_as_string(hide_password=False)
            )
            unprivileged = {"keys list": run("keys", "list"), "migrate": run("migrate")}
        finally:
            with admin.begin() as connection:
                connection.exec_driver_sql(f"DROP OWNED BY {role}")
                connection.exec_driver_sql(f"DROP ROLE {role}")
            admin.dispose()
    assert in_the_way.exit_code == 1, in_the_way.output
    assert in_the_way.output == (
        'Error: database: relation "marketer" already exists; the database already has a table '
        "of that name; give copybandit a database of its own\n"
    )
    for name, result in unprivileged.items():
        assert result.exit_code == 1, (name, result.output)
        assert result.output.startswith(
            "Error: database: permission denied for table alembic_version; the database role "
            "needs privileges"
        ), (name, result.output)
        assert len(result.output.splitlines()) == 1, (name, result.output)


@pytest.mark.skipif("postgres" not in BACKENDS, reason="PostgreSQL's search_path")
def test_a_postgres_search_path_naming_no_schema_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # InvalidSchemaName is a ProgrammingError too: `migrate` printed its traceback, right after
    # every other command had said to run it.
    monkeypatch.setenv(
        "COPYBANDIT_DATABASE_URL", postgres_schema_url(f"copybandit_never_made_{os.getpid()}")
    )
    for command in (["migrate"], ["init"]):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert result.output == (
            "Error: database: no schema has been selected to create in; the search_path names "
            "no schema that exists: create it (CREATE SCHEMA), or name one that does\n"
        ), (command, result.output)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_commands_on_a_database_from_an_older_migration_say_to_migrate_and_change_nothing(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _unmigrated(backend, tmp_path) as url:
        monkeypatch.setenv("COPYBANDIT_DATABASE_URL", url)
        engine = make_engine(load_settings({"database_url": url}))
        migrations.upgrade(engine, "0004")
        # Before, the lifecycle logged a traceback per segment and exited 0, and seed-demo left
        # an experiment without variants behind.
        commands = [
            ["check"],
            ["lifecycle", "--once", "--no-generate"],
            ["seed-demo"],
            ["keys", "list"],
            ["serve", "--port", "1"],
        ]
        results = {command[0]: run(*command) for command in commands}
        with engine.connect() as connection:
            experiments = connection.exec_driver_sql("SELECT count(*) FROM experiment").scalar()
        engine.dispose()
    for name, result in results.items():
        assert result.exit_code == 1, (name, result.output)
        assert "is at migration 0004, this code needs" in result.output, (name, result.output)
        assert "run `copybandit migrate`" in result.output and "Traceback" not in result.output
    assert experiments == 0


def test_a_database_migrated_by_a_newer_version_is_one_clear_line(database: str) -> None:
    assert run("migrate").exit_code == 0
    engine = make_engine(load_settings({"database_url": database}))
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    for command in (["migrate"], ["init"], ["migrate", "--check"], ["check"]):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert "is at migration 9999, which this copybandit does not know" in result.output
        assert "Traceback" not in result.output
    # It said "migrations pending", for a database no migration of this version can help.
    checked = run("migrate", "--check")
    assert checked.output.startswith("database is newer than this copybandit: ")
    assert "pending" not in checked.output


def test_a_sqlite_path_that_cannot_be_made_or_is_not_a_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("hello, not a database\n" * 200)
    folder = tmp_path / "data"
    folder.mkdir()
    # SQLite's words, which named neither the path nor what was wrong with it: "File exists"
    # (making the folder; check said to run migrate), "file is not a database", and "unable to
    # open database file".
    said = {
        not_a_database / "copy.db": f"under {not_a_database}, which is a file, not a folder",
        not_a_database: "which is not a SQLite database",
        folder: f"a folder: name a file in it (sqlite:///{folder}/copybandit.db)",
    }
    for path, problem in said.items():
        monkeypatch.setenv("COPYBANDIT_DATABASE_URL", f"sqlite:///{path}")
        commands = (
            ["migrate"],
            ["migrate", "--check"],
            ["check"],
            ["init"],
            ["serve", "--port", "1"],
        )
        for command in commands:
            result = run(*command)
            assert (result.exit_code, result.output) == (
                1,
                f"Error: database: COPYBANDIT_DATABASE_URL names {path}, {problem}\n",
            ), command
    assert not_a_database.read_text().startswith("hello")
    assert list(folder.iterdir()) == []


def test_key_text_the_command_line_could_not_read_as_utf8_is_refused(database: str) -> None:
    """Such bytes arrive as lone surrogates, which the database driver cannot encode: a
    traceback, where every other refusal names what was wrong."""
    assert run("migrate").exit_code == 0
    refused = run("keys", "create", "--scope", "serve", "--label", "caf\udce9")
    assert refused.exit_code == 2 and "--label" in refused.output
    assert "not UTF-8" in refused.output
    assert run("keys", "list").stdout == ""
    unknown = run("keys", "revoke", "caf\udce9")
    assert unknown.exit_code == 1 and unknown.output.startswith("Error: no API key with id")


def test_a_key_label_longer_than_its_column_is_refused(database: str) -> None:
    assert run("migrate").exit_code == 0
    refused = run("keys", "create", "--scope", "serve", "--label", "x" * 201)
    assert refused.exit_code == 2 and "at most 200 characters, got 201" in refused.output
    assert "serve" not in run("keys", "list").stdout
    assert run("keys", "create", "--scope", "serve", "--label", "x" * 200).exit_code == 0


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("shop\nfake  serve  live", "U+000A"),
        ("shop\r", "U+000D"),
        ("shop\tfront", "U+0009"),
        ("\x1b[31mshop", "U+001B"),
        ("shop\x85", "U+0085"),
        ("shop\u2028front", "U+2028"),
        ("shop\u202epots", "U+202E"),
        ("shop\u2067front", "U+2067 is not closed by U+2069"),
    ],
    ids=["newline", "cr", "tab", "escape", "c1", "line-separator", "override", "open-isolate"],
)
def test_a_key_label_that_would_break_the_key_list_is_refused(
    database: str, label: str, shown: str
) -> None:
    """A newline in a label made a second line of `keys list`, read by scripts as another key."""
    assert run("migrate").exit_code == 0
    refused = run("keys", "create", "--scope", "serve", "--label", label)
    assert refused.exit_code == 2 and "--label" in refused.output, refused.output
    assert shown in refused.output, refused.output
    assert run("keys", "list").stdout == ""


def test_a_label_stored_before_with_a_newline_lists_on_one_line(database: str) -> None:
    assert run("migrate").exit_code == 0
    run("keys", "create", "--scope", "serve", "--label", "storefront")
    with _session(database) as session:
        session.execute(sa.update(ApiKey).values(label="shop\nfake\x1b[31m\u202eyek"))
        session.commit()
    (line,) = run("keys", "list").output.splitlines()
    # U+202E, listed as it is, drew the rest of the terminal's line right to left.
    assert line.endswith("  shop\\nfake\\x1b[31m\\u202eyek"), line


@pytest.mark.parametrize(
    "command",
    [
        ["ope", "--policy", "uniform"],
        ["generate"],
        ["simulate", "--http", "http://127.0.0.1:1", "--key", "k", "--out", "{tmp}"],
    ],
)
@pytest.mark.parametrize("experiment", ["0", "-1", str(2**31), "99999999999999999999"])
def test_an_experiment_id_the_api_would_refuse_is_a_usage_error(
    database: str, tmp_path: Path, command: list[str], experiment: str
) -> None:
    # A larger id reached SQLite's driver and ended in an OverflowError traceback; simulate sent
    # every decision to a server that refused each one.
    assert run("migrate").exit_code == 0
    arguments = [a.replace("{tmp}", str(tmp_path / "sim")) for a in command]
    result = run(*arguments, "--experiment", experiment)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--experiment'" in result.output
    assert "1<=x<=2147483647" in result.output


def test_simulate_refuses_bad_arguments_before_simulating(tmp_path: Path) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("")
    bad_scenario = tmp_path / "bad.json"
    bad_scenario.write_text('{"segments": "none"}')
    deep_scenario = tmp_path / "deep.json"
    deep_scenario.write_text("[" * 100_000 + "]" * 100_000)
    cases = {
        "--out under a file": (["--out", str(a_file / "sim")], 2, "--out"),
        # A folder that exists but takes no new file, root's included: the results were lost in
        # a PermissionError traceback after the whole run.
        **(
            {"--out read-only": (["--out", "/proc/self"], 2, "cannot write a file in /proc/self")}
            if Path("/proc/self").is_dir()
            else {}
        ),
        "no policy": (["--policies", " , "], 2, "name at least one policy"),
        # Both were refused once "simulating" was drawn and --out made, with exit 1.
        "unknown policy": (
            ["--policies", "thompson,bogus", "--out", str(tmp_path / "unmade")],
            2,
            "unknown policy 'bogus'; choose from ",
        ),
        "policy twice": (["--policies", "uniform,uniform"], 2, "named more than once: uniform"),
        # Full-loop mode's traffic split overflowed numpy's integers: a traceback.
        "impressions past int64, full loop": (
            ["--full-loop", "--writer", "phrases", "--impressions", str(10**20)],
            2,
            "Invalid value for '--impressions': 100000000000000000000 is not in the range",
        ),
        "run too large": (
            ["--seeds", str(10**8), "--out", str(tmp_path / "unmade")],
            2,
            "Invalid value for '--impressions' / '--seeds': seeds x batches (impressions / batch)",
        ),
        "bad scenario": (["--scenario", str(bad_scenario)], 1, f"scenario {bad_scenario}"),
        # The JSON parser's RecursionError was a traceback.
        # The file's own faults are named once ("scenario F: F: not valid JSON" had named it twice).
        "deep scenario": (
            ["--scenario", str(deep_scenario)],
            1,
            f"Error: scenario {deep_scenario}: JSON nested too deeply to read\n",
        ),
        # These were tried, and ended in a connection error.
        **{
            f"--http {url}": (
                ["--http", url, "--key", "k", "--experiment", "1"],
                2,
                f"'{url}' is not a URL: give http:// or https://",
            )
            # An IPv6 address missing its closing bracket ended in urlsplit's traceback.
            for url in (
                "notaurl",
                "localhost:8000",
                "ftp://host/",
                "http://",
                "http://h:port/",
                "http://[::1:8000",
            )
        },
        "bad scenario, full loop": (
            ["--full-loop", "--writer", "phrases", "--scenario", str(bad_scenario)],
            1,
            f"scenario {bad_scenario}",
        ),
    }
    for name, (arguments, exit_code, says) in cases.items():
        result = run("simulate", "--impressions", "100", *arguments)
        assert result.exit_code == exit_code, (name, result.output)
        assert says in result.output and "Traceback" not in result.output, (name, result.output)
        assert "simulating" not in result.output, name
    assert not (tmp_path / "unmade").exists()


def test_simulate_refuses_the_options_its_mode_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = ["--http", "http://127.0.0.1:9", "--key", "k", "--experiment", "1"]
    full_loop = ["--full-loop", "--writer", "phrases"]
    in_process = "read only in in-process mode (without --http or --full-loop); this run is in"
    # Before, each was ignored without a word: full-loop mode ran seed 0 whatever --seeds said,
    # and HTTP mode sent --impressions decisions however many --seeds, --rounds or --writer.
    cases = [
        ([*full_loop, "--seeds", "3"], f"--seeds is {in_process} full-loop mode"),
        ([*full_loop, "--policies", "uniform"], f"--policies is {in_process} full-loop mode"),
        ([*full_loop, *http], "--full-loop and --http are two modes: give one of them"),
        ([*http, "--seeds", "3"], f"--seeds is {in_process} HTTP mode"),
        ([*http, "--policies", "uniform"], f"--policies is {in_process} HTTP mode"),
        (
            [*http, "--rounds", "2"],
            "--rounds is read only in full-loop mode (--full-loop); this run is in HTTP mode",
        ),
        ([*http, "--writer", "phrases"], "--writer is read only in full-loop mode"),
        (["--rounds", "2"], "--rounds is read only in full-loop mode"),
        (["--experiment", "1"], "--experiment is read only in HTTP mode (--http); this run is in"),
        ([*full_loop, "--clients", "2"], "--clients is read only in HTTP mode"),
    ]
    for arguments, says in cases:
        result = run("simulate", *arguments, "--out", str(tmp_path))
        assert result.exit_code == 2, (arguments, result.output)
        assert says in result.output, (arguments, result.output)
        assert "simulating" not in result.output and "wrote" not in result.output, arguments
    assert list(tmp_path.iterdir()) == []

    # A default is no one's request, nor is a key in the environment, which serves HTTP mode.
    monkeypatch.setenv("COPYBANDIT_SIM_KEY", "k")
    arguments = ["--rounds", "1", "--impressions", "300", "--out", str(tmp_path)]
    result = run("simulate", *full_loop, *arguments)
    assert result.exit_code == 0, result.output


def test_a_run_too_large_for_memory_says_where_its_batch_is_set(tmp_path: Path) -> None:
    arguments = ["--seeds", "1000", "--impressions", "10000000", "--out", str(tmp_path)]
    result = run("simulate", *arguments)

    # A usage error, given before the run starts.
    assert result.exit_code == 2, result.output
    # Before, "or a larger batch", and simulate has no --batch: only the scenario sets it.
    assert 'or a larger "batch" (the scenario\'s): from 2,101 to 2,000,000 for this world' in (
        result.output
    )


@pytest.mark.parametrize(
    ("host", "bind"),
    [
        ("::1", "[::1]:{port}"),
        ("[::1]", "[::1]:{port}"),
        ("::", "[::]:{port}"),
        ("0.0.0.0", "0.0.0.0:{port}"),
    ],
)
def test_serve_binds_ipv6_addresses_in_brackets(
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    free_port: str,
    host: str,
    bind: str,
) -> None:
    # gunicorn read "::1:8123" as a host with an empty port and refused to start.
    assert run("migrate").exit_code == 0
    # serve points this process's metrics at a folder; here one that goes away with the test.
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    result = run("serve", "--host", host, "--port", free_port)
    assert result.exit_code == 0, result.output
    bind = bind.format(port=free_port)
    assert started[0]["bind"] == bind and f"serving on http://{bind} " in result.output


@pytest.mark.parametrize(("workers", "said"), [("1", "with 1 worker\n"), ("3", "with 3 workers\n")])
def test_serve_says_how_many_workers_it_starts(
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    free_port: str,
    workers: str,
    said: str,
) -> None:
    assert run("migrate").exit_code == 0
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))
    monkeypatch.setattr("service.gunicorn.run", lambda _options: None)
    result = run("serve", "--workers", workers, "--port", free_port)
    assert result.exit_code == 0, result.output
    assert said in result.output


def test_serve_clears_only_metric_files_from_a_folder_it_was_given(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: str
) -> None:
    """PROMETHEUS_MULTIPROC_DIR=var removed the whole folder, the database in it included, when
    the server started and again when it stopped."""
    assert run("migrate").exit_code == 0
    folder = tmp_path / "shared"
    folder.mkdir()
    keep = [folder / "copybandit.db", folder / "notes.txt"]
    for path in keep:
        path.write_text("not ours")
    stale = [folder / "counter_123.db", folder / "gauge_livesum_123.db"]
    for path in stale:
        path.write_bytes(b"old counts")
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    assert run("serve", "--port", free_port).exit_code == 0
    assert sorted(folder.iterdir()) == sorted(keep)
    for path in stale:
        path.write_bytes(b"this run's counts")
    started[0]["on_exit"](None)
    assert sorted(folder.iterdir()) == sorted(keep)
    assert all(path.read_text() == "not ours" for path in keep)


def test_serve_sweeps_only_the_metrics_folders_of_dead_servers(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: str
) -> None:
    # A folder named "²" ended serve in int()'s traceback (str.isdigit passes it), and one of 20
    # digits in os.kill's; "٣" was read as pid 3.
    assert run("migrate").exit_code == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COPYBANDIT_MODEL_CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr("service.gunicorn.run", lambda _options: None)
    dead = subprocess.Popen(["true"])  # a pid no process has now
    dead.wait()
    metrics = tmp_path / "var" / "metrics"
    others = ["\u00b2", "\u0663", "9" * 20, "notes"]
    for name in [str(dead.pid), *others]:
        (metrics / name).mkdir(parents=True)

    result = run("serve", "--port", free_port)

    assert result.exit_code == 0, result.output
    left = {path.name for path in metrics.iterdir()}
    assert str(dead.pid) not in left
    assert set(others) <= left


def test_serve_where_it_cannot_make_its_metrics_folder_is_one_line(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_port: str
) -> None:
    # Run from a folder it could not write, serve ended in mkdir's traceback.
    assert run("migrate").exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").write_text("a file where var/metrics would go")
    # The model cache's default folder is under var/ too, and the settings refuse it first.
    monkeypatch.setenv("COPYBANDIT_MODEL_CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    result = CliRunner().invoke(main, ["serve", "--port", free_port])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"Error: cannot make the metrics folder {tmp_path / 'var' / 'metrics'}/"
    )
    assert f"run serve from a folder it may write, or set {MULTIPROC_ENV} to one" in result.output
    assert started == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_serve_given_a_metrics_folder_it_cannot_write_in_is_one_line(
    database: str, monkeypatch: pytest.MonkeyPatch, free_port: str
) -> None:
    # A folder that exists passed mkdir, serve started, and every decision it then stored was
    # answered 500 as its worker failed to count it. /proc: a folder no user, root included, may
    # make a file in, as another user's folder or a read-only mount would be.
    assert run("migrate").exit_code == 0
    monkeypatch.setenv(MULTIPROC_ENV, "/proc")
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    result = CliRunner().invoke(main, ["serve", "--port", free_port])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: cannot write in the metrics folder /proc (")
    assert result.output.endswith(f"set {MULTIPROC_ENV} to a folder serve may write\n")
    assert len(result.output.splitlines()) == 1
    assert started == []


def test_only_commands_that_may_load_the_model_check_its_cache_folder(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every command checked it, so `keys list` failed where var/models could not be made (a
    # read-only working directory; here var is a file).
    assert run("migrate").exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").write_text("a file where var/models would go")
    monkeypatch.delenv("COPYBANDIT_MODEL_CACHE_DIR", raising=False)
    for command in (
        ["keys", "list"],
        ["migrate", "--check"],
        ["lifecycle", "--once", "--no-generate"],
    ):
        result = run(*command)
        assert result.exit_code == 0, (command, result.output)
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    for command in (["serve", "--port", "8123"], ["lifecycle", "--once"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, (command, result.output)
        assert result.output == (
            "Error: configuration: COPYBANDIT_MODEL_CACHE_DIR must be a folder (or a path one can "
            "be made at), not a file, got 'var/models'\n"
        )
    assert started == []


def test_a_command_where_there_is_no_database_file_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run from another folder, `keys list` made an empty var/copybandit.db there, and its advice
    # (migrate) would have filled a second database instead of finding the first.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COPYBANDIT_DATABASE_URL", raising=False)
    for command in (["keys", "list"], ["check"], ["serve", "--port", "1"]):
        result = run(*command)
        assert result.exit_code == 1, (command, result.output)
        assert f"no SQLite file at {tmp_path / 'var' / 'copybandit.db'}" in result.output
        assert "run `copybandit migrate` first" in result.output
    assert list(tmp_path.iterdir()) == []
    assert run("migrate").exit_code == 0 and run("keys", "list").exit_code == 0


def test_simulate_full_loop_reports_cleanly_what_it_cannot_compare(tmp_path: Path) -> None:
    # A static A/B that converts nobody leaves no lift to show: the table's last line crashed.
    never = tmp_path / "never.json"
    never.write_text(
        json.dumps(
            {
                "segments": [
                    {
                        "key": "weekend-hikers",
                        "response": {"base_rate": 1e-9, "weights": {}},
                        "variants": ["Ridgeline shoes.", "Meet Ridgeline: comfort for every mile."],
                    }
                ]
            }
        )
    )
    common = ["simulate", "--full-loop", "--writer", "phrases", "--rounds", "1"]
    result = run(*common, "--impressions", "200", "--scenario", str(never), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "conversions (n/a)" in result.output and (tmp_path / "full_loop.png").exists()
    # A scenario of fixed rates has no response model to score new copy with: one line.
    plain = str(SCENARIOS / "plain.json")
    refused = run(*common, "--scenario", plain, "--out", str(tmp_path / "plain"))
    assert refused.exit_code == 1
    assert "Error: full-loop simulation: full-loop mode needs a scenario with response" in (
        refused.output
    )
    assert "Traceback" not in refused.output


def test_a_scenario_file_named_with_a_leading_dot_slash_is_named_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's own faults are named by the file as a Path writes it, without the "./" typed:
    "scenario ./mine.yaml: mine.yaml: not valid YAML" named it twice."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("segments: [\n")
    result = run("simulate", "--scenario", "./mine.yaml", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: scenario ./mine.yaml: not valid YAML: "), result.output


def test_a_scenario_of_fixed_rates_is_refused_before_the_model_loads_or_out_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[object] = []
    # The real model: a minute, and its weights written under var/models, on a first start.
    monkeypatch.setattr("service.cli.default_writer", lambda settings: loaded.append(settings))
    plain = str(SCENARIOS / "plain.json")
    for mode in (
        ["--full-loop"],
        ["--http", "http://127.0.0.1:9", "--key", "k", "--experiment", "1"],
    ):
        out = tmp_path / mode[0].lstrip("-")
        result = run("simulate", *mode, "--scenario", plain, "--out", str(out))
        name = "full-loop" if mode == ["--full-loop"] else "HTTP"
        assert result.exit_code == 1, result.output
        assert result.output.endswith(
            f"Error: {name} simulation: {name} mode needs a scenario with response models "
            "(text -> rate)\n"
        ), result.output
        assert "rounds" not in result.output and not out.exists(), result.output
    assert loaded == []


def test_a_mixed_scenario_says_what_the_response_model_modes_leave_out(tmp_path: Path) -> None:
    """HTTP and full-loop modes run only segments with a response model: a fixed-rate segment, a
    drift and a delay were left out without a word, and the run read as the whole scenario's."""
    mixed = tmp_path / "mixed.json"
    mixed.write_text(
        json.dumps(
            {
                "segments": [
                    {"key": "hikers", "response": {"base_rate": 0.05}, "variants": ["A", "B"]},
                    {"key": "racers", "rates": [0.1, 0.2]},
                ],
                "delay": {"mean_impressions": 300},
                "drift": {"at_fraction": 0.5, "segments": {"racers": {"rates": [0.2, 0.1]}}},
            }
        )
    )
    warning = (
        "mode runs only segments with a response model: it leaves out "
        f"{mixed}'s fixed-rate segment(s) 'racers'; drift; delay (mean 300 impressions)\n"
    )
    full_loop = ["--full-loop", "--writer", "phrases", "--rounds", "1", "--impressions", "300"]
    result = run("simulate", *full_loop, "--scenario", str(mixed), "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: full-loop {warning}", result.stderr
    http = ["--http", "http://127.0.0.1:9", "--key", "k", "--experiment", "1"]
    result = run("simulate", *http, "--scenario", str(mixed), "--out", str(tmp_path / "h"))
    assert result.stderr.startswith(f"warning: HTTP {warning}"), result.stderr
    # In-process mode runs all of it; a scenario of response models alone leaves out nothing.
    result = run(
        "simulate",
        "--seeds",
        "1",
        "--impressions",
        "200",
        "--scenario",
        str(mixed),
        "--out",
        str(tmp_path / "i"),
    )
    assert result.exit_code == 0 and result.stderr == "", result.output
    whole = {"segments": json.loads(mixed.read_text())["segments"][:1]}
    mixed.write_text(json.dumps(whole))
    result = run("simulate", *full_loop, "--scenario", str(mixed), "--out", str(tmp_path / "w"))
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_the_traffic_share_plot_names_the_policy_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    titles: list[str] = []
    set_axes = Axes.set

    def recording(self: Axes, **kwargs: Any) -> Any:
        if "title" in kwargs:
            titles.append(kwargs["title"])
        return set_axes(self, **kwargs)

    monkeypatch.setattr(Axes, "set", recording)
    arguments = ["--impressions", "600", "--seeds", "1", "--out", str(tmp_path)]
    result = run("simulate", "--policies", "uniform,oracle", *arguments)

    assert result.exit_code == 0, result.output
    shares = [title for title in titles if "traffic share" in title]
    # Without Thompson sampling in the run, the plot showed uniform's split under its name.
    assert len(shares) == 1 and shares[0].startswith("uniform A/B split: ")


def test_commands_log_json_lines_when_the_log_format_is_json(
    tmp_path: Path, sqlite_template: Path
) -> None:
    # generate, lifecycle and simulate logged bare messages whatever COPYBANDIT_LOG_FORMAT said.
    shutil.copy(sqlite_template, tmp_path / "cli.db")
    url = f"sqlite:///{tmp_path}/cli.db"
    # A job silent for two hours, which the pass gives up with a warning: something to log.
    with _session(url) as session:
        experiment = Experiment(name="e", product_name="p", product_description="d")
        session.add(experiment)
        session.flush()
        silent_since = utcnow() - timedelta(hours=2)
        session.add(
            GenerationJob(
                experiment_id=experiment.id,  # type: ignore[arg-type]
                n=1,
                status="running",
                started_at=silent_since,
                updated_at=silent_since,
            )
        )
        session.commit()
    env = {**os.environ, "COPYBANDIT_DATABASE_URL": url, "COPYBANDIT_LOG_FORMAT": "json"}
    result = subprocess.run(
        [Path(sys.executable).parent / "copybandit", "lifecycle", "--once", "--no-generate"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    logged = [json.loads(line) for line in result.stderr.splitlines()]
    loggers = [line["logger"] for line in logged]
    assert loggers == ["service.generation_jobs", "service.lifecycle"], result.stderr
    # What the command prints for the person who ran it stays as it was.
    assert result.stdout == "1 experiment, 0 actions, 0 generation jobs queued\n"


class _StoppedMidJob:
    """A model whose first sampling round is cut short by Ctrl-C."""

    model_id = "stopped-mid-job"

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Any]:
        raise KeyboardInterrupt


_STOPPED_BY_SIGTERM = """
import os, signal, sys
import service.cli

class StoppedMidJob:
    model_id = "stopped-mid-job"

    def sample(self, messages, n, seed):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the job")

service.cli.default_writer = lambda settings: StoppedMidJob()
service.cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", ["generate", "lifecycle"])
def test_a_command_stopped_mid_job_ends_the_jobs_it_held(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, how: str
) -> None:
    from service.generation_jobs import COMMAND_STOPPED, COMMAND_TERMINATED, interruption

    assert run("init", "--no-demo-history").exit_code == 0
    monkeypatch.setenv("COPYBANDIT_MODEL_CACHE_DIR", str(tmp_path / "models"))
    args = ["generate", "--experiment", "1"] if command == "generate" else ["lifecycle", "--once"]
    if how == "sigterm":
        # In a process of its own: it ends by the signal, which would end pytest too.
        stopped = subprocess.run(
            [sys.executable, "-c", _STOPPED_BY_SIGTERM, *args],
            env={**os.environ, "COPYBANDIT_DATABASE_URL": database},
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Ended by SIGTERM, as before the write-off; it exited 1 ("Aborted!") like a failed pass.
        assert stopped.returncode == -signal.SIGTERM, (stopped.returncode, stopped.stderr[-2000:])
    else:
        monkeypatch.setattr("service.cli.default_writer", lambda settings: _StoppedMidJob())
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Aborted!" in result.output, result.output
    with _session(database) as session:
        jobs = session.exec(select(GenerationJob)).all()
    # Before, the job said running (and a pass's other jobs queued) for an hour: the dashboard
    # showed it at work, and the lifecycle counted its copy as on order until then.
    assert len(jobs) == (1 if command == "generate" else 3)
    if command == "generate":
        # Cancelled, by the person who stopped it: it read failed, "interrupted", and said the
        # lifecycle would order its copy again, which it had never ordered.
        by = "Ctrl-C in" if how == "ctrl-c" else "SIGTERM to"
        said = f"cancelled by {by} copybandit generate; it had stored no copy yet"
        assert [(job.status, job.message, job.error) for job in jobs] == [("cancelled", said, None)]
    else:
        # SIGTERM, a cron `timeout` most likely, is worded apart: the copy backoff counts it.
        reason = COMMAND_TERMINATED if how == "sigterm" else COMMAND_STOPPED
        said = interruption(reason, by_lifecycle=True)
        assert {(job.status, job.error) for job in jobs} == {("failed", said)}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


_STOPPED_MID_PASS = """
import os, signal, sys
import service.cli, service.lifecycle

applied = service.lifecycle.apply_segment
calls = []

def stopped_at_the_second_segment(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the pass")
    return applied(*args, **kwargs)

service.lifecycle.apply_segment = stopped_at_the_second_segment
service.cli.main(sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_lifecycle_once_stopped_mid_pass_ends_the_jobs_its_pass_had_queued(
    database: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The stop was caught only around the jobs' run: stopped in the pass, after the first
    segment's order committed, its job stayed queued, which nothing would run, and counted as
    copy on order until a pass gave it up an hour later."""
    from service.generation_jobs import COMMAND_STOPPED, COMMAND_TERMINATED, interruption

    assert run("init", "--no-demo-history").exit_code == 0
    args = ["lifecycle", "--once"]
    if how == "sigterm":
        stopped = subprocess.run(
            [sys.executable, "-c", _STOPPED_MID_PASS, *args],
            env={**os.environ, "COPYBANDIT_DATABASE_URL": database},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stopped.returncode == -signal.SIGTERM, (stopped.returncode, stopped.stderr[-2000:])
    else:
        applied = lifecycle.apply_segment
        calls: list[int] = []

        def interrupted_at_the_second_segment(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return applied(*args, **kwargs)

        monkeypatch.setattr(lifecycle, "apply_segment", interrupted_at_the_second_segment)
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "Aborted!" in result.output, result.output
    with _session(database) as session:
        jobs = session.exec(select(GenerationJob)).all()
    reason = COMMAND_TERMINATED if how == "sigterm" else COMMAND_STOPPED
    said = interruption(reason, by_lifecycle=True)
    assert [(job.status, job.error, job.started_at) for job in jobs] == [("failed", said, None)]


def test_lifecycle_once_stopped_as_its_order_commits_ends_the_job_it_ordered(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass noted a job for the write-off only after its segment's changes committed and
    were counted: a Ctrl-C (or SIGTERM) raised in the commit, as PostgreSQL answers it, or just
    after, left the job stored and queued, which nothing would run, as copy on order for an
    hour."""
    from service.generation_jobs import COMMAND_STOPPED, interruption

    assert run("init", "--no-demo-history").exit_code == 0
    counted = lifecycle.count

    def stopped_once_the_first_order_commits(*args: Any) -> None:
        if sys._getframe(1).f_code.co_name == "apply_segment":
            raise KeyboardInterrupt
        counted(*args)

    monkeypatch.setattr(lifecycle, "count", stopped_once_the_first_order_commits)
    result = CliRunner().invoke(main, ["lifecycle", "--once"])

    assert result.exit_code == 1 and "Aborted!" in result.output, result.output
    with _session(database) as session:
        jobs = session.exec(select(GenerationJob)).all()
    said = interruption(COMMAND_STOPPED, by_lifecycle=True)
    assert [(job.status, job.error) for job in jobs] == [("failed", said)]


class _FailsOnSecondSegment:
    model_id = "fails-on-second-segment"

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Any]:
        from generation.writer import Sample

        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("CUDA out of memory")
        lines = [
            "Ridgeline trail-running shoes grip every rocky weekend trail.",
            "Weekend hikers stay sure-footed in Ridgeline trail-running shoes.",
        ]
        return [Sample(text=line, finished=True, logprob=-1.0) for line in lines]


def test_generate_that_fails_midway_lists_the_copy_it_stored(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("init", "--no-demo-history").exit_code == 0
    monkeypatch.setenv("COPYBANDIT_MODEL_CACHE_DIR", str(tmp_path / "models"))
    writer = _FailsOnSecondSegment()
    monkeypatch.setattr("service.cli.default_writer", lambda settings: writer)
    result = CliRunner().invoke(main, ["generate", "--experiment", "1", "-n", "2"])
    assert result.exit_code == 1
    # Before, it said only "failed", while these two waited for review.
    with _session(database) as session:
        stored = session.exec(select(Variant).where(Variant.origin == "generated")).all()
    assert len(stored) == 2
    assert "weekend-hikers: 2 new, 0 rejected of 2 sampled" in result.output
    assert all(f"[{v.id}] {v.text}" in result.output for v in stored)
    assert result.output.endswith(
        "Error: generation job 1 failed: RuntimeError: CUDA out of memory\n"
    )


def test_generate_for_a_held_brief_says_why_in_one_line_and_queues_nothing(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It loaded the model, failed as the last job had, and printed the failure."""
    assert run("init", "--no-demo-history").exit_code == 0
    monkeypatch.setenv("COPYBANDIT_MODEL_CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("COPYBANDIT_MODEL", raising=False)
    monkeypatch.setattr("service.cli.default_writer", _no_model_wanted)
    with _session(database) as session:
        held_as_too_long(session, {"id": 1}, "weekend-hikers", "")
        before = session.exec(select(GenerationJob.id)).all()

    result = CliRunner().invoke(
        main, ["generate", "--experiment", "1", "--segment", "weekend-hikers"]
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: segment 'weekend-hikers' gets no new copy: brief too long for the model: 6,453 "
        "tokens of 4,096; shorten it (the product description, brand voice or the segment's "
        "persona), or configure a model with a longer context\n"
    )
    with _session(database) as session:
        assert session.exec(select(GenerationJob.id)).all() == before


def _no_model_wanted(settings: Any) -> Any:
    raise AssertionError("the model was loaded")


@pytest.mark.parametrize(
    "module",
    [
        # bandits.ope took one normal quantile from scipy.stats, whose import was 0.7 s of every
        # command's start (about a third of `copybandit keys list`, say).
        "scipy.stats",
        # bandits.stats's inverse incomplete beta, for reports: 0.3 s with the parts of numpy it
        # pulls in, a quarter of `copybandit keys list`.
        "scipy.special",
    ],
)
def test_a_command_starts_without_importing(module: str) -> None:
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys, service.cli; print({module!r} in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "False"


_SERVE_MASTER = """
import sys
import service.gunicorn
service.gunicorn._Server.run = lambda _self: None
service.gunicorn.run({})
print('scipy.special' in sys.modules)
"""


def test_serve_imports_what_reports_need_before_the_workers_fork() -> None:
    """Imported by each worker after the fork, or at its first report, it would cost each."""
    imported = subprocess.run(
        [sys.executable, "-c", _SERVE_MASTER], capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "True"


def test_a_command_starts_without_making_a_password_hash() -> None:
    # The dashboard's decoy hash (for sign-ins with an unknown email) was made when
    # service.marketers was imported: an scrypt hash, 0.1 s of every command's start.
    code = """
import werkzeug.security
made = []
real = werkzeug.security.generate_password_hash
werkzeug.security.generate_password_hash = lambda *args: made.append(args) or real(*args)
import service.cli
print(len(made))
"""
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "0"


def _localhost_lists_ipv6_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo as on a host whose /etc/hosts names ::1 localhost too (Debian's, Ubuntu's):
    ::1 comes first, though gunicorn binds a name on an IPv4 socket, at 127.0.0.1."""
    real = socket.getaddrinfo

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        found = real(host, port, *args, **kwargs)
        if host != "localhost":
            return found
        ipv6 = (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0))
        return [ipv6, *found]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def test_serve_refuses_a_taken_port_where_gunicorn_binds_a_name_not_where_it_resolves_first(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check bound the first address the name resolved to, ::1, which was free, and gunicorn
    # (binding 127.0.0.1) printed "Connection in use" a dozen times, as before the check.
    assert run("migrate").exit_code == 0
    _localhost_lists_ipv6_first(monkeypatch)
    with _taken_port() as port:
        result = run("serve", "--host", "localhost", "--port", str(port))
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: --port: cannot listen on localhost:{port}: another process is listening "
        "there; stop it or choose another port\n"
    )


def test_serve_starts_on_a_name_whose_ipv6_address_another_process_holds(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dev server on localhost often holds [::1]:port alone; gunicorn binds 127.0.0.1:port, which
    # is free, yet the check, binding ::1, refused to start.
    assert run("migrate").exit_code == 0
    _localhost_lists_ipv6_first(monkeypatch)
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("service.gunicorn.run", started.append)
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as free:  # the IPv4 one, as gunicorn binds it
            free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            free.bind(("127.0.0.1", port))
        result = run("serve", "--host", "localhost", "--port", str(port))
    assert result.exit_code == 0, result.output
    assert started[0]["bind"] == f"localhost:{port}"


@pytest.mark.parametrize("from_option", [True, False], ids=["--host", "COPYBANDIT_HOST"])
def test_serve_refuses_an_address_of_another_machine_naming_the_host_not_the_port(
    database: str, monkeypatch: pytest.MonkeyPatch, from_option: bool, free_port: str
) -> None:
    # 192.0.2.1 (an address for documentation) resolves, so the host check passed, and the port
    # check said "--port: ... Cannot assign requested address" of a port that was free.
    assert run("migrate").exit_code == 0
    port = free_port
    if from_option:
        result = run("serve", "--host", "192.0.2.1", "--port", str(port))
    else:
        monkeypatch.setenv("COPYBANDIT_HOST", "192.0.2.1")
        result = run("serve", "--port", str(port))
    where = "--host" if from_option else "COPYBANDIT_HOST"
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {where}: cannot listen on 192.0.2.1:{port}: Cannot assign requested address; "
        "give an address of this machine, like 127.0.0.1 or 0.0.0.0\n"
    )
