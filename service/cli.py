"""The `copybandit` command: serve, migrate, init, keys, users, seed-demo, generate, lifecycle,
simulate, ope, check, purge, copy-database."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import alembic.util
import click
import sqlalchemy as sa
from click.core import ParameterSource
from sqlmodel import Session, col, select

from service import hourly_traffic, logs
from service import migrate as migrations
from service.auth import create_key, list_keys, revoke_key
from service.config import (
    ConfigError,
    Settings,
    display_url,
    is_postgresql_url,
    load_settings,
    normalize_database_url,
    unknown_variables,
)
from service.consistency import check_counters
from service.db import LOCK_WAIT_SECONDS, database_unavailable, make_engine, sqlite_file
from service.demo import seed_demo
from service.demo_history import seed_demo_history
from service.errors import APIError, Conflict, NotFound, counted, headline
from service.generation_jobs import (
    COMMAND_STOPPED,
    COMMAND_TERMINATED,
    GenerationOptions,
    create_job,
    default_writer,
    run_job,
    write_off,
)
from service.job_cancel import cancel_job
from service.lifecycle import RunReport, run_lifecycle
from service.long_briefs import BriefHeld
from service.marketers import (
    MIN_PASSWORD_CHARS,
    check_password,
    create_marketer,
    generate_password,
    list_marketers,
    remove_marketer,
    set_password,
)
from service.models import (
    MAX_DB_ID,
    ApiKey,
    Experiment,
    GenerationJob,
    JobStatus,
    LifecycleEvent,
    Scope,
    Segment,
    Variant,
)
from service.ope import evaluate as evaluate_policy
from service.ope import format_table as format_ope_table
from service.retention import PurgeReport, parse_age
from service.retention import purge as purge_rows
from service.schemas import no_invisible_formatting

# The account `init` makes on first run, so `make run` can be signed in to at once.
FIRST_MARKETER = "marketer@example.com"
SCENARIOS = Path(__file__).resolve().parent.parent / "bandits" / "scenarios"


# The experiment ids the API and the dashboard take (service.schemas.DbId): a larger one reached
# the database, where SQLite's driver raised OverflowError with a traceback.
class WholeNumber(click.IntRange):
    """click.IntRange written in the digits 0-9 alone: int() reads any script's, so
    `--experiment ٣` acted on experiment 3, and underscores (`--port 8_000`). Refused as a word
    is, in click's own message."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and (not value.strip().isascii() or "_" in value):
            self.fail(f"{value!r} is not a valid {self.name}.", param, ctx)
        return super().convert(value, param, ctx)


EXPERIMENT_ID = WholeNumber(1, MAX_DB_ID)
# gunicorn's default, now set on purpose: three times the longest a request waits for a lock.
WORKER_TIMEOUT_SECONDS = round(3 * LOCK_WAIT_SECONDS)


def _settings(*, loads_model: bool = False) -> Settings:
    """The validated settings; `loads_model` for a command that may load the language model."""
    try:
        settings = load_settings().validate()
        return settings.validate_model() if loads_model else settings
    except ConfigError as exc:
        if len(exc.problems) == 1:
            raise click.ClickException(f"configuration: {exc}") from None
        # One to a line under the heading, each naming its variable.
        listed = "".join(f"\n  {problem}" for problem in exc.problems)
        raise click.ClickException(f"configuration:{listed}") from None


def _log_to_terminal(settings: Settings) -> None:
    """Bare messages beside a command's own output, or with COPYBANDIT_LOG_FORMAT=json the
    service's JSON lines, so a pipeline that collects the log can parse every line of it."""
    logs.configure(settings.log_level, settings.log_format, text_format="%(message)s")


def _make_engine(settings: Settings) -> sa.Engine:
    if settings.is_sqlite and sqlite_file(settings.database_url) is None:
        # Each command would start on an empty database and lose it at exit: `init` said it
        # migrated, and the next command found no tables.
        raise click.ClickException(
            "database: COPYBANDIT_DATABASE_URL names an in-memory SQLite database, which no "
            "command keeps; name a file (sqlite:///path/to/copybandit.db)"
        )
    _refuse_what_is_no_sqlite_file(settings)
    try:
        return make_engine(settings)
    except OSError as exc:  # a SQLite file's folder that cannot be made
        raise click.ClickException(f"database: {exc.strerror}: {exc.filename}") from None


def _engine(settings: Settings) -> sa.Engine:
    """The database, checked to be at this code's migration: a command on an older schema failed
    part-way (the lifecycle logged a traceback per segment and exited 0; seed-demo left an
    experiment without variants)."""
    missing = _missing_sqlite_file(settings)
    if missing is not None:
        # Connecting would create it, empty: run from another folder, a command made a second
        # database there, and following its advice to migrate would have filled that one.
        raise click.ClickException(
            f"database: no SQLite file at {missing}; run `copybandit migrate` first (or set "
            "COPYBANDIT_DATABASE_URL to the database you meant)"
        )
    engine = _make_engine(settings)
    problem = migrations.mismatch(engine)
    if problem is not None:
        raise click.ClickException(f"database: {problem}")
    return engine


def _missing_sqlite_file(settings: Settings) -> Path | None:
    _refuse_what_is_no_sqlite_file(settings)
    path = sqlite_file(settings.database_url) if settings.is_sqlite else None
    return path if path is not None and not path.exists() else None


# The first 16 bytes of every SQLite database file (an empty file is one not yet written).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _refuse_what_is_no_sqlite_file(settings: Settings) -> None:
    """SQLite's words named neither the path nor what was wrong with it: a folder was "unable to
    open database file", a text file "file is not a database", and a path under a file "File
    exists" (from making its folder), or "no SQLite file; run `copybandit migrate` first"."""
    path = sqlite_file(settings.database_url) if settings.is_sqlite else None
    if path is None:
        return
    try:
        problem = _what_is_no_sqlite_file(path)
    except OSError:  # a folder on the way this user may not search: SQLite's error says so
        return
    if problem is not None:
        raise click.ClickException(f"database: COPYBANDIT_DATABASE_URL names {path}, {problem}")


def _what_is_no_sqlite_file(path: Path) -> str | None:
    under_a_file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if under_a_file is not None:
        return f"under {under_a_file}, which is a file, not a folder"
    if path.is_dir():
        return f"a folder: name a file in it (sqlite:///{path / 'copybandit.db'})"
    if not path.is_file():
        return None  # not there yet: migrate makes it
    with path.open("rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    return None if header in (b"", _SQLITE_HEADER) else "which is not a SQLite database"


def _session(settings: Settings) -> Session:
    return Session(_engine(settings), expire_on_commit=False)


# PostgreSQL's errors (by SQLSTATE) that say how the database was set up, not that a statement
# of ours is wrong, with what would fix each; psycopg raises them as ProgrammingError, like a bug.
_SET_UP_HINTS = {
    # undefined_table
    "42P01": "run `copybandit migrate` first",
    # insufficient_privilege: a role given no GRANT (on the tables, or CREATE on the schema)
    "42501": "the database role needs privileges on copybandit's tables (and CREATE on the "
    "schema to migrate): GRANT them, or connect as the role that owns them",
    # duplicate_table: a migration's CREATE TABLE meets a table copybandit did not make
    "42P07": "the database already has a table of that name; give copybandit a database of its own",
    # invalid_schema_name: no schema on the search_path exists (a URL's options=-csearch_path=...
    # naming one not made yet), so `migrate` had nowhere to create its tables
    "3F000": "the search_path names no schema that exists: create it (CREATE SCHEMA), or name "
    "one that does",
}


class _Commands(click.Group):
    """A database that cannot be reached, has no tables yet, or whose role may not use them,
    ends a command with one line saying so, not a driver traceback; with
    COPYBANDIT_LOG_FORMAT=json, that line and every other that ends a command is a JSON line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_in_words(ctx)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError) or not _logs_as_json():
                raise
            # click's "Error: ..." was the one plain line among the JSON ones: why serve did not
            # start was the line a log pipeline could not parse.
            _echo_log_line(logging.ERROR, exc.format_message())
            raise click.exceptions.Exit(exc.exit_code) from None

    def _invoke_in_words(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except sa.exc.DatabaseError as exc:  # also a file that is not a database
            words = _set_up_in_words(exc)
            if words is None:
                raise
            raise click.ClickException(f"database: {words}") from None
        except OSError as exc:
            # `keys list > listing.txt` on a full disk ended in a traceback. Only a disk that
            # refuses more bytes (full, over quota, file too large): not EIO, which a read raises
            # too (model weights on a failing disk), where "could not write" would mislead; any
            # other OSError is a fault worth its traceback.
            if exc.errno not in _DISK_REFUSED:
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            raise click.ClickException(f"could not write: {exc.strerror}{where}") from None


_DISK_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _set_up_in_words(exc: sa.exc.DatabaseError) -> str | None:
    """The driver's first line, with what would fix it where the error says how the database
    was set up; None for a ProgrammingError that does not, a bug worth its traceback."""
    # PostgreSQL goes on after the first line with the SQL and a caret under it.
    reason = str(exc.orig or exc).strip().splitlines()[0]
    # SQLite says "no such table"; PostgreSQL raises undefined_table (SQLSTATE 42P01).
    sqlstate = "42P01" if "no such table" in reason else getattr(exc.orig, "sqlstate", "")
    hint = _SET_UP_HINTS.get(sqlstate or "")
    if isinstance(exc, sa.exc.ProgrammingError) and hint is None:
        return None
    return f"{reason}{f'; {hint}' if hint else ''}"


@click.group(cls=_Commands)
def main() -> None:
    """copybandit: LLM-written marketing copy, chosen by Thompson sampling."""
    unknown = unknown_variables()
    if unknown:
        _warn(f"ignoring unknown settings: {', '.join(unknown)}")


def _warn(message: str) -> None:
    """A warning on stderr before the settings are read; with COPYBANDIT_LOG_FORMAT=json a JSON
    line, as every other line there is: a plain one broke a pipeline that parses each line."""
    if _logs_as_json():
        _echo_log_line(logging.WARNING, message)
    else:
        click.echo(f"warning: {message}", err=True)


def _logs_as_json() -> bool:
    """Read from the variable, not the settings: they may be what failed to load."""
    return os.environ.get("COPYBANDIT_LOG_FORMAT", "").strip() == "json"


def _echo_log_line(level: int, message: str) -> None:
    record = logging.LogRecord(__name__, level, __file__, 0, message, None, None)
    click.echo(logs.JsonLines().format(record), err=True)


@main.command()
@click.option(
    "--check",
    is_flag=True,
    help=(
        "Change nothing: exit 1 if migrations are pending, if a newer copybandit migrated the "
        "database, or, for SQLite, if there is no database file yet (it makes none)."
    ),
)
def migrate(check: bool) -> None:
    """Apply database migrations (Alembic) up to the latest."""
    settings = _settings()
    if check and (missing := _missing_sqlite_file(settings)) is not None:
        # Connecting would create it, empty, where every other command refuses to.
        click.echo(f"migrations pending: no SQLite file at {missing} yet")
        sys.exit(1)
    engine = _make_engine(settings)
    if check:
        problem = migrations.mismatch(engine)
        click.echo(_check_result(engine, problem))
        sys.exit(1 if problem else 0)
    _say_migrated(engine, _upgrade(engine))


def _say_migrated(engine: sa.Engine, changed: bool) -> None:
    # "migrated" for a database that was already up to date read as if this release had changed
    # it (a read-only file included, which nothing could have changed).
    done = "database migrated" if changed else "database already up to date"
    click.echo(f"{done}: {display_url(engine.url)}")


def _check_result(engine: sa.Engine, problem: str | None) -> str:
    if problem is None:
        return "database is up to date"
    # No migration of this version's is pending there: it is the code that is behind.
    if migrations.is_newer(engine):
        return f"database is newer than this copybandit: {problem}"
    return f"migrations pending: {problem}"


# How often a migration that deadlocked with a running server is run again.
MIGRATE_TRIES = 3


def _upgrade(engine: sa.Engine) -> bool:
    """Whether the database changed (see migrations.upgrade)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return migrations.upgrade(engine)
        except alembic.util.CommandError:
            # Alembic's own words ("Can't locate revision identified by ...") with a traceback.
            raise click.ClickException(f"database: {migrations.mismatch(engine)}") from None
        except sa.exc.OperationalError as exc:
            # PostgreSQL, a rolling upgrade: a server of the release before, serving a sticky
            # experiment, held `assignment` and waited for `impression`, which the migration had
            # altered, and the migration then wanted `assignment` (seen in 2 of 4 upgrades from
            # release 0009 with 2M impressions, whose index builds take seconds). The migration
            # is one transaction, so a deadlock leaves nothing changed and it can simply run again.
            if getattr(exc.orig, "sqlstate", None) != "40P01":
                raise
            if attempt == MIGRATE_TRIES:
                raise click.ClickException(
                    f"database: deadlock detected {MIGRATE_TRIES} times with requests a running "
                    "server was making; nothing was changed. Run copybandit migrate again, or "
                    "first stop the servers of the release before"
                ) from None
            click.echo(
                f"migration deadlocked with a running server's request and changed nothing; "
                f"migrating again ({attempt + 1}/{MIGRATE_TRIES})",
                err=True,
            )


@main.command("seed-demo")
def seed_demo_command() -> None:
    """Create the demo experiment if the database has no experiments yet."""
    with _session(_settings()) as session:
        experiment = seed_demo(session=session)
    click.echo(
        f"seeded demo experiment {experiment.id}: {experiment.name}"
        if experiment
        else "database already has experiments; nothing seeded"
    )


@main.command()
@click.option(
    "--demo-history/--no-demo-history",
    default=True,
    show_default=True,
    help="Give a newly seeded demo a week of simulated traffic, so its charts have data.",
)
def init(demo_history: bool) -> None:
    """First-run set-up: migrate, seed the demo, and print an admin key if no live one exists
    and a dashboard sign-in if there is no account. What is there already it names, secrets
    left out, with the commands that make another."""
    settings = _settings()
    engine = _make_engine(settings)
    _say_migrated(engine, _upgrade(engine))
    dashboard = f"http://{_address(_reachable(settings.host), settings.port)}/dashboard/"
    with _session(settings) as session:
        _lock_first_run(session)
        experiment = seed_demo(session=session)
        if experiment is not None:
            click.echo(f"seeded demo experiment {experiment.id}: {experiment.name}")
            if demo_history:
                served = seed_demo_history(
                    session=session,
                    settings=settings,
                    experiment_id=experiment.id,  # type: ignore[arg-type]
                )
                click.echo(f"simulated a week of demo traffic: {served:,} decisions")
        else:
            # A second init said only "database already up to date": nothing told a newcomer
            # that the first had made a demo, a key and an account, nor how to get others once
            # its output was gone.
            click.echo(_experiments_already_here(session))
        _lock_first_run(session)
        admin_keys = session.exec(_LIVE_ADMIN_KEYS).all()
        if not admin_keys:
            _, plaintext = create_key(session=session, scope=Scope.ADMIN, label="first run")
            click.echo(
                "\nAdmin API key (shown once; keep it):\n\n    "
                f"{plaintext}\n\nLost it? `copybandit keys create --scope admin`.\n"
            )
        else:
            click.echo(_admin_keys_already_made(admin_keys))
        _lock_first_run(session)
        marketers = list_marketers(session=session)
        if not marketers:
            password = generate_password()
            marketer = create_marketer(session=session, email=FIRST_MARKETER, password=password)
            click.echo(
                f"Dashboard sign-in (shown once): {dashboard}"
                f"\n\n    email:    {marketer.email}\n    password: {password}\n\n"
                "More accounts: `copybandit users create --email you@example.com`.\n"
            )
        else:
            click.echo(_accounts_already_made(dashboard, [m.email for m in marketers]))


# A serve key, or a revoked admin key, lets no one administer the service.
_LIVE_ADMIN_KEYS = (
    select(ApiKey.id)
    .where(ApiKey.scope == Scope.ADMIN.value, col(ApiKey.revoked_at).is_(None))
    .order_by(col(ApiKey.created_at), col(ApiKey.id))
)
# How many of the experiments, keys or accounts already there a second init names.
_NAMED = 3


def _experiments_already_here(session: Session) -> str:
    rows = session.exec(
        select(Experiment.id, Experiment.name).order_by(col(Experiment.id)).limit(_NAMED)
    ).all()
    count = session.exec(select(sa.func.count()).select_from(Experiment)).one()
    named = _listed([f"{id_}: {name}" for id_, name in rows], count)
    return f"no demo seeded: the database already has {counted(count, 'experiment')} ({named})"


def _admin_keys_already_made(key_ids: Sequence[str]) -> str:
    live = _listed(list(key_ids), len(key_ids))
    return (
        f"\nAdmin API key already made (live: {live}); it was shown once, when made."
        "\nLost it? `copybandit keys create --scope admin`.\n"
    )


def _accounts_already_made(dashboard: str, emails: Sequence[str]) -> str:
    return (
        f"Dashboard sign-in: {dashboard} (accounts: {_listed(list(emails), len(emails))};"
        " passwords are not shown again)."
        f"\nLost a password? `copybandit users set-password --email {emails[0]}`."
        "\nMore accounts: `copybandit users create --email you@example.com`.\n"
    )


def _listed(names: list[str], count: int) -> str:
    """The first few names, and how many more."""
    shown = ", ".join(names[:_NAMED])
    return shown if count <= _NAMED else f"{shown} and {count - _NAMED} more"


# Any number no other code takes a PostgreSQL advisory lock with.
_FIRST_RUN_LOCK = 7_243_901


def _lock_first_run(session: Session) -> None:
    """Until the session's next commit, another init waits here: two at once each found no demo,
    no admin key or no account, and each made one (two first-run admin keys, or a Conflict)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": _FIRST_RUN_LOCK})
    else:
        # An UPDATE of nothing still takes SQLite's write lock, which a SELECT would not.
        session.execute(sa.update(ApiKey).where(sa.false()).values(id=ApiKey.id))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that the jobs it holds are written off first."""


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def _written_off_if_stopped(engine: sa.Engine, job_ids: list[int]) -> Iterator[None]:
    """The jobs this command runs, failed as interrupted if it is stopped (Ctrl-C, or SIGTERM from
    `timeout` or a scheduler). Before, their rows said running or queued for an hour: the
    dashboard showed them at work, and the lifecycle counted their copy as on order until then.
    SIGTERM is worded apart: a time limit that a job too slow for it meets on every run was
    written off as a Ctrl-C is, never counted, and each run ordered the job again first, the
    segments after it starved."""

    def written_off(terminated: bool) -> None:
        reason = COMMAND_TERMINATED if terminated else COMMAND_STOPPED
        write_off(engine=engine, job_ids=job_ids, reason=reason)

    with _on_stop(written_off):
        yield


@contextlib.contextmanager
def _cancelled_if_stopped(engine: sa.Engine, job_id: int) -> Iterator[None]:
    """The job `generate` runs, cancelled if the command is stopped: the person who pressed
    Ctrl-C (or a `timeout` that sent SIGTERM) asked for it to end. It read failed, "interrupted",
    which sounded like a fault, and said the lifecycle would order its copy again, which it never
    ordered."""

    def cancel(terminated: bool) -> None:
        by = "SIGTERM to copybandit generate" if terminated else "Ctrl-C in copybandit generate"
        # Conflict: it had ended already.
        with Session(engine) as session, contextlib.suppress(Conflict):
            cancel_job(session=session, job_id=job_id, by=by)

    with _on_stop(cancel):
        yield


@contextlib.contextmanager
def _on_stop(ended: Callable[[bool], object]) -> Iterator[None]:
    """`ended(terminated)` once the command is stopped, by Ctrl-C or by SIGTERM (True)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt as stopped:
        ended(isinstance(stopped, _Terminated))
        if isinstance(stopped, _Terminated):
            # Ended by the signal, as it was before the write-off: a supervisor (systemd, cron's
            # wrapper) tells a stop from a failed pass (exit 1) by that.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@click.option(
    "--experiment", "experiment_id", type=EXPERIMENT_ID, required=True, help="Experiment id."
)
@click.option("--segment", default=None, help="Segment key (default: every segment).")
@click.option(
    "-n",
    "n",
    type=WholeNumber(1, 20),
    default=4,
    show_default=True,
    help="Accepted lines wanted per segment.",
)
def generate(experiment_id: int, segment: str | None, n: int) -> None:
    """Have the language model write new variants now, with a progress bar. Ctrl-C (or SIGTERM)
    cancels the job, keeping the segments it had stored."""
    settings = _settings(loads_model=True)
    _log_to_terminal(settings)
    engine = _engine(settings)
    with Session(engine, expire_on_commit=False) as session:
        try:
            job = create_job(
                session=session,
                experiment_id=experiment_id,
                segment_key=segment,
                n=n,
                model=settings.model,
            )
        except (NotFound, BriefHeld) as exc:
            raise click.ClickException(exc.message) from None
    with (
        _cancelled_if_stopped(engine, job.id),  # type: ignore[arg-type]
        click.progressbar(length=1000, label="loading the model", show_eta=False) as bar,
    ):

        def on_progress(fraction: float, message: str) -> None:
            bar.label = message
            bar.update(int(fraction * 1000) - bar.pos)

        job = run_job(
            engine=engine,
            job_id=job.id,  # type: ignore[arg-type]
            writer=lambda: default_writer(settings),
            options=GenerationOptions.from_settings(settings),
            on_progress=on_progress,
        )
    # Also for a failed job: the segments it finished keep their copy, served or waiting for
    # review, and before, the command said only that it failed.
    with Session(engine) as session:
        for key, outcome in (job.result or {}).get("segments", {}).items():
            click.echo(
                f"\n{key}: {len(outcome['variant_ids'])} new, {outcome['rejected']} "
                f"rejected of {outcome['sampled']} sampled"
            )
            for variant_id in outcome["variant_ids"]:
                variant = session.get(Variant, variant_id)
                click.echo(f"  [{variant_id}] {variant.text if variant else '?'}")
    if job.status == JobStatus.CANCELLED:
        # By the API or the dashboard, while this command ran it.
        raise click.ClickException(f"generation job {job.id} {job.message}")
    if job.status != JobStatus.SUCCEEDED:
        raise click.ClickException(f"generation job {job.id} failed: {job.error}")
    click.echo(f"\njob {job.id}: {job.message} (see GET /v1/jobs/{job.id} for the rejections)")


@main.command()
@click.option(
    "--once",
    is_flag=True,
    required=True,
    help="Run one pass now (the server's scheduler runs it every interval).",
)
@click.option(
    "--generate/--no-generate",
    default=True,
    show_default=True,
    help=(
        "Order the copy the pass finds missing and run those jobs here and now; "
        "--no-generate orders none and prints what it would have ordered."
    ),
)
def lifecycle(once: bool, generate: bool) -> None:
    """Retire losers, pause guardrail failures, declare winners, queue new copy; then run the
    jobs the pass queued and count the charts' hours that are due. Exit 1 if a segment's pass, a
    job it ran or that count failed."""
    settings = _settings(loads_model=generate)
    _log_to_terminal(settings)
    engine = _engine(settings)
    options = GenerationOptions.from_settings(settings)
    # Loaded by the first job that needs it, and kept for the rest, as a server's runner keeps
    # it: each job loaded the model again, a pass's three jobs three loads of the same weights.
    writer = functools.cache(lambda: default_writer(settings))
    failed_jobs = []
    # Each job as its segment's order is queued, before it commits: stopped mid-pass, the jobs
    # it had queued were left queued, which nothing here would run, and counted as copy on order
    # for an hour (and so was one whose commit the stop met, noted only after it).
    queued: list[int] = []
    with _written_off_if_stopped(engine, queued):
        # With --no-generate nothing here runs a job, and nothing else runs one a pass queues
        # here: each stayed queued until a pass wrote it off an hour later.
        report = run_lifecycle(
            engine=engine,
            model=settings.model,
            on_queued=queued.append,
            interval=timedelta(seconds=settings.lifecycle_interval_seconds),
            order_copy=generate,
        )
        # Less those whose segment then failed, never stored: on SQLite, a job queued since
        # (by the API, a server's pass) may have taken such an id.
        queued[:] = report.jobs
        places = _print_pass(engine, report)
        for job_id in report.jobs:
            job = run_job(
                engine=engine,
                job_id=job_id,
                writer=writer,
                options=options,
            )
            click.echo(_job_ended(job))
            # One cancelled (the API, the dashboard) ended as someone asked: exit 1 for it
            # alerted the cron job's owner to no fault of the pass.
            if job.status not in (JobStatus.SUCCEEDED, JobStatus.CANCELLED):
                failed_jobs.append(job_id)
    # Where the lifecycle runs from cron, with the servers' schedulers off, nothing else counts
    # the charts' hours; what it counted goes to the log, as the servers' passes do.
    not_counted = _count_chart_hours(engine)
    # A scheduler (cron, say) must learn that the pass did not do all it should have.
    problems = [not_counted] if not_counted else []
    if report.failed_segments:
        # A fold commits before the plan: such a segment's discount line is printed above.
        folded = {e.segment_id for e in report.actions if e.action == "discount"}
        problems.append(
            f"{counted(len(report.failed_segments), 'segment')} left unchanged after an error "
            "(logged above): "
            + ", ".join(
                places[s] + (" (but for its discount fold)" if s in folded else "")
                for s in report.failed_segments
            )
        )
    if failed_jobs:
        problems.append(
            f"{counted(len(failed_jobs), 'generation job')} did not succeed: "
            f"{', '.join(map(str, failed_jobs))}"
        )
    if problems:
        raise click.ClickException("; ".join(problems))


def _job_ended(job: GenerationJob) -> str:
    """A job `lifecycle --once` ran, as it ended: a failed one with the first line of its error
    that says what failed (service.errors.headline), which its message leaves out. "job 1:
    failed: failed" was all the output said of a model that would not load, the why only in the
    log."""
    said = [job.status, *([job.message] if job.message and job.message != job.status else [])]
    error = (job.error or "").strip()
    # An interrupted job's message is its error.
    if job.status == JobStatus.FAILED and error and error != job.message:
        said.append(headline(error).text)
    return f"job {job.id}: " + ": ".join(said)


def _print_pass(engine: sa.Engine, report: RunReport) -> dict[int, str]:
    """What `lifecycle --once`'s pass did, and would have ordered under --no-generate; the
    segments it names and those it failed in, by id, as _segment_places names them."""
    acted_on = [e.segment_id for e in [*report.actions, *report.not_ordered]]
    places = _segment_places(engine, [*acted_on, *report.failed_segments])
    for event in report.actions:
        click.echo(f"{_event_place(event, places)}: {event.action}: {event.reason}")
    for event in report.not_ordered:
        click.echo(f"{_event_place(event, places)}: not ordered (--no-generate): {event.reason}")
    not_ordered = f", {len(report.not_ordered)} not ordered" if report.not_ordered else ""
    click.echo(
        f"{counted(report.experiments, 'experiment')}, {counted(len(report.actions), 'action')}, "
        f"{counted(len(report.jobs), 'generation job')} queued{not_ordered}"
    )
    return places


def _count_chart_hours(engine: sa.Engine) -> str | None:
    """Count the hours the charts read that are due; None, or the problem to report.

    Last, and its failure caught: raised at once after the pass (a database that went away, a
    lock held too long), it ended the command in a traceback before the pass's actions were
    printed or the jobs it queued were run, though all they lose without it is the charts'
    speed, until the next run counts the same hours."""
    try:
        hourly_traffic.count_hours(engine=engine)
    except Exception as exc:
        if database_unavailable(exc):
            logging.getLogger(__name__).warning(
                "hourly traffic: database unavailable, hours not counted: %s",
                logs.on_one_line(str(exc.orig)),
            )
        else:
            logging.getLogger(__name__).exception("hourly traffic: counting failed")
        return "counting the charts' hours failed (logged above); the next run counts them"
    return None


def _segment_places(engine: sa.Engine, segment_ids: list[int | None]) -> dict[int, str]:
    """Each segment by its experiment and key, as the audit trail and the API name it, keyed by
    its row id, which they never show."""
    wanted = {i for i in segment_ids if i is not None}
    with Session(engine) as session:
        segments = session.exec(select(Segment).where(col(Segment.id).in_(wanted))).all()
        return {
            s.id: f"experiment {s.experiment_id} segment {s.key}"  # type: ignore[misc]
            for s in segments
        }


def _event_place(event: LifecycleEvent, places: dict[int, str]) -> str:
    """Where a lifecycle action happened; a regenerate or discount row names no variant."""
    if event.segment_id is None:
        place = f"experiment {event.experiment_id}"
    else:
        place = places[event.segment_id]
    return place if event.variant_id is None else f"{place} variant {event.variant_id}"


@main.command()
@click.option(
    "--experiment", "experiment_id", type=EXPERIMENT_ID, required=True, help="Experiment id."
)
@click.option(
    "--policy",
    required=True,
    help="Policy to evaluate: uniform, greedy, thompson or variant:<id>.",
)
@click.option("--segment", default=None, help="Segment key (default: every segment).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ope(experiment_id: int, policy: str, segment: str | None, as_json: bool) -> None:
    """Estimate from the log how another serving policy would have converted (IPS, SNIPS)."""
    with _session(_settings()) as session:
        try:
            result = evaluate_policy(
                session=session, experiment_id=experiment_id, policy=policy, segment=segment
            )
        except NotFound as exc:
            raise click.ClickException(exc.message) from None
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_ope_table(result))


# The options only one mode of `simulate` reads (--scenario, --impressions and --out: every mode),
# and how that mode is chosen. Given to another mode they were ignored without a word (full-loop
# mode ran seed 0 whatever --seeds said), and whoever gave them believed they applied.
_SIMULATE_MODES = {
    "in-process": ("without --http or --full-loop", ("policies", "seeds")),
    "HTTP": ("--http", ("http_url", "key", "experiment_id", "clients")),
    "full-loop": ("--full-loop", ("full_loop", "writer", "rounds")),
}


def _refuse_other_modes_options(ctx: click.Context, mode: str) -> None:
    """A usage error for an option of another mode given on the command line; a default, or the
    key from COPYBANDIT_SIM_KEY, is not the user asking for it."""
    if mode == "full-loop" and ctx.params["http_url"] is not None:
        raise click.UsageError("--full-loop and --http are two modes: give one of them")
    options = {p.name: p.opts[0] for p in ctx.command.params}
    for other, (how, names) in _SIMULATE_MODES.items():
        for name in names:
            if other != mode and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
                raise click.UsageError(
                    f"{options[name]} is read only in {other} mode ({how}); this run is in "
                    f"{mode} mode"
                )


@main.command()
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False),
    default=str(SCENARIOS / "default.json"),
    show_default="the bundled default.json",
    help="A scenario file, JSON or (named .yaml or .yml) YAML; see bandits/scenarios/.",
)
@click.option(
    "--policies",
    default="thompson,thompson_informed,uniform,epsilon_greedy,oracle",
    show_default=True,
    help="In-process mode: comma-separated.",
)
@click.option(
    "--impressions",
    # As many as a scenario may ask for (bandits.worlds): more overflowed numpy's multinomial in
    # full-loop mode, a traceback.
    type=WholeNumber(1, 10**12),
    default=None,
    help="In-process mode: per run (default: the scenario's); HTTP mode: in all (default "
    "2000); full-loop mode: per round (default 20000).",
)
@click.option(
    "--seeds",
    type=WholeNumber(1),
    default=None,
    help="In-process mode: runs per policy (default: the scenario's).",
)
@click.option("--out", type=click.Path(file_okay=False), default="var/sim", show_default=True)
@click.option(
    "--http",
    "http_url",
    default=None,
    help="HTTP mode: drive the server at this URL instead (needs a key and --experiment).",
    callback=lambda _c, _p, v: _http_url(v),
)
@click.option(
    "--key",
    default=None,
    envvar="COPYBANDIT_SIM_KEY",
    help="HTTP mode: an API key (admin lets it read the copy); or COPYBANDIT_SIM_KEY, so that the"
    " key is not in the process list.",
)
@click.option(
    "--experiment",
    "experiment_id",
    type=EXPERIMENT_ID,
    default=None,
    help="HTTP mode: the experiment.",
)
@click.option(
    "--clients",
    type=WholeNumber(1, 64),
    default=4,
    show_default=True,
    help="HTTP mode: concurrent storefront clients.",
)
@click.option(
    "--full-loop",
    is_flag=True,
    help="Generation and lifecycle in the loop, against a static A/B of round 1's copy.",
)
@click.option(
    "--writer",
    type=click.Choice(["model", "phrases"]),
    default="model",
    show_default=True,
    help="Full-loop mode: the real model, or a fast phrase bank.",
)
@click.option(
    "--rounds",
    type=WholeNumber(1, 100),
    default=6,
    show_default=True,
    help="Full-loop mode: rounds of traffic, each followed by a lifecycle pass.",
)
def simulate(
    scenario: str,
    policies: str,
    impressions: int | None,
    seeds: int | None,
    out: str,
    http_url: str | None,
    key: str | None,
    experiment_id: int | None,
    clients: int,
    full_loop: bool,
    writer: str,
    rounds: int,
) -> None:
    """Replay synthetic traffic in-process and compare policies on the same worlds and seeds;
    with --http, drive a running server as storefronts would; with --full-loop, let the model
    and the lifecycle change the copy between rounds.

    Each mode reads --scenario, --impressions and --out, and only its own options besides (the
    help of each says its mode); another mode's option is refused."""
    from bandits.simulate import check_policy_names, compare
    from bandits.worlds import load_scenario
    from service.sim_report import table, write_outputs

    mode = "full-loop" if full_loop else "in-process" if http_url is None else "HTTP"
    _refuse_other_modes_options(click.get_current_context(), mode)
    if http_url is not None and (key is None or experiment_id is None):
        raise click.UsageError("--http needs --key (or COPYBANDIT_SIM_KEY) and --experiment")
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names:
        raise click.BadParameter("name at least one policy", param_hint="--policies")
    # Here, before the scenario, --out and the progress bar: compare() refused them only after
    # "simulating" had been drawn and the folder made, and exited 1 where a bad option exits 2.
    try:
        check_policy_names(names)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--policies") from None
    try:
        world = load_scenario(scenario)
    except ValueError as exc:
        # A fault in the file as a whole (its syntax, a key given twice) already names the file,
        # as a Path writes it: "./mine.yaml" is "mine.yaml" there, and was named twice.
        problem = str(exc).removeprefix(f"{Path(scenario)}: ")
        raise click.ClickException(f"scenario {scenario}: {problem}") from None
    if mode != "in-process" and all(s.response is None for s in world.segments):
        # Here, not where the run finds out: full-loop mode had loaded the model first (a
        # minute, and its weights written under var/models, on a first start).
        raise click.ClickException(
            f"{mode} simulation: {mode} mode needs a scenario with response models (text -> rate)"
        )
    if mode != "in-process" and world.outside_response_models():
        # A warning, not a refusal: the shipped default's delay would refuse the documented run.
        # Before, these were left out without a word, and the run read as the whole scenario's.
        _warn(
            f"{mode} mode runs only segments with a response model: it leaves out {scenario}'s "
            + "; ".join(world.outside_response_models())
        )
    if mode == "in-process":
        # Like the policies, before --out and the bar: compare() refused a run too large for
        # memory with "simulating" drawn and the folder made. The scenario's own run fitted
        # (load_scenario checked it), so the options given are what made it too large.
        try:
            world.check_run_size(
                impressions=impressions or world.impressions,
                batch=world.batch,
                seeds=seeds or world.seeds,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--impressions' / '--seeds'") from None
    # Before the run, not after it: a folder that cannot be made, or that takes no new file (read
    # only, not ours), lost a whole simulation.
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    try:
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:  # its name is a random one, of no use to the reader
        raise click.BadParameter(
            f"cannot write a file in {out}: {exc.strerror}", param_hint="--out"
        ) from None
    if full_loop:
        _simulate_full_loop(world, writer, rounds, impressions or 20_000, Path(out))
        return
    if http_url is not None:
        _simulate_http(
            world,
            http_url,
            key,  # type: ignore[arg-type]
            experiment_id,  # type: ignore[arg-type]
            impressions or 2000,
            clients,
            Path(out),
        )
        return
    try:
        with click.progressbar(length=1000, label="simulating", show_eta=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(int(done / total * 1000) - bar.pos)

            summary = compare(world, names, impressions=impressions, seeds=seeds, progress=progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(table(world, summary))
    for path in write_outputs(world, summary, Path(out)):
        click.echo(f"wrote {path}")


def _simulate_full_loop(
    world: Any, writer_name: str, rounds: int, round_impressions: int, out: Path
) -> None:
    from service.sim_loop import PhraseWriter, full_loop
    from service.sim_report import plot_full_loop

    settings = _settings(loads_model=writer_name != "phrases")
    _log_to_terminal(settings)
    writer = PhraseWriter() if writer_name == "phrases" else default_writer(settings)
    try:
        with click.progressbar(length=rounds, label="rounds") as bar:
            result = full_loop(
                world,
                writer=writer,
                rounds=rounds,
                round_impressions=round_impressions,
                progress=lambda done, _total: bar.update(done - bar.pos),
            )
    except ValueError as exc:  # a scenario full-loop mode cannot run ("needs response models")
        raise click.ClickException(f"full-loop simulation: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "full_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"{'round':>5}{'loop rate':>12}{'static A/B':>12}{'retired':>9}{'written':>9}")
    for row in result["rounds"]:
        click.echo(
            f"{row['round']:>5}{row['loop_rate']:>12.4f}{row['static_ab_rate']:>12.4f}"
            f"{row['retired']:>9}{row['written']:>9}"
        )
    click.echo(
        f"loop {result['loop_conversions']} vs static A/B {result['static_ab_conversions']} "
        # No lift when the static A/B converted nobody: nothing to compare with.
        f"conversions ({'n/a' if result['lift'] is None else format(result['lift'], '+.1%')})"
    )
    for path in (out / "full_loop.json", plot_full_loop(result, out)):
        click.echo(f"wrote {path}")


def _simulate_http(
    world: Any, url: str, key: str, experiment_id: int, impressions: int, clients: int, out: Path
) -> None:
    from service.sim_http import drive

    try:
        run = drive(
            world,
            base_url=url,
            key=key,
            experiment_id=experiment_id,
            impressions=impressions,
            clients=clients,
        )
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"HTTP simulation failed: {exc}") from None
    summary = {"mode": "http", "url": url, "clients": clients, **run.summary()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "http.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"wrote {out / 'http.json'}")
    if not run.decisions:
        raise click.ClickException(
            f"HTTP simulation: 0 of {counted(run.requested, 'decision')} succeeded (errors above)"
        )


@main.command()
def check() -> None:
    """Recount every variant's counters from its rows; exit 1 on any mismatch."""
    with _session(_settings()) as session:
        report = check_counters(session=session)
    for m in report.mismatches:
        click.echo(
            f"variant {m.variant_id}: {m.counter} stored {m.stored}, recounted {m.recounted}",
            err=True,
        )
    if not report.ok:
        raise click.ClickException(
            f"{counted(len(report.mismatches), 'mismatched counter')} in "
            f"{counted(report.variants, 'variant')}"
        )
    click.echo(f"{counted(report.variants, 'variant')} checked: every counter matches its rows")


@main.command()
@click.option("--older-than", "older_than", required=True, help="Age, like 90d, 12h or 30m.")
@click.option("--batch-size", type=WholeNumber(1, 1_000_000), default=5_000, show_default=True)
def purge(older_than: str, batch_size: int) -> None:
    """Delete impressions and events older than --older-than, and sticky assignments unused
    since a day before that, in batches; counters stay exact."""
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    settings = _settings()

    def say(report: PurgeReport) -> None:
        click.echo(
            f"  deleted {counted(report.events, 'event')}, "
            f"{counted(report.impressions, 'impression')}, "
            f"{counted(report.assignments, 'sticky assignment')} so far",
            err=True,
        )

    report = purge_rows(
        engine=_engine(settings), older_than=age, batch_size=batch_size, progress=say
    )
    click.echo(
        f"purged {counted(report.events, 'event')} and "
        f"{counted(report.impressions, 'impression')} older than "
        f"{report.cutoff:%Y-%m-%d %H:%M} UTC, and "
        f"{counted(report.assignments, 'sticky assignment')} unused since a day before that"
    )


def _postgresql_url(value: str) -> str:
    """The --to URL, pinned to psycopg 3 as COPYBANDIT_DATABASE_URL is."""
    if any("\ud800" <= char <= "\udfff" for char in value):
        # Bytes the command line could not read as UTF-8 (a password typed in another encoding):
        # no driver encodes them, and the copy ended in a traceback. Not shown, as the settings'
        # URL is not: it may hold a password.
        raise click.BadParameter(
            "holds bytes that are not UTF-8; check the terminal's encoding", param_hint="--to"
        )
    url = normalize_database_url(value)
    if not is_postgresql_url(url):
        raise click.BadParameter(
            f"{display_url(value)!r} is not a PostgreSQL URL: give postgresql://user@host/db",
            param_hint="--to",
        )
    return url


@main.command("copy-database")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL",
    help="The PostgreSQL database to copy into: migrated (`copybandit migrate`) and empty.",
    callback=lambda _c, _p, v: _postgresql_url(v),
)
@click.option("--batch-size", type=WholeNumber(1, 1_000_000), default=5_000, show_default=True)
def copy_database_command(to: str, batch_size: int) -> None:
    """Copy every row of the configured database (COPYBANDIT_DATABASE_URL) into an empty
    PostgreSQL database, in one transaction there; then verify the counts and set its id
    sequences past the copied ids. Rows the source's servers write after the copy begins are not
    copied: stop them first."""
    from service.transfer import CopyRefused, TargetFailed, copy_database

    settings = _settings()
    source = _engine(settings)
    if to == settings.database_url:
        raise click.BadParameter(
            "names the configured database itself; give the one to copy into", param_hint="--to"
        )
    target = make_engine(dataclasses.replace(settings, database_url=to))
    where = display_url(to)
    try:
        with target.connect():
            pass
    except sa.exc.DBAPIError as exc:
        # Not "database: ...", which reads as the configured database, the source.
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise click.ClickException(f"--to: {where}: {reason}") from None
    click.echo(f"copying {display_url(settings.database_url)} to {where}", err=True)

    def say(table: str, done: int, total: int) -> None:
        click.echo(f"  {table}: {done:,} of {counted(total, 'row')}", err=True)

    try:
        report = copy_database(source=source, target=target, batch_size=batch_size, progress=say)
    except CopyRefused as exc:
        raise click.ClickException(f"copy-database: {exc}") from None
    except TargetFailed as failed:
        # Said as "database: ..." it read as the configured database's, the source's (a SQLite
        # file, which has no roles to grant anything to).
        words = _set_up_in_words(failed.error)
        if words is None:
            raise failed.error from None
        raise click.ClickException(f"--to: {where}: {words}") from None
    finally:
        target.dispose()
    width = max(map(len, report.rows))
    for table, rows in report.rows.items():
        # The numbers stay in one column, whichever word follows them.
        click.echo(f"  {table:<{width}}  {rows:>12,} {'row' if rows == 1 else 'rows'}")
    counters = (
        "match their rows"
        if report.counters.ok
        else "read as on the source, where they do not match (see `copybandit check`)"
    )
    click.echo(
        f"copied {counted(sum(report.rows.values()), 'row')} in {len(report.rows)} tables "
        f"to {where}; "
        f"row counts match the source's, and {_whose(report.counters.variants, 'variant')} "
        f"counters {counters}"
    )
    click.echo(
        "next ids: " + ", ".join(f"{t} {n}" for t, n in report.sequences.items()),
    )


def _whose(n: int, noun: str) -> str:
    """counted's possessive: "1 variant's", "14 variants'"."""
    return f"{n:,} {noun}'s" if n == 1 else f"{n:,} {noun}s'"


def _check_host(host: str, *, from_option: bool) -> None:
    """A host this machine cannot resolve is one line naming where it came from: gunicorn said
    "connection to ('not_a_host', 8000) failed: Name or service not known" five times over and
    named neither --host nor COPYBANDIT_HOST."""
    import socket

    try:
        socket.getaddrinfo(_unbracketed(host), None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        where = "--host" if from_option else "COPYBANDIT_HOST"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.ClickException(
            f"{where}: cannot listen on {host!r}: {reason}; {_HOST_HINT}"
        ) from None


# What to give instead of a host this machine cannot listen on.
_HOST_HINT = "give an address of this machine, like 127.0.0.1 or 0.0.0.0"


def _unbracketed(host: str) -> str:
    # Only a pair of brackets comes off: with one alone ("[::1") the check passed and gunicorn
    # was given "[::1:8000", which it refused as "'' is not a valid port number."
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _check_port(host: str, port: int, *, port_from_option: bool, host_from_option: bool) -> None:
    """A port another process listens on is one line naming where it came from: the server
    printed "serving on ..." and then gunicorn's "Connection in use" a dozen times over 7 s
    before it gave up. Bound and closed again at once, as gunicorn binds (SO_REUSEADDR, so a
    port left in TIME_WAIT by a server just stopped passes); a process that takes the port in
    between still meets gunicorn's own retries. An address that is not this machine's names
    the host's setting instead."""
    import errno
    import socket

    bare = _unbracketed(host)
    # The socket gunicorn binds: IPv6 for an IPv6 address, IPv4 for anything else, a name too.
    # Bound at the name's first address instead, where /etc/hosts names ::1 localhost as well
    # (Debian's), the check took [::1] for localhost: it passed with 127.0.0.1 taken, and
    # refused to start with only [::1] taken (a dev server's), both unlike gunicorn.
    family = socket.AF_INET6 if _is_ipv6_address(bare) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            # An address of no interface here, or a name with no IPv4 address: the host is
            # wrong, though it resolved, and the port may well be free.
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                where = "--host" if host_from_option else "COPYBANDIT_HOST"
                reason += f"; {_HOST_HINT}"
            else:
                where = "--port" if port_from_option else "COPYBANDIT_PORT"
            if exc.errno == errno.EADDRINUSE:
                reason = "another process is listening there; stop it or choose another port"
            raise click.ClickException(
                f"{where}: cannot listen on {_address(host, port)}: {reason}"
            ) from None


def _is_ipv6_address(host: str) -> bool:
    import socket

    try:
        socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):
        return False
    return True


def _reachable(host: str) -> str:
    """Where a browser on this machine finds a server listening on `host`. A wildcard is no
    address to open: init printed the sign-in at http://0.0.0.0:8000/, which some browsers
    refuse outright."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1", "": "127.0.0.1"}.get(host, host)


def _address(host: str, port: int) -> str:
    """host:port, with an IPv6 address in brackets (gunicorn read `::1:8000` as host `::1:8000`
    with no port)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _prepare_metrics_folder(options: dict[str, Any]) -> None:
    """Workers write their metrics under one folder (see service.metrics); a fresh one per
    server, so counts from an earlier run never leak into this one."""
    import shutil

    from prometheus_client import multiprocess

    from service.metrics import MULTIPROC_ENV

    if not os.environ.get(MULTIPROC_ENV):
        # Folders of servers that were killed (no clean exit to remove them) are swept here.
        for old in Path("var/metrics").glob("*"):
            pid = _pid_named(old.name)
            if pid is not None and not _alive(pid):
                shutil.rmtree(old, ignore_errors=True)
    given = os.environ.get(MULTIPROC_ENV)
    folder = Path(given or f"var/metrics/{os.getpid()}").resolve()
    if given:
        # The operator's folder may hold anything (it once held the database): only the files
        # prometheus_client writes are ours to remove.
        def clear() -> None:
            _remove_metric_files(folder)
    else:

        def clear() -> None:
            shutil.rmtree(folder, ignore_errors=True)

    fix = (
        f"set {MULTIPROC_ENV} to a folder serve may write"
        if given
        else (
            f"run serve from a folder it may write, or set {MULTIPROC_ENV} to one (and, for "
            "the default model, COPYBANDIT_MODEL_CACHE_DIR, whose default is var/models)"
        )
    )
    try:
        clear()
        folder.mkdir(parents=True, exist_ok=True)
        # A folder that exists but may not be written (another user's, a read-only mount) passed
        # mkdir, and every worker then failed to count anything.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        # Started from a folder it may not write (systemd's default WorkingDirectory=/ for a
        # non-root user, a read-only container root): one line, not mkdir's traceback.
        doing = "write in" if folder.is_dir() else "make"
        raise click.ClickException(
            f"cannot {doing} the metrics folder {folder} ({exc.strerror}): {fix}"
        ) from None
    os.environ[MULTIPROC_ENV] = str(folder)
    # A dead worker's live gauges must stop counting; its counters stay in the sums.
    options["child_exit"] = lambda _server, worker: multiprocess.mark_process_dead(worker.pid)
    options["on_exit"] = lambda _server: clear()


# prometheus_client's multiprocess files: counter_<pid>.db, gauge_<mode>_<pid>.db and so on.
_METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def _remove_metric_files(folder: Path) -> None:
    for pattern in _METRIC_FILES:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


def _pid_named(name: str) -> int | None:
    """The process id a metrics folder is named after (serve names each by its own), or None for
    a name no pid has. str.isdigit passed "²", which int() refuses (serve ended in a traceback),
    "٣", read as pid 3 (another's folder removed), and 20 digits, which os.kill refuses."""
    if name.isascii() and name.isdecimal() and len(name) <= 9:
        return int(name)
    return None


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# What ends or breaks a line of `keys list`: control characters (newline, tab, carriage return,
# escape, C1) and Unicode's line and paragraph separators.
_BREAKS_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _label(value: str) -> str:
    if any("\ud800" <= char <= "\udfff" for char in value):
        # Bytes the command line could not read as UTF-8: no database driver encodes them.
        raise click.BadParameter("holds bytes that are not UTF-8", param_hint="--label")
    if len(value) > 200:  # the column's width: PostgreSQL refused a longer one with a traceback
        raise click.BadParameter(f"at most 200 characters, got {len(value)}", param_hint="--label")
    # A newline made a second line of `keys list` that a script read as another key; an escape
    # sequence restyled the terminal. A bidi override disguised the line as names do on a page.
    found = _BREAKS_A_LINE.search(value)
    if found:
        raise click.BadParameter(
            f"must be one line of text without control characters; it holds "
            f"U+{ord(found.group()):04X}",
            param_hint="--label",
        )
    try:
        no_invisible_formatting(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--label") from None
    return value


def _on_one_line(text: str) -> str:
    """`text` with what would break its line, or reorder or hide the rest of it (a bidi override,
    a zero-width space), written as an escape (\\n, \\x1b, \\u202e): labels stored before they
    were refused still list as one line each, read as stored."""
    return "".join(
        repr(char)[1:-1]
        if _BREAKS_A_LINE.match(char) or unicodedata.category(char) == "Cf"
        else char
        for char in text
    )


def _http_url(value: str | None) -> str | None:
    """A URL the simulation can reach: "notaurl" was taken as a path and ended in a connection
    error from wherever it led."""
    if value is None:
        return None
    try:
        # urlsplit itself refuses an IPv6 host missing its closing bracket (http://[::1:8000).
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  a port that is not a number raises only when read
    except ValueError:
        parts = urllib.parse.SplitResult("", "", "", "", "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{value!r} is not a URL: give http:// or https://, a host and optionally a port",
            param_hint="--http",
        )
    return value


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), required=True)
@click.option(
    "--label",
    default="",
    help="A note to recognise the key by.",
    callback=lambda _c, _p, v: _label(v),
)
def keys_create(scope: str, label: str) -> None:
    """Create a key and print it (it is stored only as a hash)."""
    if sys.stdout is None:
        # Started with its output closed (`>&-`): the key was made and printed nowhere, exit 0.
        raise click.ClickException("standard output is closed: nowhere to print a key; none made")
    with _session(_settings()) as session:
        row, plaintext = create_key(session=session, scope=Scope(scope), label=label)
        try:
            click.echo(plaintext)
        except OSError as exc:
            # A full disk under `> key.txt`, or a pipe whose reader is gone: a traceback, or (the
            # pipe) exit 1 without a word, and a live key that no one had ever seen.
            revoke_key(session=session, key_id=row.id)
            raise click.ClickException(
                f"could not print the key ({exc.strerror}); revoked it ({row.id}), so no key is "
                "live that no one has seen"
            ) from None
    click.echo(f"created {row.scope} key {row.id}", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys: id, scope, live or revoked (with the day), created (the day), label; days in
    UTC."""
    with _session(_settings()) as session:
        rows = list_keys(session=session)
        if not rows:
            # Nothing at all read as a command that had failed quietly. On stderr: a script
            # counting the lines of stdout still counts none.
            click.echo("no API keys: `copybandit keys create --scope serve` makes one", err=True)
        for row in rows:
            # Days in UTC, and said so, as users list and purge say theirs: read on a host whose
            # clock is local time, a key made in the evening was listed as made the next day.
            revoked = f"revoked {row.revoked_at:%Y-%m-%d} UTC" if row.revoked_at else "live"
            # The day it was created goes after the columns there were before it, so that scripts
            # reading them by position (`awk '$3 == "live"'`) still read the same.
            click.echo(
                f"{row.id}  {row.scope:<5}  {revoked:<22}  created {row.created_at:%Y-%m-%d} UTC  "
                f"{_on_one_line(row.label)}"
            )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after `cb_`, before the second `_`), or by the whole key."""
    if key_id.startswith("cb_"):
        # The whole key pasted: its id is what names it, and its secret must not be echoed back
        # into the terminal's scrollback ("no API key with id 'cb_..._<secret>'").
        key_id = key_id.removeprefix("cb_").partition("_")[0]
    with _session(_settings()) as session:
        try:
            revoke_key(session=session, key_id=key_id)
        except NotFound as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"revoked {key_id}")


@main.group()
def users() -> None:
    """Dashboard accounts for marketers."""


@users.command("create")
@click.option("--email", required=True)
@click.option(
    "--password",
    default=None,
    help=f"At least {MIN_PASSWORD_CHARS} characters. Default: prompt for one. Use "
    "--generate-password for a random one.",
)
@click.option("--generate-password", "generate", is_flag=True, help="Make up a password; print it.")
def users_create(email: str, password: str | None, generate: bool) -> None:
    """Create a marketer who can sign in to the dashboard."""
    if generate and password is not None:
        # Which was meant is not ours to guess: the given password was silently dropped.
        raise click.UsageError("give --password or --generate-password, not both")
    if generate:
        password = generate_password()
    elif password is None:
        password = _prompt_for_password()
    with _session(_settings()) as session:
        try:
            marketer = create_marketer(session=session, email=email, password=password)
        except APIError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"created dashboard user {marketer.email}")
    if generate:
        click.echo(f"password: {password}")


def _prompt_for_password() -> str:
    """A password typed twice, its rule checked before the second time: click's confirmation
    came first, and a password too short was refused only once typed twice, ending the command."""
    while True:
        password: str = click.prompt("Password", hide_input=True)
        try:
            check_password(password)
        except APIError as exc:
            click.echo(f"Error: {exc.message.removeprefix('password: ')}", err=True)
            continue
        if click.prompt("Repeat for confirmation", hide_input=True) == password:
            return password
        click.echo("Error: The two entered values do not match.", err=True)


@users.command("set-password")
@click.option("--email", required=True)
@click.option(
    "--password",
    default=None,
    help=f"At least {MIN_PASSWORD_CHARS} characters. Default: prompt for one, twice.",
)
def users_set_password(email: str, password: str | None) -> None:
    """Change a marketer's password; browsers signed in with the old one are signed out."""
    if password is None:
        password = _prompt_for_password()
    with _session(_settings()) as session:
        try:
            set_password(session=session, email=email, password=password)
        except APIError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"password changed for {email}")


@users.command("remove")
@click.option("--email", required=True)
def users_remove(email: str) -> None:
    """Remove a marketer's account; browsers signed in with it are signed out. Status reasons
    that name them ("paused by ...") keep their address."""
    with _session(_settings()) as session:
        try:
            marketer = remove_marketer(session=session, email=email)
        except APIError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"removed dashboard user {_on_one_line(marketer.email)}")


@users.command("list")
def users_list() -> None:
    """List marketers: email, created (the day), last sign-in; in UTC."""
    with _session(_settings()) as session:
        marketers = list_marketers(session=session)
        if not marketers:
            click.echo("no marketers: `copybandit users create --email EMAIL` adds one", err=True)
        for marketer in marketers:
            # Named, as the dashboard's times and purge's cutoff are: read on a host whose clock
            # is local time, an unlabelled time passed for one and was hours off.
            last = (
                f"{marketer.last_sign_in_at:%Y-%m-%d %H:%M} UTC"
                if marketer.last_sign_in_at
                else "never"
            )
            # An address made before invisible formatting was refused in one (U+202E drew it as
            # another address) lists with that character escaped, as a key's label does.
            click.echo(
                f"{_on_one_line(marketer.email)}  created {marketer.created_at:%Y-%m-%d} UTC  "
                f"last sign-in {last}"
            )


@main.command()
@click.option("--host", default=None, help="Default: COPYBANDIT_HOST or 127.0.0.1.")
@click.option(
    "--port", type=WholeNumber(1, 65535), default=None, help="Default: COPYBANDIT_PORT or 8000."
)
@click.option(
    "--workers", type=WholeNumber(1, 64), default=None, help="Default: COPYBANDIT_WORKERS or 2."
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    help=(
        "Log a line per request on stdout (at INFO), its address as sent with an API key's "
        "secret hidden."
    ),
)
def serve(host: str | None, port: int | None, workers: int | None, access_log: bool) -> None:
    """Serve the API with gunicorn."""
    settings = _settings(loads_model=True)
    # Checked, then closed: the workers fork from this process and open their own connections.
    _engine(settings).dispose()
    _check_host(host or settings.host, from_option=bool(host))
    _check_port(
        host or settings.host,
        port or settings.port,
        port_from_option=bool(port),
        host_from_option=bool(host),
    )
    options: dict[str, Any] = {
        "bind": _address(host or settings.host, port or settings.port),
        "workers": workers or settings.workers,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        # gunicorn's control socket is one path per user: two servers on a host would share it,
        # and closing it adds seconds to every shutdown. copybandit does not use it.
        "control_socket_disable": True,
        "worker_class": "service.gunicorn.SyncWorker",
        # gunicorn kills a worker busy with one request longer than this and answers 500 HTML: a
        # request waiting on a lock gives up first, after LOCK_WAIT_SECONDS (and on SQLite up to
        # TURN_WAIT_SECONDS for its writer turn before that), with a 503 the client can retry.
        "timeout": WORKER_TIMEOUT_SECONDS,
        "loglevel": settings.log_level,
        "logger_class": (
            "service.gunicorn.JsonLinesLogger"
            if settings.log_format == "json"
            else "service.gunicorn.Logger"
        ),
    }
    from service.gunicorn import run, worker_exit

    options["worker_exit"] = worker_exit
    _prepare_metrics_folder(options)
    # The master logs too (gunicorn's lines, and whatever it imports), in the workers' format.
    logs.configure(settings.log_level, settings.log_format)
    worker_count = options["workers"]
    starting = f"serving on http://{options['bind']} with {counted(worker_count, 'worker')}"
    if settings.log_format == "json":
        logging.getLogger(__name__).info(starting)
    else:
        click.echo(starting, err=True)
    run(options)
