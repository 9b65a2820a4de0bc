"""Dashboard accounts: service.marketers, the `copybandit users` commands, and what `init` prints
for the dashboard. Runs on SQLite and, when configured, PostgreSQL (see conftest)."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlmodel import Session, col, select

import service.cli
import service.demo_history
import service.gunicorn
import service.marketers
from service import create_app
from service.cli import main
from service.config import load_settings
from service.db import make_engine
from service.demo_history import seed_demo_history
from service.errors import Conflict, InvalidInput, NotFound
from service.marketers import (
    MIN_PASSWORD_CHARS,
    create_marketer,
    generate_password,
    list_marketers,
    normalize_email,
    open_session,
    remove_marketer,
    session_owner,
    set_password,
    sign_in,
)
from service.models import (
    Event,
    Experiment,
    Impression,
    Marketer,
    MarketerSession,
    Variant,
    utcnow,
)

PASSWORD = "correct horse battery"
SIGN_IN = re.compile(r"email:\s+(\S+)\n\s+password: (\S+)")


# --- service.marketers -------------------------------------------------------------------------


def test_create_normalizes_the_email_and_stores_only_a_hash(session: Session) -> None:
    marketer = create_marketer(session=session, email="  Mia@Example.COM ", password=PASSWORD)
    assert marketer.id is not None
    assert marketer.email == "mia@example.com"
    assert PASSWORD not in marketer.password_hash
    assert marketer.password_hash.startswith(("scrypt:", "pbkdf2:"))
    assert marketer.last_sign_in_at is None
    assert marketer.created_at.tzinfo is not None
    assert [m.email for m in list_marketers(session=session)] == ["mia@example.com"]


@pytest.mark.parametrize(
    "email",
    [
        "",
        "mia",
        "mia@",
        "@example.com",
        "mia@@example.com",
        "m ia@example.com",
        "m\x00ia@example.com",
        "mia@exa\x01mple.com",
        "mia\x7f@example.com",
        "a\x9b[31mb@example.com",  # C1: an 8-bit terminal escape
    ],
)
def test_create_refuses_an_address_that_is_not_one(session: Session, email: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        create_marketer(session=session, email=email, password=PASSWORD)
    assert caught.value.field == "email"
    assert list_marketers(session=session) == []


def test_create_refuses_a_short_password(session: Session) -> None:
    with pytest.raises(InvalidInput) as caught:
        create_marketer(session=session, email="mia@example.com", password="x" * 9)
    assert caught.value.field == "password"
    assert f"at least {MIN_PASSWORD_CHARS} characters" in caught.value.message
    assert list_marketers(session=session) == []
    create_marketer(session=session, email="mia@example.com", password="x" * 10)


def test_emails_are_unique_whatever_their_case(session: Session) -> None:
    create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    with pytest.raises(Conflict) as caught:
        create_marketer(session=session, email="MIA@example.com", password="other password")
    assert caught.value.field == "email" and caught.value.status == 409
    # The session is usable after the refused insert.
    create_marketer(session=session, email="ola@example.com", password=PASSWORD)
    assert [m.email for m in list_marketers(session=session)] == [
        "mia@example.com",
        "ola@example.com",
    ]


def test_sign_in_checks_the_password_and_records_the_time(session: Session) -> None:
    created = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    assert sign_in(session=session, email="mia@example.com", password="wrong password") is None
    assert sign_in(session=session, email="mia@example.com", password=PASSWORD.upper()) is None
    assert sign_in(session=session, email="nobody@example.com", password=PASSWORD) is None
    assert sign_in(session=session, email="", password="") is None
    session.expire_all()
    assert session.get(Marketer, created.id).last_sign_in_at is None  # type: ignore[union-attr]

    before = datetime.now(UTC)
    found = sign_in(session=session, email=" MIA@example.com", password=PASSWORD)
    assert found is not None and found.id == created.id
    session.expire_all()
    stamped = session.get(Marketer, created.id).last_sign_in_at  # type: ignore[union-attr]
    assert stamped is not None and before - timedelta(seconds=1) <= stamped <= datetime.now(UTC)


def _count_hash_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password hash sign_in checks, from now on."""
    calls: list[str] = []
    real = service.marketers.check_password_hash

    def counting(hashed: str, password: str) -> bool:
        calls.append(hashed)
        return real(hashed, password)

    monkeypatch.setattr(service.marketers, "check_password_hash", counting)
    return calls


def test_an_unknown_email_costs_a_hash_check_too(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    calls = _count_hash_checks(monkeypatch)
    assert sign_in(session=session, email="nobody@example.com", password=PASSWORD) is None
    assert sign_in(session=session, email="mia@example.com", password="wrong password") is None
    assert len(calls) == 2
    # The decoy is a real hash of the same kind, so it costs the same to check.
    assert calls[0].split("$")[0] == calls[1].split("$")[0]


def test_the_decoy_is_made_by_the_app_and_the_server_not_at_the_first_unknown_sign_in(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making it is a hash of its own: the first unknown email it was made for would take twice
    as long as a known one."""
    service.marketers.decoy_hash.cache_clear()
    app = create_app(app_config)
    app.extensions["copybandit.engine"].dispose()
    assert service.marketers.decoy_hash.cache_info().currsize == 1
    # `serve` makes it in the master, before the workers fork and build their apps.
    service.marketers.decoy_hash.cache_clear()
    monkeypatch.setattr(service.gunicorn._Server, "run", lambda _self: None)
    service.gunicorn.run({})
    assert service.marketers.decoy_hash.cache_info().currsize == 1


def test_an_address_with_a_control_character_is_a_wrong_sign_in_with_its_hash_check(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No account can have one, and PostgreSQL refuses a NUL in a query with an error."""
    create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    calls = _count_hash_checks(monkeypatch)
    for email in ("mia@example.com\x00", "m\x00ia@example.com", "mia\x01@example.com"):
        assert sign_in(session=session, email=email, password=PASSWORD) is None
    assert len(calls) == 3
    assert sign_in(session=session, email="mia@example.com", password=PASSWORD) is not None


def test_set_password_replaces_the_old_one(session: Session) -> None:
    created = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    old_hash = created.password_hash
    changed = set_password(session=session, email="Mia@Example.com", password="a new password!")
    assert changed.id == created.id and changed.password_hash != old_hash
    assert sign_in(session=session, email="mia@example.com", password=PASSWORD) is None
    assert sign_in(session=session, email="mia@example.com", password="a new password!")


def test_set_password_refuses_unknown_people_and_short_passwords(session: Session) -> None:
    created = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    with pytest.raises(NotFound) as missing:
        set_password(session=session, email="nobody@example.com", password="a new password!")
    assert missing.value.field == "email"
    with pytest.raises(InvalidInput) as short:
        set_password(session=session, email="mia@example.com", password="short")
    assert short.value.field == "password"
    with pytest.raises(InvalidInput):
        set_password(session=session, email="not an email", password="a new password!")
    session.expire_all()
    assert session.get(Marketer, created.id).password_hash == created.password_hash  # type: ignore[union-attr]


def test_remove_deletes_the_account_and_ends_its_sessions(session: Session) -> None:
    mia = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    ola = create_marketer(session=session, email="ola@example.com", password=PASSWORD)
    mias = [open_session(session=session, marketer=mia, lifetime=timedelta(hours=1)) for _ in "ab"]
    olas = open_session(session=session, marketer=ola, lifetime=timedelta(hours=1))
    removed = remove_marketer(session=session, email=" MIA@example.com")
    assert removed.email == "mia@example.com"
    assert [m.email for m in list_marketers(session=session)] == ["ola@example.com"]
    assert all(session_owner(session=session, token=token) is None for token in mias)
    owner = session_owner(session=session, token=olas)
    assert owner is not None and owner.email == "ola@example.com"
    assert sign_in(session=session, email="mia@example.com", password=PASSWORD) is None


def test_a_sign_in_deletes_every_expired_session_and_keeps_live_ones(session: Session) -> None:
    """Nothing else deletes an expired session, and no `purge` needs to: the table keeps to the
    sign-ins of one session lifetime."""
    mia = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    ola = create_marketer(session=session, email="ola@example.com", password=PASSWORD)
    for marketer in (mia, ola, mia):
        open_session(session=session, marketer=marketer, lifetime=timedelta(hours=1))
    session.execute(sa.update(MarketerSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()

    mias = open_session(session=session, marketer=mia, lifetime=timedelta(hours=1))
    olas = open_session(session=session, marketer=ola, lifetime=timedelta(hours=1))

    assert len(session.exec(select(MarketerSession)).all()) == 2
    owners = [session_owner(session=session, token=t) for t in (mias, olas)]  # type: ignore[arg-type]
    assert [owner.email for owner in owners if owner is not None] == [mia.email, ola.email]


def test_remove_refuses_an_unknown_address(session: Session) -> None:
    create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    with pytest.raises(NotFound) as missing:
        remove_marketer(session=session, email="nobody@example.com")
    assert missing.value.field == "email"
    with pytest.raises(InvalidInput):
        remove_marketer(session=session, email="not an email")
    assert [m.email for m in list_marketers(session=session)] == ["mia@example.com"]


def test_an_account_removed_while_its_password_is_checked_is_not_signed_in(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `users remove` committing during the sign-in's password hash (tens of milliseconds): the
    # sign-in's write of last_sign_in_at then matched no row, and the dashboard answered 500.
    create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    checked = service.marketers.check_password_hash

    def removed_meanwhile(hashed: str, password: str) -> bool:
        with Session(session.get_bind()) as other:
            remove_marketer(session=other, email="mia@example.com")
        return checked(hashed, password)

    monkeypatch.setattr(service.marketers, "check_password_hash", removed_meanwhile)
    assert sign_in(session=session, email="mia@example.com", password=PASSWORD) is None
    assert list_marketers(session=session) == []


def test_an_account_removed_after_its_password_was_checked_gets_no_session(
    session: Session,
) -> None:
    # `users remove` committing between the password check and the session row: the row's
    # foreign key named no account, and the dashboard answered 500.
    marketer = create_marketer(session=session, email="mia@example.com", password=PASSWORD)
    with Session(session.get_bind()) as other:
        remove_marketer(session=other, email="mia@example.com")

    assert open_session(session=session, marketer=marketer, lifetime=timedelta(hours=1)) is None
    assert session.exec(select(MarketerSession)).all() == []


def test_generated_passwords_are_long_enough_and_differ() -> None:
    made = {generate_password() for _ in range(20)}
    assert len(made) == 20
    assert all(len(p) >= MIN_PASSWORD_CHARS and p.isascii() and " " not in p for p in made)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [(" A@B.example ", "a@b.example"), ("x.y+tag@Example.co.uk", "x.y+tag@example.co.uk")],
)
def test_normalize_email(raw: str, normal: str) -> None:
    assert normalize_email(raw) == normal


# --- copybandit users ... ----------------------------------------------------------------------


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The migrated test database (SQLite copy, or the PostgreSQL schema) for the CLI to use."""
    monkeypatch.setenv("COPYBANDIT_DATABASE_URL", database_url)
    return database_url


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def _session(url: str) -> Session:
    return Session(make_engine(load_settings({"database_url": url})))


def _checks(url: str, email: str, password: str) -> bool:
    with _session(url) as session:
        return sign_in(session=session, email=email, password=password) is not None


def test_users_create_with_a_password(cli_database: str) -> None:
    result = run("users", "create", "--email", "Mia@Example.com", "--password", PASSWORD)
    assert result.exit_code == 0, result.output
    assert result.output == "created dashboard user mia@example.com\n"
    assert PASSWORD not in result.output
    assert _checks(cli_database, "mia@example.com", PASSWORD)


def test_users_create_prompts_twice_for_a_password(cli_database: str) -> None:
    result = run("users", "create", "--email", "mia@example.com", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "created dashboard user mia@example.com" in result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert _checks(cli_database, "mia@example.com", PASSWORD)


def test_users_create_with_a_generated_password_prints_it(cli_database: str) -> None:
    result = run("users", "create", "--email", "mia@example.com", "--generate-password")
    assert result.exit_code == 0, result.output
    match = re.search(r"^password: (\S+)$", result.output, re.M)
    assert match and len(match.group(1)) >= MIN_PASSWORD_CHARS
    assert _checks(cli_database, "mia@example.com", match.group(1))


def test_users_create_refuses_a_password_and_a_generated_one(cli_database: str) -> None:
    # The given password was dropped for a generated one without a word.
    both = ["--password", PASSWORD, "--generate-password"]
    result = run("users", "create", "--email", "mia@example.com", *both)
    assert result.exit_code == 2
    assert "give --password or --generate-password, not both" in result.output
    with _session(cli_database) as session:
        assert list_marketers(session=session) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", "mia", "--password", PASSWORD], "email: must look like name@example.com"),
        # Invisible, they made an address that `users list` showed as another one.
        (
            ["--email", "mia\u202e@example.com", "--password", PASSWORD],
            "email: must not contain the invisible formatting character U+202E",
        ),
        (
            ["--email", "m\u200dia@example.com", "--password", PASSWORD],
            "email: must not contain the invisible formatting character U+200D",
        ),
        (["--email", "mia@example.com", "--password", "short"], "at least 10 characters"),
        # Bytes the command line could not read as UTF-8 (a Latin-1 terminal, a C locale) arrive
        # as lone surrogates, which no driver or hash encodes: it ended in a traceback.
        (["--email", "m\udce9a@example.com", "--password", PASSWORD], "email: must look like"),
        (
            ["--email", "mia@example.com", "--password", "p\udce4sswort-lang"],
            "password: holds bytes that are not UTF-8",
        ),
    ],
)
def test_users_create_refuses_bad_input(cli_database: str, args: list[str], message: str) -> None:
    result = run("users", "create", *args)
    assert result.exit_code == 1 and message in result.output
    with _session(cli_database) as session:
        assert list_marketers(session=session) == []


def test_users_create_refuses_a_second_account_for_an_address(cli_database: str) -> None:
    assert (
        run("users", "create", "--email", "mia@example.com", "--password", PASSWORD).exit_code == 0
    )
    again = run("users", "create", "--email", "MIA@example.com", "--password", "other password")
    assert again.exit_code == 1
    assert "a marketer with email 'mia@example.com' already exists" in again.output
    assert _checks(cli_database, "mia@example.com", PASSWORD)


def test_users_list(cli_database: str) -> None:
    empty = run("users", "list")
    assert (empty.stdout, empty.stderr) == (
        "",
        "no marketers: `copybandit users create --email EMAIL` adds one\n",
    )
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    run("users", "create", "--email", "ola@example.com", "--password", PASSWORD)
    _checks(cli_database, "ola@example.com", PASSWORD)
    lines = run("users", "list").output.splitlines()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert len(lines) == 2
    # The day created says UTC too: it read as the host's local day.
    assert lines[0] == f"mia@example.com  created {today} UTC  last sign-in never"
    assert re.fullmatch(
        rf"ola@example\.com  created {today} UTC  last sign-in {today} \d\d:\d\d UTC", lines[1]
    )
    # Only addresses and dates: no hashes.
    assert "scrypt" not in "\n".join(lines) and "$" not in "\n".join(lines)


def test_an_address_stored_before_with_a_format_character_lists_as_it_is(
    cli_database: str,
) -> None:
    """Refused for new accounts since an override made an address that `users list` showed as
    another one; an account made before still signs in, and must not list disguised."""
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    with _session(cli_database) as session:
        session.execute(sa.update(Marketer).values(email="moc.elpmaxe@\u202eaim"))
        session.commit()
    (line,) = run("users", "list").output.splitlines()
    assert line.startswith("moc.elpmaxe@\\u202eaim  created "), line
    removed = run("users", "remove", "--email", "moc.elpmaxe@\u202eaim")
    assert removed.output == "removed dashboard user moc.elpmaxe@\\u202eaim\n", removed.output


def test_users_set_password(cli_database: str) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    result = run("users", "set-password", "--email", "mia@example.com", "--password", "new one 123")
    assert result.exit_code == 0 and "password changed for mia@example.com" in result.output
    assert not _checks(cli_database, "mia@example.com", PASSWORD)
    assert _checks(cli_database, "mia@example.com", "new one 123")


@pytest.mark.parametrize("command", ["create", "set-password"])
def test_a_password_too_short_is_refused_before_it_is_asked_again(
    cli_database: str, command: str
) -> None:
    # The confirmation came first: "short", typed twice, then refused, the command ended.
    if command == "set-password":
        run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    typed = f"short\n{'new one 123'}\nnew one 123\n"
    result = run("users", command, "--email", "mia@example.com", input=typed)
    assert result.exit_code == 0, result.output
    assert f"Error: must be at least {MIN_PASSWORD_CHARS} characters" in result.output
    assert result.output.count("Repeat for confirmation") == 1
    assert _checks(cli_database, "mia@example.com", "new one 123")


def test_users_set_password_prompts_with_confirmation(cli_database: str) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    mismatch = run(
        "users", "set-password", "--email", "mia@example.com", input="new one 123\nnew one 456\n"
    )
    assert mismatch.exit_code != 0
    assert _checks(cli_database, "mia@example.com", PASSWORD)
    typed = run(
        "users",
        "set-password",
        "--email",
        "mia@example.com",
        input="new one 123\nnew one 123\n",
    )
    assert typed.exit_code == 0, typed.output
    assert _checks(cli_database, "mia@example.com", "new one 123")


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("nobody@example.com", "new one 123", "no marketer with email 'nobody@example.com'"),
        ("mia@example.com", "short", "at least 10 characters"),
        ("mia@example.com", "p\udce4sswort-lang", "password: holds bytes that are not UTF-8"),
        ("m\udce9a@example.com", "new one 123", "email: must look like"),
    ],
)
def test_users_set_password_refuses(
    cli_database: str, email: str, password: str, message: str
) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    result = run("users", "set-password", "--email", email, "--password", password)
    assert result.exit_code == 1 and message in result.output
    assert _checks(cli_database, "mia@example.com", PASSWORD)


def test_users_remove(cli_database: str) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    run("users", "create", "--email", "ola@example.com", "--password", PASSWORD)
    with _session(cli_database) as session:
        mia = session.exec(select(Marketer).where(Marketer.email == "mia@example.com")).one()
        token = open_session(session=session, marketer=mia, lifetime=timedelta(hours=1))
    result = run("users", "remove", "--email", "Mia@Example.com")
    assert result.exit_code == 0, result.output
    assert result.output == "removed dashboard user mia@example.com\n"
    assert [line.split()[0] for line in run("users", "list").output.splitlines()] == [
        "ola@example.com"
    ]
    assert not _checks(cli_database, "mia@example.com", PASSWORD)
    with _session(cli_database) as session:
        assert session_owner(session=session, token=token) is None


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ("nobody@example.com", "no marketer with email 'nobody@example.com'"),
        ("not an email", "email: must look like name@example.com"),
    ],
)
def test_users_remove_refuses_an_unknown_address(
    cli_database: str, email: str, message: str
) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    result = run("users", "remove", "--email", email)
    assert result.exit_code == 1 and message in result.output
    assert _checks(cli_database, "mia@example.com", PASSWORD)


def test_users_help_lists_remove() -> None:
    listed = run("users", "--help").output
    assert re.search(r"^\s+remove\s+Remove a marketer's account", listed, re.M), listed
    assert "--email" in run("users", "remove", "--help").output


# --- copybandit init ---------------------------------------------------------------------------


@pytest.fixture
def small_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """`init`'s demo week, at a tenth of the traffic: the same code, a tenth of the time."""
    monkeypatch.setattr(
        service.cli, "seed_demo_history", functools.partial(seed_demo_history, decisions_per_day=60)
    )


def _demo_counts(url: str) -> tuple[int, int, int, int]:
    with _session(url) as session:
        impressions = session.exec(select(sa.func.count()).select_from(Impression)).one()
        events = session.exec(select(sa.func.count()).select_from(Event)).one()
        shown = session.exec(select(sa.func.sum(Variant.impressions))).one() or 0
        converted = session.exec(select(sa.func.sum(Variant.conversions))).one() or 0
    return impressions, events, int(shown), int(converted)


def _conversions_before_their_impressions(session: Session) -> int:
    return session.exec(
        select(sa.func.count())
        .select_from(Event)
        .join(Impression, col(Impression.id) == col(Event.impression_id))
        .where(col(Event.created_at) < col(Impression.created_at))
    ).one()


def test_init_prints_a_dashboard_sign_in_once_and_seeds_a_week_of_history(
    cli_database: str, small_history: None
) -> None:
    first = run("init")
    assert first.exit_code == 0, first.output
    assert "simulated a week of demo traffic: 420 decisions" in first.output
    assert (
        first.output.count("Dashboard sign-in (shown once): http://127.0.0.1:8000/dashboard/") == 1
    )
    (signed,) = SIGN_IN.findall(first.output)
    assert signed[0] == "marketer@example.com"
    assert _checks(cli_database, *signed)

    impressions, events, shown, converted = _demo_counts(cli_database)
    assert impressions == shown == 420
    assert events == converted and 0 < converted < impressions
    with _session(cli_database) as session:
        oldest = session.exec(select(sa.func.min(Impression.created_at))).one()
        newest = session.exec(select(sa.func.max(Impression.created_at))).one()
        assert oldest is not None and newest is not None
        oldest, newest = (
            t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in (oldest, newest)
        )
        now = datetime.now(UTC)
        # Spread over the past week, not all stamped now.
        assert timedelta(days=6) < now - oldest <= timedelta(days=7, minutes=5)
        assert now - newest < timedelta(hours=1)
        assert _conversions_before_their_impressions(session) == 0
        # All three segments got traffic.
        experiment = session.exec(select(Experiment)).one()
        per_segment = session.exec(
            select(Impression.segment_id, sa.func.count())
            .where(Impression.experiment_id == experiment.id)
            .group_by(Impression.segment_id)
        ).all()
        assert len(per_segment) == 3 and all(n == 140 for _, n in per_segment)

    again = run("init")
    assert again.exit_code == 0, again.output
    # A later init names the account (e365c7a), never a password again.
    assert SIGN_IN.findall(again.output) == [] and "passwords are not shown again" in again.output
    assert "simulated" not in again.output
    assert _demo_counts(cli_database)[0] == 420
    with _session(cli_database) as session:
        assert [m.email for m in list_marketers(session=session)] == ["marketer@example.com"]


def test_init_stopped_while_it_simulates_leaves_what_it_served_spread_over_the_week(
    cli_database: str, small_history: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during `make run`'s first run: the decisions served so far were left stamped at the
    second they were made, the dashboard showed the demo's whole history there, and no later
    `init` seeds it again."""
    served = 0
    real_decide = service.demo_history.decide

    def decide_until_stopped(**kwargs: Any) -> Any:
        nonlocal served
        if served == 200:
            raise KeyboardInterrupt
        served += 1
        return real_decide(**kwargs)

    monkeypatch.setattr(service.demo_history, "decide", decide_until_stopped)
    stopped = CliRunner().invoke(main, ["init"])
    assert stopped.exit_code == 1 and "Aborted!" in stopped.output, stopped.output

    impressions, events, shown, converted = _demo_counts(cli_database)
    assert impressions == shown == 200 and events == converted
    with _session(cli_database) as session:
        oldest, newest = session.exec(
            select(sa.func.min(Impression.created_at), sa.func.max(Impression.created_at))
        ).one()
        assert oldest is not None and newest is not None
        oldest, newest = (
            t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in (oldest, newest)
        )
        now = datetime.now(UTC)
        assert timedelta(days=6) < now - oldest <= timedelta(days=7, minutes=5)
        assert timedelta(minutes=30) < now - newest < timedelta(hours=1)
        assert _conversions_before_their_impressions(session) == 0
    assert run("check").exit_code == 0


def test_init_without_demo_history(cli_database: str) -> None:
    result = run("init", "--no-demo-history")
    assert result.exit_code == 0, result.output
    assert "seeded demo experiment" in result.output and "simulated" not in result.output
    assert len(SIGN_IN.findall(result.output)) == 1
    assert _demo_counts(cli_database) == (0, 0, 0, 0)


def test_init_makes_no_account_when_there_is_one(cli_database: str, small_history: None) -> None:
    run("users", "create", "--email", "mia@example.com", "--password", PASSWORD)
    result = run("init", "--no-demo-history")
    assert result.exit_code == 0
    assert SIGN_IN.findall(result.output) == []
    assert "(accounts: mia@example.com; passwords are not shown again)" in result.output
    with _session(cli_database) as session:
        assert [m.email for m in list_marketers(session=session)] == ["mia@example.com"]


def test_init_gives_no_history_to_a_database_that_has_experiments(
    cli_database: str, api: Any, small_history: None
) -> None:
    api.create_experiment(name="Mine")
    result = run("init")
    assert result.exit_code == 0
    assert "seeded demo experiment" not in result.output and "simulated" not in result.output
    assert "no demo seeded: the database already has 1 experiment" in result.output
    assert _demo_counts(cli_database) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("host", "shown"),
    # A wildcard is no address to open: with 0.0.0.0 it printed http://0.0.0.0:9123/.
    [("192.0.2.7", "192.0.2.7"), ("0.0.0.0", "127.0.0.1"), ("::", "[::1]")],
)
def test_init_uses_the_configured_host_and_port(
    cli_database: str, monkeypatch: pytest.MonkeyPatch, host: str, shown: str
) -> None:
    monkeypatch.setenv("COPYBANDIT_HOST", host)
    monkeypatch.setenv("COPYBANDIT_PORT", "9123")
    result = run("init", "--no-demo-history")
    assert f"Dashboard sign-in (shown once): http://{shown}:9123/dashboard/\n" in result.output


def test_the_password_rule_is_told_where_passwords_are_given() -> None:
    """The commands refused a password under 10 characters that neither --help nor the README
    mentioned."""
    rule = f"at least {MIN_PASSWORD_CHARS} characters"
    for command in ("create", "set-password"):
        help_text = " ".join(run("users", command, "--help").output.split())
        assert rule in help_text.lower(), help_text
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Command line") : readme.index("## Configuration")]
    assert f"a password has {rule}" in section
