"""`copybandit copy-database`: every row of the configured database, copied into an empty
PostgreSQL database migrated to the same revision, in one transaction there.

The source is read in one snapshot (a read transaction: SQLite's WAL mode keeps what it saw until
it ends, PostgreSQL's REPEATABLE READ likewise), so the copy is consistent while servers still
write; what they write after it began is not copied. The target's tables are locked and must be
empty: nothing is merged into or overwritten in a live database. Its id sequences are then set
past the copied ids, since rows copied with their ids leave them at 1: a new conversion's event
row collided with a copied one and `ON CONFLICT DO NOTHING` answered it as a duplicate.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

import service.models  # noqa: F401 - registers the tables on SQLModel.metadata
from service import migrate as migrations
from service.config import display_url
from service.consistency import CheckReport, check_counters


class CopyRefused(Exception):
    """Why nothing was copied, in one line."""


class TargetFailed(Exception):
    """A statement on the target failed (`error`, as the driver raised it), so nothing was
    copied. Raised apart from the source's errors, which the CLI words as the configured
    database's: a role without privileges on the target read as if the source's lacked them."""

    def __init__(self, error: sa.exc.DatabaseError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class CopyReport:
    rows: dict[str, int]
    # Each id sequence's next value on the target, by table.
    sequences: dict[str, int]
    counters: CheckReport


# Progress for a large table: its name, rows copied so far, rows in all.
Progress = Callable[[str, int, int], None]


# How long the copy waits for the target's tables: a server there finishes a request's
# transaction in milliseconds, so a longer wait means one is busy or a session left one open, and
# waiting on it without end hung the command with nothing said.
LOCK_WAIT_SECONDS = 10.0


def copy_database(
    *,
    source: sa.Engine,
    target: sa.Engine,
    batch_size: int,
    progress: Progress,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
) -> CopyReport:
    """Copy every table's rows, in foreign-key order; raises CopyRefused where the target is not
    an empty database at the source's migration, where its tables stay locked by another
    connection for `lock_wait_seconds`, or where a row could not be written (the target then
    keeps none of them); TargetFailed where another statement there fails (a role without
    privileges on its tables or sequences)."""
    tables = SQLModel.metadata.sorted_tables
    with _snapshot(source) as reading, target.connect() as writing, writing.begin() as copying:
        revision = migrations.revision_on(reading)
        with _on_target(), _lock_wait(writing, lock_wait_seconds):
            found = migrations.revision_on(writing)
            if found != revision:
                at = "has no tables" if found is None else f"is at migration {found}"
                raise CopyRefused(
                    f"{display_url(target.url)} {at}, the source is at {revision}: run "
                    f"`COPYBANDIT_DATABASE_URL={display_url(target.url)} copybandit migrate` first"
                )
            # Until the commit no server on the target writes a row the check below did not see.
            names = ", ".join(_quoted(writing, t.name) for t in tables)
            writing.exec_driver_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        with _on_target():
            filled = [
                t.name for t in tables if writing.execute(sa.select(1).select_from(t)).first()
            ]
        if filled:
            raise CopyRefused(
                f"{display_url(target.url)} already holds rows (in {', '.join(filled)}); copy "
                "only into a database that copybandit has migrated and nothing has written to"
            )
        expected = {t.name: reading.execute(_count(t)).scalar_one() for t in tables}
        for table in tables:
            _copy_table(reading, writing, table, expected[table.name], batch_size, progress)
        with _on_target():
            copied = {t.name: writing.execute(_count(t)).scalar_one() for t in tables}
        if copied != expected:
            differ = [
                f"{n} {expected[n]} -> {copied[n]}" for n in expected if expected[n] != copied[n]
            ]
            raise CopyRefused(f"row counts differ after the copy: {', '.join(differ)}")
        with _on_target():
            counters = _counters(writing)
        if counters != _counters(reading):
            raise CopyRefused("`copybandit check` reads the copy differently from the source")
        with _on_target():
            sequences = _advance_sequences(writing, tables)
            copying.commit()
    return CopyReport(rows=copied, sequences=sequences, counters=counters)


@contextlib.contextmanager
def _on_target() -> Iterator[None]:
    """A statement on the target that fails raises TargetFailed (see there)."""
    try:
        yield
    except sa.exc.DatabaseError as exc:
        raise TargetFailed(exc) from exc


@contextlib.contextmanager
def _lock_wait(writing: sa.Connection, wait_seconds: float) -> Iterator[None]:
    """Every lock taken inside waits at most `wait_seconds`, then CopyRefused: reading the
    migration waits on a session altering the tables, the LOCK on any writing to them."""
    # SET LOCAL ends with this transaction; a timeout of 0 would mean "wait for ever".
    milliseconds = max(1, round(wait_seconds * 1000))
    writing.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")
    try:
        yield
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
            raise
        # The transaction is aborted now, so who holds the lock cannot be asked here.
        raise CopyRefused(
            f"{display_url(writing.engine.url)}: another connection kept a table locked for "
            f"{wait_seconds:g} s; stop the copybandit servers on it (nothing may write to the "
            "copy's target) or end the session that holds it (see pg_stat_activity), and try "
            "again"
        ) from None


# PostgreSQL's "lock_not_available", which lock_timeout raises.
_LOCK_NOT_AVAILABLE = "55P03"


@contextlib.contextmanager
def _snapshot(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection that reads one snapshot of the database throughout."""
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            with connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            ).begin():
                yield connection
            return
        # Python's sqlite3 begins no transaction before a SELECT, so each statement read the
        # database as it then was: one BEGIN holds the snapshot of the first read to the end.
        driver = connection.connection.driver_connection
        implicit = getattr(driver, "isolation_level", None)
        driver.isolation_level = None  # type: ignore[union-attr]
        try:
            connection.exec_driver_sql("BEGIN")
            yield connection
        finally:
            connection.exec_driver_sql("ROLLBACK")
            driver.isolation_level = implicit  # type: ignore[union-attr]


def _copy_table(
    reading: sa.Connection,
    writing: sa.Connection,
    table: sa.Table,
    total: int,
    batch_size: int,
    progress: Progress,
) -> None:
    json_columns = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    # JSON read as its text: SQL NULL and a stored JSON null both come back as None otherwise, and
    # both were written back as JSON null. Cast, as psycopg decodes a json column itself.
    columns = [
        sa.cast(c, sa.Text).label(c.name) if c.name in json_columns else c for c in table.columns
    ]
    query = sa.select(*columns).order_by(*table.primary_key.columns)
    done = 0
    result = reading.execution_options(yield_per=batch_size).execute(query)
    for batch in result.mappings().partitions():
        rows = [_writable(row, json_columns) for row in batch]
        try:
            writing.execute(table.insert(), rows)
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise CopyRefused(
                f"{table.name}: the target refused a row ({reason}); nothing was copied"
            ) from None
        done += len(rows)
        if total > batch_size:
            progress(table.name, done, total)


def _writable(row: sa.RowMapping, json_columns: set[str]) -> dict[str, Any]:
    values = dict(row)
    for name in json_columns:
        text = values[name]
        values[name] = sa.null() if text is None else json.loads(text)
    return values


def _count(table: sa.Table) -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(table)


def _counters(connection: sa.Connection) -> CheckReport:
    # Bound to the connection, the session reads inside its transaction and ends none.
    with Session(connection) as session:
        return check_counters(session=session)


def _quoted(connection: sa.Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def _advance_sequences(writing: sa.Connection, tables: list[sa.Table]) -> dict[str, int]:
    """Each serial id's sequence set so its next value is past the largest id copied."""
    advanced = {}
    for table in tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, sa.Integer):
                continue
            sequence = writing.execute(
                sa.select(sa.func.pg_get_serial_sequence(_quoted(writing, table.name), column.name))
            ).scalar_one()
            if sequence is None:
                continue
            largest = writing.execute(sa.select(sa.func.max(column))).scalar_one()
            # setval(s, n, false): the next value is n itself, so an empty table starts at 1.
            following = (largest or 0) + 1
            writing.execute(sa.select(sa.func.setval(sequence, following, False)))
            advanced[table.name] = following
    return advanced
