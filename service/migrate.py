"""Apply or check Alembic migrations from code (the CLI and the tests share this)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.config import display_url

PACKAGE = Path(__file__).resolve().parent


def migrations_folder() -> Path:
    """Where the Alembic scripts are: inside the package once installed from a wheel (pyproject's
    package-dir ships the repository's migrations/ as service/migrations), else at the root of a
    source checkout, next to this package."""
    for folder in (PACKAGE / "migrations", PACKAGE.parent / "migrations"):
        if (folder / "env.py").is_file():
            return folder
    raise RuntimeError(
        f"no Alembic migrations at {PACKAGE / 'migrations'} or {PACKAGE.parent / 'migrations'}: "
        "this copybandit was installed without them"
    )


def alembic_config(connection: sa.Connection | None = None) -> Config:
    # Built here rather than read from alembic.ini: a wheel carries no alembic.ini, and the file's
    # other settings (logging, sys.path) are for running `alembic` by hand in a checkout.
    config = Config()
    # Options are interpolated as ConfigParser's are, so a % in the path is doubled.
    config.set_main_option("script_location", str(migrations_folder()).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> bool:
    """Whether it changed the database: one already at `revision` is left as it was."""
    target = _script_revisions()[0] if revision == "head" else revision
    with migration_connection(engine, unless_at=target) as connection:
        before = _revision_on(connection)
        command.upgrade(alembic_config(connection), revision)
        return _revision_on(connection) != before


def downgrade(engine: sa.Engine, revision: str) -> None:
    with migration_connection(engine) as connection:
        command.downgrade(alembic_config(connection), revision)


@contextlib.contextmanager
def migration_connection(
    engine: sa.Engine, *, unless_at: str | None = None
) -> Iterator[sa.Connection]:
    """A connection in a transaction to migrate with, committed at the end; `unless_at`: the
    revision the caller migrates to, where a database already at it skips the reference checks.

    On SQLite foreign keys are off meanwhile, as Alembic advises for batch mode: it changes a
    table by copying it and dropping the old one, and dropping a table other rows refer to fails
    while they are on (every downgrade that removed a column from `variant` did, once a single
    impression existed). The references are checked once the migration is done instead.

    SQLite's transaction is begun here, not by the driver: Python's sqlite3 opens one only before
    an INSERT, UPDATE or DELETE, so the schema changes before the first of those committed one by
    one, and a migration killed half-way left columns its rerun then failed to add, for good.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _foreign_keys(connection, "OFF")
        driver = connection.connection.driver_connection
        implicit = getattr(driver, "isolation_level", None)
        try:
            with connection.begin():
                # Two migrations at once (two `copybandit init` on a fresh database) both created
                # the tables, and the second failed: each waits for the other's to commit first,
                # then finds nothing left to do.
                if sqlite:
                    driver.isolation_level = None  # type: ignore[union-attr]
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                # Each check reads every row that refers to another (all of impression and event)
                # under the write lock, which every decision waits for: a `migrate` with nothing
                # to do (every deploy's, every `init`'s) held them back for both: 0.2 s a check
                # per 2M impressions here, growing with the table.
                checked = sqlite and (unless_at is None or _revision_on(connection) != unless_at)
                dangling_before = _dangling(connection) if checked else []
                yield connection
                dangling = _dangling(connection) if checked else []
                if len(dangling) > len(dangling_before):
                    raise RuntimeError(
                        f"the migration left {len(dangling) - len(dangling_before)} more "
                        "references to rows that do not exist (table, rowid, parent table): "
                        f"{dangling[:5]}"
                    )
        finally:
            if sqlite:
                # The connection goes back to the pool; every other user expects the driver's
                # usual transactions and foreign keys on.
                driver.isolation_level = implicit  # type: ignore[union-attr]
                _foreign_keys(connection, "ON")


# Any number no other code takes a PostgreSQL advisory lock with (service.cli has its own).
_MIGRATION_LOCK = 7_243_902


def _dangling(connection: sa.Connection) -> list[Any]:
    return list(connection.exec_driver_sql("PRAGMA foreign_key_check").all())


def _foreign_keys(connection: sa.Connection, state: str) -> None:
    # SQLite ignores this pragma inside a transaction, so it runs and commits on its own.
    connection.exec_driver_sql(f"PRAGMA foreign_keys={state}")
    connection.commit()


def mismatch(engine: sa.Engine) -> str | None:
    """Why this code cannot work on the database as it is, or None when it is at the head."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    current = _current_revision(engine)
    if current == head:
        return None
    where = display_url(engine.url)
    if current is None:
        return f"{where} has no tables yet; run `copybandit migrate` first"
    if _unknown(script, current):
        # Migrating cannot help: only the newer code knows how it got there.
        return (
            f"{where} is at migration {current}, which this copybandit does not know: a newer "
            "version migrated it; run that version"
        )
    return f"{where} is at migration {current}, this code needs {head}; run `copybandit migrate`"


def is_newer(engine: sa.Engine) -> bool:
    """Whether a newer copybandit migrated the database, past every migration this one knows."""
    current = _current_revision(engine)
    return current is not None and _unknown(ScriptDirectory.from_config(alembic_config()), current)


def _unknown(script: ScriptDirectory, revision: str) -> bool:
    return revision not in {known.revision for known in script.walk_revisions()}


def behind(connection: sa.Connection) -> str | None:
    """Why this code cannot serve from the database as it is now: it has no tables, or is at a
    migration older than this code's; None when it is at the head, or past it.

    A database a newer copybandit migrated is left out: the hosts still on this version keep
    serving while the newer ones start (serve refuses to start on it, see `mismatch`)."""
    head, known = _script_revisions()
    current = _revision_on(connection)
    if current == head or (current is not None and current not in known):
        return None
    if current is None:
        return "the database has no tables"
    return f"the database is at migration {current}, this code needs {head}"


@functools.cache
def _script_revisions() -> tuple[str | None, frozenset[str]]:
    """The head and every revision the migration files name, read once: they change only with
    the code."""
    script = ScriptDirectory.from_config(alembic_config())
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


def revision_on(connection: sa.Connection) -> str | None:
    """The migration the database is at; None where it has no tables yet."""
    return _revision_on(connection)


def _current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return _revision_on(connection)


def _revision_on(connection: sa.Connection) -> str | None:
    # Alembic's context logs its dialect at INFO ("Context impl SQLiteImpl."), which every command
    # that only checks the schema (a lifecycle pass, serve's start) printed as if it migrated.
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        return MigrationContext.configure(connection).get_current_revision()
    finally:
        quiet.setLevel(level)
